"""A run directory belongs to one run: never overwritten, never mixed, locked while in use; a
signal stop never exits 0; impossible sizes are refused before any work."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from largebatch.rundir import LOCK_NAME


def test_deleting_checkpoints_does_not_let_a_rerun_replace_a_finished_run(finished_run, tmp_path, helpers, cli):
    """The reproduction: checkpoints/ deleted to save disk, then the same command again."""
    source, flags = finished_run
    out = helpers.copy_run(source, tmp_path / "run")
    shutil.rmtree(out / "checkpoints")
    before = helpers.file_digests(out)
    code, _, err = cli(["train", "--out", str(out), *flags])
    helpers.assert_one_line_error(code, err, "already holds a run", "summary.json")
    assert helpers.file_digests(out) == before
    code, _, err = cli(["train", "--out", str(out), *flags, "--resume", "auto"])
    helpers.assert_one_line_error(code, err, "(finished: summary.json) but no checkpoint to resume from")
    assert helpers.file_digests(out) == before


def test_a_folder_that_is_not_a_run_is_not_written_into(tmp_path, train_argv, helpers, cli):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8")
    code, _, err = cli(train_argv(out))
    helpers.assert_one_line_error(code, err, "holds no run of ours", "holiday.jpg")
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]


def test_a_second_run_on_a_directory_in_use_is_refused(tmp_path, train_argv, helpers, cli, cli_env):
    """A live lock (another process of this host holds it) refuses a second run, naming the owner."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from largebatch.rundir import RunLock\n"
                               f"with RunLock(Path({str(out)!r}), 'the first run'):\n"
                               "    print('locked', flush=True); sys.stdin.readline()"],
                              env=cli_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = cli(train_argv(out))
        helpers.assert_one_line_error(code, err, "is in use by process", str(holder.pid), socket.gethostname())
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    finally:
        holder.communicate("\n", timeout=60)
    assert not (out / LOCK_NAME).exists()  # released on exit


@pytest.mark.slow
def test_two_runs_started_together_on_one_out_leave_one_run(tmp_path, tiny_data, cli_env):
    """Two processes race for one --out: one finishes, the other is refused in one line; the
    directory holds one run's records (each epoch once)."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "largebatch", "train", "--data-dir", str(tiny_data), "--out", str(out),
            "--epochs", "2", "--batch-size", "64", "--micro-batch-size", "64", "--threads", "1", "--workers", "0"]
    first = subprocess.Popen(args, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(args, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = [(p.wait(timeout=300), p.communicate()) for p in (first, second)]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] == 2, results
    refused = next(err for code, (_, err) in results if code == 2)
    assert len(refused.strip().splitlines()) == 1 and "Traceback" not in refused
    assert ("in use by" in refused) or ("already holds a run" in refused)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r.get("kind") == "epoch"] == [1, 2]


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, train_argv, cli):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "job": "old",
                                             "started": "earlier"}))
    with pytest.warns(Warning, match="taking over the lock"):
        code, _, err = cli(train_argv(out))
    assert code == 0, err
    assert not (out / LOCK_NAME).exists()


@pytest.mark.slow
def test_sigterm_exits_with_143_after_saving(tmp_path, tiny_data, cli_env):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "largebatch", "train", "--data-dir", str(tiny_data), "--out", str(out),
            "--epochs", "40", "--batch-size", "64", "--micro-batch-size", "64", "--threads", "1", "--workers", "0",
            "--log-every", "2"]
    process = subprocess.Popen(args, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (
            (out / "metrics.jsonl").is_file() and '"kind": "step"' in (out / "metrics.jsonl").read_text()):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "stopped by signal" in err and "--resume auto" in err and "Traceback" not in err
    assert list((out / "checkpoints").glob("step-*.pt")) and not (out / "summary.json").exists()


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "1024"], "run.batch_size (1,024) is larger than the training set (256 images)"),
    (["--batch-size", "100000000000000000000000"], "--batch-size: expected an integer in [1, 2147483648]"),
    (["--lr", "1e308", "--scaling", "linear", "--base-batch-size", "1"], "must be a positive finite number"),
])
def test_impossible_sizes_are_refused_before_any_work(flags, message, tmp_path, train_argv, helpers, cli):
    out = tmp_path / "run"
    code, _, err = cli(train_argv(out, *flags))
    helpers.assert_one_line_error(code, err, message)


def test_an_empty_test_set_is_an_error_not_top1_zero(tmp_path, helpers, cli, make_tiny_data):
    data = make_tiny_data(tmp_path / "data", train=128, test=0)
    code, _, err = cli(["train", "--data-dir", str(data), "--out", str(tmp_path / "run"), "--epochs", "1",
                        "--batch-size", "64", "--threads", "1"])
    helpers.assert_one_line_error(code, err, "no test image could be evaluated")
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_model_that_cannot_take_the_images_is_one_line(tmp_path, train_argv, helpers, cli):
    code, _, err = cli(train_argv(tmp_path / "run", "--model", "alexnet_bn"))
    helpers.assert_one_line_error(code, err, "model alexnet_bn cannot take the data set's 1x28x28 images",
                                  "--model")
    assert not (tmp_path / "run" / "config.toml").exists()


def test_idx_images_of_another_size_are_one_line(tmp_path, helpers, cli, make_tiny_data):
    import numpy as np
    from largebatch.data.idx import write_idx
    data = make_tiny_data(tmp_path / "data", train=64, test=32)
    write_idx(data / "train-images-idx3-ubyte.gz", np.zeros((64, 32, 32), dtype=np.uint8))
    code, _, err = cli(["train", "--data-dir", str(data), "--out", str(tmp_path / "run"), "--batch-size", "32"])
    helpers.assert_one_line_error(code, err, "train-images-idx3-ubyte.gz: images are 32x32, expected 28x28")


def test_resume_auto_restarts_a_run_stopped_before_its_first_checkpoint(tmp_path, train_argv, cli):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.toml").write_text("# left by a run killed during its first epoch\n")
    (out / "metrics.jsonl").write_text("")
    code, _, err = cli(train_argv(out, "--resume", "auto"))
    assert code == 0, err
    assert (out / "summary.json").is_file()


def test_a_lock_with_a_wait_takes_the_directory_once_its_owner_lets_go(tmp_path, cli_env):
    """The study directory's lock is held a moment at a time: a second study process waits for it
    (wait_s) instead of failing; without a wait the same lock is refused at once."""
    from largebatch.rundir import RunDirectoryError, RunLock

    out = tmp_path / "study"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from largebatch.rundir import RunLock\n"
                               f"with RunLock(Path({str(out)!r}), 'a study writing its files'):\n"
                               "    print('locked', flush=True); time.sleep(1.5)"],
                              env=cli_env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryError, match="is in use by process"):
            with RunLock(out):
                pass
        with RunLock(out, "the second study", wait_s=30) as lock:
            assert json.loads(lock.path.read_text())["command"] == "the second study"
    finally:
        holder.wait(timeout=60)
    assert not (out / LOCK_NAME).exists()
