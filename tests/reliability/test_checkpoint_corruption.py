"""A corrupt or truncated latest checkpoint is detected and the previous good one is used, with a
warning; when none is usable the run stops with one line instead of silently starting over."""

from __future__ import annotations

import warnings

import pytest
import torch

from largebatch import checkpoint
from largebatch.errors import CheckpointError, CheckpointWarning
from largebatch.progress import read_metrics


def two_checkpoints(directory):
    """Steps 1 and 2 of a small state with a tensor big enough that byte 1000 is tensor data."""
    for step in (1, 2):
        checkpoint.save(directory, step, {"model": {"w": torch.full((4096,), float(step))}, "step": step})
    return checkpoint.list_checkpoints(directory)


def flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path, keep_fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep_fraction)])


CORRUPTIONS = {
    # name: (how to damage the newest checkpoint, text the warning must contain)
    "flipped byte in tensor data": (lambda p: flip_byte(p, 1000), "SHA-256 differs"),
    "flipped byte in the zip directory": (lambda p: flip_byte(p, p.stat().st_size - 40), "SHA-256 differs"),
    "truncated": (truncate, "SHA-256 differs"),
    "truncated, sidecar missing": (lambda p: (truncate(p), p.with_suffix(".sha256").unlink()),
                                   "truncated or damaged"),
    "emptied, sidecar missing": (lambda p: (p.write_bytes(b""), p.with_suffix(".sha256").unlink()), "empty"),
    "overwritten with text, sidecar missing": (
        lambda p: (p.write_text("oops\n"), p.with_suffix(".sha256").unlink()), "not a zip archive"),
    "sidecar overwritten with binary garbage": (
        lambda p: p.with_suffix(".sha256").write_bytes(b"\xff\xfe\x00\x81garbage"), "SHA-256 differs"),
}


@pytest.mark.parametrize("damage", CORRUPTIONS, ids=list(CORRUPTIONS))
def test_damaged_latest_falls_back_to_previous_with_a_warning(tmp_path, damage):
    first, latest = two_checkpoints(tmp_path)
    corrupt, expected = CORRUPTIONS[damage]
    corrupt(latest)
    with pytest.raises(CheckpointError, match=expected):
        checkpoint.load(latest)
    with pytest.warns(CheckpointWarning) as caught:
        path, state = checkpoint.load_latest(tmp_path)
    assert path == first and state["step"] == 1
    assert torch.equal(state["model"]["w"], torch.full((4096,), 1.0))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert str(latest) in message and expected in message and "falling back" in message
    assert "\n" not in message


def test_every_checkpoint_corrupt_is_an_error_not_a_fresh_start(tmp_path):
    for path in two_checkpoints(tmp_path):
        truncate(path)
    with pytest.warns(CheckpointWarning):
        with pytest.raises(CheckpointError, match=r"none of the 2 checkpoints in .* can be loaded"):
            checkpoint.load_latest(tmp_path)


def test_no_checkpoint_at_all_is_a_fresh_start(tmp_path):
    assert checkpoint.load_latest(tmp_path / "missing") is None
    assert checkpoint.load_latest(tmp_path) is None


def test_half_written_temporary_is_ignored_and_cleaned_up(tmp_path):
    """A writer killed mid-write leaves ``.step-N.pt.tmp-PID``: never taken for a checkpoint, and
    removed by the next successful save."""
    first, latest = two_checkpoints(tmp_path)
    stale = tmp_path / ".step-00000003.pt.tmp-999999999"
    stale.write_bytes(latest.read_bytes()[:100])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the temporary is not a candidate
        path, state = checkpoint.load_latest(tmp_path)
    assert path == latest and state["step"] == 2
    checkpoint.save(tmp_path, 3, {"model": {}, "step": 3})
    assert not stale.exists()
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-00000002.pt", "step-00000003.pt"]


def test_resume_auto_skips_corrupt_checkpoints_and_redoes_only_the_lost_steps(finished_run, tmp_path, helpers, cli):
    """Steps 8 (truncated) and 6 (a flipped byte) are damaged: the run resumes from step 4 with a
    warning per skipped file, redoes steps 5-8, and ends with the very weights of the undamaged
    run (resuming is exact), each epoch logged once."""
    source, flags = finished_run
    out = helpers.copy_run(source, tmp_path / "run")
    original = checkpoint.load(checkpoint.checkpoint_path(out / "checkpoints", 8))["model"]
    truncate(checkpoint.checkpoint_path(out / "checkpoints", 8))
    flip_byte(checkpoint.checkpoint_path(out / "checkpoints", 6), 2000)

    with pytest.warns(CheckpointWarning) as caught:
        code, stdout, err = cli(["train", "--out", str(out), *flags, "--resume", "auto"])
    assert code == 0, err
    messages = [str(w.message) for w in caught if w.category is CheckpointWarning]
    assert len(messages) == 2
    assert "step-00000008.pt is corrupt" in messages[0] and "step-00000006.pt is corrupt" in messages[1]
    assert "resumed from step 4" in stdout
    resumed = checkpoint.load(checkpoint.checkpoint_path(out / "checkpoints", 8))["model"]
    for key, value in original.items():
        assert torch.equal(value, resumed[key]), key
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]


def test_command_line_prints_the_fallback_warning_in_one_line(finished_run, tmp_path, helpers, cli_env):
    """Through the real command line (``evaluate`` uses the same loader and starts faster than
    ``train``): one ``largebatch: warning:`` line per skipped checkpoint, no Python warning source lines."""
    source, _ = finished_run
    out = helpers.copy_run(source, tmp_path / "run")
    truncate(checkpoint.checkpoint_path(out / "checkpoints", 8))
    result = helpers.run_subprocess(["evaluate", str(out), "--device", "cpu"], cli_env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"largebatch: warning: checkpoint {out / 'checkpoints' / 'step-00000008.pt'} is corrupt (SHA-256 differs "
        "from step-00000008.sha256); falling back to the previous checkpoint"]
    assert '"step": 6' in result.stdout


def test_resume_auto_with_every_checkpoint_corrupt_stops_in_one_line(finished_run, tmp_path, helpers, cli):
    source, flags = finished_run
    out = helpers.copy_run(source, tmp_path / "run")
    for path in checkpoint.list_checkpoints(out / "checkpoints"):
        truncate(path, 0.9)
    before = helpers.file_digests(out / "checkpoints")
    with pytest.warns(CheckpointWarning):
        code, _, err = cli(["train", "--out", str(out), *flags, "--resume", "auto"])
    helpers.assert_one_line_error(code, err, "none of the 4 checkpoints", str(out / "checkpoints"))
    assert code == 2
    assert helpers.file_digests(out / "checkpoints") == before  # the damaged files are kept for inspection
