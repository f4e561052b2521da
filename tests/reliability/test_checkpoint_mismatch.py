"""A checkpoint from another model, optimizer or format is refused with one line naming what
differs; a failed resume changes nothing in the run directory."""

from __future__ import annotations

import io

import torch

from largebatch import checkpoint


def latest(run):
    return checkpoint.list_checkpoints(run / "checkpoints")[-1]


def test_checkpoint_of_another_model_is_refused_by_name(finished_run, tmp_path, helpers, cli):
    source, flags = finished_run
    code, _, err = cli(["train", "--out", str(tmp_path / "run"), *flags, "--model", "resnet20",
                        "--resume", str(latest(source))])
    helpers.assert_one_line_error(code, err, str(latest(source)), "model.name is 'fast_resnet' there and 'resnet20'")
    assert code == 2


def test_checkpoint_whose_weights_differ_names_the_mismatched_keys(finished_run, tmp_path, helpers, cli):
    """Same model name, other tensors (a changed architecture): both sides are named."""
    source, flags = finished_run
    state = checkpoint.load(latest(source))
    weights = dict(state["model"])
    weights["layer9.weight"] = weights.pop("stem.1.bias")
    other = rewrite(latest(source), tmp_path / "other.pt", model=weights)
    code, _, err = cli(["train", "--out", str(tmp_path / "run"), *flags, "--resume", str(other)])
    line = helpers.assert_one_line_error(code, err, str(other), "does not fit this model")
    assert "missing: stem.1.bias" in line and "unexpected: layer9.weight" in line


def rewrite(path, destination, **changes):
    state = checkpoint.load(path)
    state.update(changes)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    destination.write_bytes(buffer.getvalue())
    return destination


def test_checkpoint_of_another_format_version_names_both_versions(finished_run, tmp_path, helpers, cli):
    source, flags = finished_run
    future = rewrite(latest(source), tmp_path / "future.pt", format_version=checkpoint.FORMAT_VERSION + 1)
    code, _, err = cli(["train", "--out", str(tmp_path / "run"), *flags, "--resume", str(future)])
    helpers.assert_one_line_error(code, err, str(future), f"format version {checkpoint.FORMAT_VERSION + 1}",
                                  f"reads format {checkpoint.FORMAT_VERSION}")


def test_plain_state_dict_is_not_taken_for_a_checkpoint(tmp_path, helpers, cli, train_argv):
    """A torch.save of bare weights (what other tools write) is not a largebatch checkpoint."""
    weights = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(3)}, weights)
    code, _, err = cli(train_argv(tmp_path / "run", "--resume", str(weights)))
    helpers.assert_one_line_error(code, err, str(weights), "not a largebatch checkpoint")


def test_resume_auto_into_another_model_names_the_checkpoint_file(finished_run, tmp_path, helpers, cli):
    source, flags = finished_run
    out = helpers.copy_run(source, tmp_path / "run")
    code, _, err = cli(["train", "--out", str(out), *flags, "--model", "resnet20", "--resume", "auto"])
    helpers.assert_one_line_error(code, err, "does not fit this run", "model.name", str(latest(out)))


def test_refused_resume_leaves_the_run_directory_unchanged(finished_run, tmp_path, helpers, cli):
    source, flags = finished_run
    out = helpers.copy_run(source, tmp_path / "run")
    before = {**helpers.file_digests(out), **helpers.file_digests(out / "checkpoints")}
    code, _, err = cli(["train", "--out", str(out), *flags, "--model", "resnet20", "--resume", "auto"])
    assert code == 2
    assert {**helpers.file_digests(out), **helpers.file_digests(out / "checkpoints")} == before


def test_checkpoint_of_another_optimizer_is_one_line(finished_run, tmp_path, helpers, cli):
    source, flags = finished_run
    halfway = checkpoint.checkpoint_path(source / "checkpoints", 4)  # steps remain: the optimizer must step
    code, _, err = cli(["train", "--out", str(tmp_path / "run"), *flags, "--optimizer", "sgd",
                        "--resume", str(halfway)])
    helpers.assert_one_line_error(code, err, "lars", "sgd")


def test_resume_with_another_batch_size_is_refused_by_name(finished_run, tmp_path, helpers, cli):
    source, flags = finished_run
    out = helpers.copy_run(source, tmp_path / "run")
    code, _, err = cli(["train", "--out", str(out), *flags, "--batch-size", "32", "--micro-batch-size", "32",
                        "--resume", "auto"])
    helpers.assert_one_line_error(code, err, "batch_size", "64", "32")


def test_a_format_1_checkpoint_resumes_to_the_same_weights(finished_run, tmp_path, helpers, cli):
    """Checkpoints written before the training state was saved by name (format 1: metrics and
    epoch sums as positional lists, image_size and num_classes saved unresolved as 0) still
    resume, to the weights of the uninterrupted run."""
    source, flags = finished_run
    out = helpers.copy_run(source, tmp_path / "run")
    for path in checkpoint.list_checkpoints(out / "checkpoints"):
        path.unlink()
        path.with_suffix(".sha256").unlink()
    (out / "summary.json").unlink()
    state = checkpoint.load(checkpoint.checkpoint_path(source / "checkpoints", 4))
    train_state = state.pop("train_state")
    state.pop("data")
    state.update(format_version=1, metrics=train_state["records"], train_time_s=train_state["train_time_s"],
                 epoch_accumulators=[train_state["epoch_loss_sum"], train_state["epoch_steps"],
                                     train_state["epoch_images"], train_state["epoch_time_s"]],
                 skipped_steps=0, skipped_files=[])
    state["config"]["data"].update(image_size=0, num_classes=0)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (out / "checkpoints" / "step-00000004.pt").write_bytes(buffer.getvalue())
    code, stdout, err = cli(["train", "--out", str(out), *flags, "--resume", "auto"])
    assert code == 0, err
    assert "resumed from step 4" in stdout
    final = checkpoint.load(checkpoint.list_checkpoints(out / "checkpoints")[-1])
    reference = checkpoint.load(checkpoint.list_checkpoints(source / "checkpoints")[-1])
    assert final["step"] == reference["step"] == 8
    for key, value in reference["model"].items():
        assert torch.equal(value, final["model"][key]), key
