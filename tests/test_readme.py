"""The README's Fashion-MNIST commands run, in the order written, in a fresh copy of the repository
with its own virtual environment (slow: setup, the main job, two processes and the fit example,
15 to 30 minutes on 2 cores; needs the Fashion-MNIST files installed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def fashion_mnist_commands() -> list[str]:
    """The README's shell commands that need no ImageNet folder and no cluster, in order."""
    commands = []
    for block in blocks("bash"):
        if "SBATCH" in block or "imagenet" in block.lower() or "pytest" in block:
            continue
        commands += [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return commands


def test_the_readme_lists_the_main_job_first():
    first = blocks("bash")[0].strip().splitlines()[0]
    assert first == "bash scripts/setup.sh --data && .venv/bin/largebatch train"


@pytest.mark.skipif(not DATA.is_file(), reason="Fashion-MNIST is not installed")
def test_readme_commands_run_in_order(tmp_path):
    copy = tmp_path / "largebatch"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    # the copy's own .venv, made by the README's first command (a shared one would be re-pointed at the copy)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{copy / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"
    for command in fashion_mnist_commands():
        result = subprocess.run(command, shell=True, cwd=copy, env=env, capture_output=True, text=True, timeout=3600)
        assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-2000:])
    assert (copy / "runs" / "fashion-mnist-fast_resnet-b4096-lars-s0" / "summary.json").is_file()
    assert (copy / "runs" / "two-processes" / "summary.json").is_file()
    (copy / "my_cnn.py").write_text(blocks("python")[0])
    result = subprocess.run([str(copy / ".venv" / "bin" / "python"), "my_cnn.py"], cwd=copy, env=env,
                            capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"top-1 0\.\d{4}", result.stdout)
