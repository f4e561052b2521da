"""Helpers for the fault tests: the tiny training command, one finished run to copy, and the
check that a failure reached the user as one line without a traceback."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from largebatch import checkpoint
from largebatch.cli import main

# 256 of the tiny training images / 64 = 4 optimizer steps per epoch, one micro-batch each, and one
# evaluation at the end: well under a second per epoch on one core.
TINY = ["--epochs", "2", "--batch-size", "64", "--micro-batch-size", "64", "--train-subset", "256",
        "--eval-every", "2", "--warmup-epochs", "0.5", "--lr", "2.0", "--threads", "1", "--workers", "0"]


@pytest.fixture
def train_argv(tiny_data):
    """``train_argv(out, *extra)``: the argument list of a tiny run in ``out`` (extra flags win)."""
    def build(out: Path, *extra: str) -> list[str]:
        return ["train", "--data-dir", str(tiny_data), "--out", str(out), *TINY, *extra]
    return build


@pytest.fixture
def cli(capsys):
    """``cli(argv)`` -> (exit code, stdout, stderr) of ``largebatch`` run in this process."""
    def run(argv: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse's own errors and --help
            code = exit.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run


def run_subprocess(args: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "largebatch", *args], capture_output=True, text=True,
                          env=env, timeout=300, **kwargs)


def assert_one_line_error(code: int, stderr: str, *fragments: str) -> str:
    """Non-zero exit, exactly one line on stderr, ``largebatch: error:`` or argparse's ``...: error:``,
    no traceback, and every fragment in that line. Returns the line."""
    assert code != 0
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "error:" in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file in ``folder``, by name (to prove nothing was written or removed)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())
            if p.is_file()}


def checkpoint_steps(out: Path) -> list[int]:
    return [int(p.stem.split("-")[1]) for p in checkpoint.list_checkpoints(out / "checkpoints")]


@pytest.fixture(scope="session")
def finished_run(tiny_data, tmp_path_factory) -> tuple[Path, list[str]]:
    """One finished 2-epoch run with a checkpoint every 2 steps (steps 2, 4, 6, 8 kept), trained once
    per session; tests copy it with :func:`copy_run` rather than train again. Returns the run
    directory and the flags that made it (resume with the same flags)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    flags = ["--data-dir", str(tiny_data), *TINY, "--checkpoint-every-steps", "2", "--keep-checkpoints", "10"]
    assert main(["train", "--out", str(out), *flags]) == 0
    assert checkpoint_steps(out) == [2, 4, 6, 8]
    return out, flags


def copy_run(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


@pytest.fixture
def helpers():
    """The plain helper functions above (test modules cannot import a conftest under importlib mode)."""
    from types import SimpleNamespace
    return SimpleNamespace(run_subprocess=run_subprocess, assert_one_line_error=assert_one_line_error,
                           file_digests=file_digests, checkpoint_steps=checkpoint_steps, copy_run=copy_run)
