"""A worker process dies mid-step under ``torchrun --max-restarts 1``: torchrun restarts the group,
which resumes from the last checkpoint by itself and finishes with the very weights of a run
that never failed, each epoch logged once. (A whole run killed outright and continued with
``--resume auto`` is tests/test_distributed.py::test_sigkill_then_resume_auto_equals_uninterrupted.)"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from largebatch import checkpoint
from largebatch.progress import epoch_records, read_metrics

pytestmark = pytest.mark.slow

# 512 tiny images / 64 = 8 steps per epoch, 24 in all; 2 processes x 32 images per step.
FLAGS = ["--batch-size", "64", "--micro-batch-size", "32", "--epochs", "3", "--warmup-epochs", "1", "--lr", "2.0",
         "--threads", "1", "--workers", "0", "--eval-every", "3", "--checkpoint-every-steps", "3"]


def torchrun(out: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--max-restarts", "1", "--monitor-interval", "0.5", "-m", "largebatch", "train", "--out", str(out),
               *FLAGS]
    handle = open(log, "w")
    # its own session, so that the agent and its workers can be ended together (see finish)
    return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def finish(process: subprocess.Popen, timeout: float) -> int | None:
    """The exit status of torchrun, or None if it had not ended after ``timeout`` seconds; then it
    and its workers are killed (a restarted group can hang in its rendezvous for the 30-minute
    process-group timeout)."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def children(pid: int) -> list[int]:
    """Every descendant process of ``pid`` (from /proc; Linux)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent:
                found.append(child)
                frontier.append(child)
    return found


def worker_of_rank(torchrun_pid: int, rank: int) -> int | None:
    for pid in children(torchrun_pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    state = checkpoint.load(checkpoint.list_checkpoints(out / "checkpoints")[-1])
    assert state["step"] == 24
    return state["model"]


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through /proc")
def test_worker_killed_mid_step_restarts_group_which_resumes_and_finishes(tmp_path, cli_env):
    """Rank 1 is killed (SIGKILL) once a checkpoint inside epoch 2 exists. The restarted rank 0 is
    then held (SIGSTOP) for a while before it joins, as a slow node would be: this makes the restart
    race above happen every time instead of most times, and a correct restart must survive it."""
    reference = tmp_path / "reference"
    process = torchrun(reference, cli_env, tmp_path / "reference.log")
    assert finish(process, 600) == 0, (tmp_path / "reference.log").read_text()[-3000:]

    out = tmp_path / "killed"
    log = tmp_path / "killed.log"
    process = torchrun(out, cli_env, log)
    killed, held, deadline = None, None, time.time() + 300
    try:
        while time.time() < deadline and process.poll() is None and killed is None:
            steps = [int(p.stem.split("-")[1]) for p in checkpoint.list_checkpoints(out / "checkpoints")]
            if any(9 <= s <= 15 for s in steps):
                first_group = set(children(process.pid))
                victim = worker_of_rank(process.pid, 1)
                if victim is not None:
                    os.kill(victim, signal.SIGKILL)
                    killed = max(steps)
            time.sleep(0.05)
        while time.time() < deadline and process.poll() is None and held is None:
            restarted = worker_of_rank(process.pid, 0)
            if restarted is not None and restarted not in first_group:
                os.kill(restarted, signal.SIGSTOP)
                held = restarted
            time.sleep(0.02)
        if held is not None:
            time.sleep(20)  # long enough for the restarted rank 1 to import torch and try to connect
            with contextlib.suppress(ProcessLookupError):  # torchrun may have ended the group meanwhile
                os.kill(held, signal.SIGCONT)
    finally:
        status = finish(process, 300)  # the resumed run needs well under a minute of its 300 s
    assert status is not None, "the restarted group hung: " + log.read_text()[-3000:]
    assert status == 0, log.read_text()[-4000:]
    text = log.read_text()
    assert killed is not None, "the run finished before a worker could be killed"
    assert held is not None, "the group was not restarted"
    # the restarted group picked the newest checkpoint (written at or after the kill) by itself
    resumed = [line for line in text.splitlines() if "resumed from step" in line]
    assert len(resumed) == 1, text[-4000:]
    assert int(resumed[0].split("resumed from step ")[1].split()[0]) >= killed
    assert [r["epoch"] for r in epoch_records(read_metrics(out / "metrics.jsonl"))] == [1, 2, 3]
    expected, got = final_weights(reference), final_weights(out)
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key
