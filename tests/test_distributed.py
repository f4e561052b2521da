"""Multi-process tests (slow): torchrun with gloo on CPU."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from largebatch import checkpoint
from largebatch.progress import epoch_records, read_metrics

pytestmark = pytest.mark.slow

COMMON = ["--batch-size", "64", "--epochs", "3", "--warmup-epochs", "1", "--lr", "2.0", "--threads", "1",
          "--eval-every", "3"]  # 8 steps per epoch on the 512 tiny images: 24 steps


def train_cli(out, env, *args, processes=1, check=True):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] \
        if processes > 1 else [sys.executable]
    result = subprocess.run([*launcher, "-m", "largebatch", "train", "--out", str(out), *COMMON, *args],
                            capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def parameters(out):
    state = checkpoint.load(checkpoint.list_checkpoints(out / "checkpoints")[-1])
    assert state["step"] == 24
    # BatchNorm running statistics are per process (DDP keeps rank 0's), so compare the weights.
    return {k: v for k, v in state["model"].items() if "running_" not in k and "num_batches" not in k}


@pytest.mark.parametrize("processes, micro_batch, augmentation", [(2, 32, "extended"), (4, 16, "none")])
def test_processes_equal_accumulation(tmp_path, cli_env, tiny_data, processes, micro_batch, augmentation):
    """N processes x 1 micro-batch and 1 process x N accumulated micro-batches are the same
    computation, up to the order of floating-point sums. In fp32 those round-off differences
    (1e-9 after the first step) grow over 24 steps of training at a high learning rate on this tiny
    problem to about 1e-3, so the comparison runs in fp64, where they stay far below 1e-5."""
    single = tmp_path / "single"
    multi = tmp_path / "multi"
    args = ["--micro-batch-size", str(micro_batch), "--precision", "fp64", "--augmentation", augmentation]
    train_cli(single, cli_env, *args)
    result = train_cli(multi, cli_env, *args, processes=processes)
    assert f"{processes} processes x" in result.stdout and "x 1 accumulated" in result.stdout
    one, many = parameters(single), parameters(multi)
    assert one.keys() == many.keys()
    for key in one:
        torch.testing.assert_close(many[key], one[key], rtol=0, atol=1e-5, msg=key)
    # rank 0 alone writes: one record per epoch, evaluated over all test images exactly once
    records = epoch_records(read_metrics(multi / "metrics.jsonl"))
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[-1]["test_images"] == 256
    summary = json.loads((multi / "summary.json").read_text())
    assert summary["processes"] == processes
    # Sharded evaluation counts each test image once: it equals a one-process evaluation of the
    # same checkpoint. (Top-1 itself differs from the single-process run's: BatchNorm running
    # statistics are per process, and rank 0's saw 1/processes of the micro-batches.)
    from largebatch.evaluate import evaluate_run
    assert evaluate_run(str(multi), data_dir=str(tiny_data), device="cpu")["top1"] == summary["top1"]


def test_sigkill_then_resume_auto_equals_uninterrupted(tmp_path, cli_env):
    reference = tmp_path / "reference"
    train_cli(reference, cli_env, "--micro-batch-size", "32")

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "largebatch", "train", "--out", str(killed), *COMMON,
               "--micro-batch-size", "32", "--checkpoint-every-steps", "3"]
    process = subprocess.Popen(command, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    # kill in the middle of epoch 2 (steps 9-16), once a mid-epoch checkpoint exists
    while time.time() < deadline and process.poll() is None:
        steps = [int(p.stem.split("-")[1]) for p in checkpoint.list_checkpoints(killed / "checkpoints")]
        if any(10 <= s <= 14 for s in steps):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"

    train_cli(killed, cli_env, "--micro-batch-size", "32", "--checkpoint-every-steps", "3", "--resume", "auto")
    final_reference, final_resumed = parameters(reference), parameters(killed)
    for key in final_reference:
        assert torch.equal(final_reference[key], final_resumed[key]), key
    records = epoch_records(read_metrics(killed / "metrics.jsonl"))
    assert [r["epoch"] for r in records] == [1, 2, 3]  # no duplicated or missing epoch


def test_torchrun_two_processes_on_real_cli_path(tmp_path, cli_env):
    """The README's command shape: torchrun --nproc-per-node 2 -m largebatch train --epochs N."""
    result = train_cli(tmp_path / "r", cli_env, "--micro-batch-size", "32", processes=2)
    assert "done: top1" in result.stdout
    assert result.stdout.count("done: top1") == 1  # only rank 0 prints


def test_second_job_on_a_finished_run_is_refused_by_every_rank_in_one_line(tmp_path, cli_env):
    """The README's sequence: `largebatch train`, then torchrun on the same run directory. Every
    process refuses before any collective call: one line each, no traceback from our code and no
    gloo error (torchrun adds its own failure summary)."""
    out = tmp_path / "run"
    train_cli(out, cli_env, "--epochs", "1")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    result = train_cli(out, cli_env, "--epochs", "1", processes=2, check=False)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("largebatch: error:")]
    assert len(ours) == 2 and all("already holds a run" in line for line in ours), result.stderr[-3000:]
    frames = [line for line in result.stderr.splitlines() if line.strip().startswith("File ") and "largebatch" in line]
    assert not frames, result.stderr[-3000:]
    assert "gloo" not in result.stderr.lower()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_dead_peer_is_one_line_on_the_survivor(tmp_path, cli_env):
    """Two processes started by hand (no torchrun agent to end the survivor): rank 1 is killed
    mid-run; rank 0's next collective fails, which it reports in one line naming the checkpoints."""
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "run"
    processes = []
    for rank in (0, 1):
        env = {**cli_env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "largebatch", "train", "--out", str(out), *COMMON, "--epochs", "40",
             "--micro-batch-size", "32", "--checkpoint-every-steps", "4"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    deadline = time.time() + 300
    while time.time() < deadline and not checkpoint.list_checkpoints(out / "checkpoints"):
        time.sleep(0.1)
    processes[1].send_signal(signal.SIGKILL)
    _, err = processes[0].communicate(timeout=300)
    processes[1].wait(timeout=60)
    assert processes[0].returncode == 2, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "another process of this job failed" in lines[0] and "--resume auto" in lines[0], err
    assert checkpoint.list_checkpoints(out / "checkpoints")
