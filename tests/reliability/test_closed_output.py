"""``largebatch ... | head``: when the reader of the output goes away, the command stops quietly
(exit 1, nothing on stderr) instead of printing a BrokenPipeError traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from largebatch.cli import main


@pytest.mark.parametrize("args", [["recipes"], ["recipes", "fashion_mnist"]])
def test_closed_pipe_ends_quietly(args, cli_env):
    process = subprocess.Popen([sys.executable, "-m", "largebatch", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=cli_env)
    process.stdout.close()  # the reader is gone before the first byte is written
    stderr = process.stderr.read().decode()
    process.stderr.close()
    assert process.wait(timeout=120) == 1
    assert stderr == ""


class ClosedPipe:
    """A stdout whose reader has gone: every write raises, as a pipe does after EPIPE."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        pass

    def fileno(self):
        raise ValueError("no file descriptor")


def test_closed_pipe_in_process(monkeypatch):
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["recipes"]) == 1
