"""A full disk while writing a checkpoint leaves the previous checkpoint intact and stops the run
with one line (exit 2); after space is freed, ``--resume auto`` loses only the steps since it.

The fault is injected where the bytes are written (``open`` as the checkpoint module sees it),
so the real atomic-write code runs; one slow test makes the kernel refuse the write instead
(RLIMIT_FSIZE: EFBIG, "File too large", the same path as ENOSPC)."""

from __future__ import annotations

import errno
import os
import resource
import sys

import pytest
import torch

from largebatch import checkpoint, progress
from largebatch.errors import CheckpointError
from largebatch.progress import read_metrics


def disk_full(error_number=errno.ENOSPC):
    return OSError(error_number, os.strerror(error_number))


class HalfWrittenFile:
    """A file whose write stores half the bytes and then fails, as a filling disk does."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, data):
        self.handle.write(data[:len(data) // 2])
        raise disk_full()

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def fill_disk_when_writing(monkeypatch, matches, before_failing=lambda: None):
    """From now on, writing a temporary whose name contains ``matches`` fails half-way with ENOSPC."""
    def fake_open(path, mode="r", *args, **kwargs):
        failing = "w" in mode and matches in str(path)
        if failing:
            before_failing()
        handle = open(path, mode, *args, **kwargs)
        return HalfWrittenFile(handle) if failing else handle
    monkeypatch.setattr(checkpoint, "open", fake_open, raising=False)


def test_write_atomic_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old contents")
    fill_disk_when_writing(monkeypatch, "file.bin")
    with pytest.raises(OSError) as raised:
        checkpoint.write_atomic(target, b"new contents " * 1000)
    assert raised.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_disk_full_at_fsync_keeps_the_old_file(tmp_path, monkeypatch):
    """Some file systems report a full disk only when the data is flushed."""
    target = tmp_path / "file.bin"
    target.write_bytes(b"old contents")

    def failing_fsync(fd):
        raise disk_full()
    monkeypatch.setattr(checkpoint.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        checkpoint.write_atomic(target, b"new contents")
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


@pytest.mark.parametrize("failing", ["step-00000002.pt", "step-00000002.sha256"])
def test_failed_save_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch, helpers, failing):
    """Whether the data or its checksum cannot be written, the new checkpoint is not left behind
    half-trusted, and the previous pair is byte for byte what it was."""
    checkpoint.save(tmp_path, 1, {"model": {"w": torch.ones(1000)}, "step": 1})
    before = helpers.file_digests(tmp_path)
    fill_disk_when_writing(monkeypatch, failing)
    with pytest.raises(CheckpointError) as raised:
        checkpoint.save(tmp_path, 2, {"model": {"w": torch.zeros(1000)}, "step": 2})
    message = str(raised.value)
    assert "step-00000002.pt" in message and "No space left on device" in message
    assert "previous checkpoint is intact" in message and "--resume auto" in message and "\n" not in message
    assert helpers.file_digests(tmp_path) == before
    assert checkpoint.load_latest(tmp_path)[1]["step"] == 1


def test_disk_full_during_training_stops_in_one_line_and_resume_loses_only_two_steps(
        finished_run, train_argv, tmp_path, monkeypatch, helpers, cli):
    """Same flags as ``finished_run`` (a checkpoint every 2 steps). The step-4 checkpoint hits a
    full disk: exit 2 with one line, the step-2 checkpoint untouched. Resumed after the disk is
    freed, the run redoes steps 3-4 and ends with exactly the weights of the run that never failed."""
    reference, flags = finished_run
    out = tmp_path / "run"
    seen = {}
    fill_disk_when_writing(monkeypatch, "step-00000004",
                           before_failing=lambda: seen.setdefault("before", helpers.file_digests(out / "checkpoints")))
    code, _, err = cli(["train", "--out", str(out), *flags])
    assert code == 2
    helpers.assert_one_line_error(code, err, "could not write checkpoint", "step-00000004.pt",
                                  "No space left on device", "previous checkpoint is intact", "--resume auto")
    assert set(seen["before"]) == {"step-00000002.pt", "step-00000002.sha256"}
    assert helpers.file_digests(out / "checkpoints") == seen["before"]  # nothing half-written, nothing removed

    monkeypatch.undo()  # space freed
    code, stdout, err = cli(["train", "--out", str(out), *flags, "--resume", "auto"])
    assert code == 0, err
    assert "resumed from step 2" in stdout
    expected = checkpoint.load(checkpoint.checkpoint_path(reference / "checkpoints", 8))["model"]
    resumed = checkpoint.load(checkpoint.checkpoint_path(out / "checkpoints", 8))["model"]
    for key, value in expected.items():
        assert torch.equal(value, resumed[key]), key
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]


def test_disk_full_while_logging_metrics_is_one_line_too(train_argv, tmp_path, monkeypatch, helpers, cli):
    """Not only checkpoints: any write of the run directory that meets a full disk ends in one line
    naming the file (the command line turns ENOSPC into a user-facing error)."""
    def full(self, record):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
    monkeypatch.setattr(progress.MetricsLog, "append", full)
    code, _, err = cli(train_argv(tmp_path / "run", "--epochs", "1"))
    assert code == 2
    helpers.assert_one_line_error(code, err, str(tmp_path / "run" / "metrics.jsonl"), "No space left on device",
                                  "--resume auto")


@pytest.mark.slow
def test_kernel_refuses_the_checkpoint_write(finished_run, tmp_path, helpers, cli_env):
    """No monkeypatching: the resumed run's process may not write files over 64 KiB (RLIMIT_FSIZE;
    Python ignores SIGXFSZ, so the write fails with EFBIG). Its step-6 checkpoint (~1 MB) cannot
    be written; step 4, the newest left, is untouched."""
    source, flags = finished_run
    out = helpers.copy_run(source, tmp_path / "run")
    for step in (6, 8):
        checkpoint.checkpoint_path(out / "checkpoints", step).unlink()
        checkpoint.checkpoint_path(out / "checkpoints", step).with_suffix(".sha256").unlink()
    before = helpers.file_digests(out / "checkpoints")
    assert min(os.path.getsize(out / "checkpoints" / name) for name in before if name.endswith(".pt")) > 65536

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))

    result = helpers.run_subprocess(["train", "--out", str(out), *flags, "--resume", "auto"], cli_env,
                                    preexec_fn=limit_file_size)
    helpers.assert_one_line_error(result.returncode, result.stderr, "could not write checkpoint",
                                  "step-00000006.pt", "File too large", "previous checkpoint is intact")
    assert result.returncode == 2
    assert helpers.file_digests(out / "checkpoints") == before
    assert sys.platform.startswith("linux")  # RLIMIT_FSIZE semantics checked on Linux
