"""Nothing is trusted blindly: checkpoints are never unpickled beyond tensors and plain values,
recipes are data (TOML), never code, and nothing is fetched from the network."""

from __future__ import annotations

import ast
import builtins
import hashlib
import io
import os
import shlex
import socket
from pathlib import Path

import pytest
import torch

import largebatch
from largebatch import checkpoint
from largebatch.errors import CheckpointError, CheckpointWarning

SOURCE = Path(largebatch.__file__).parent


class RunsShell:
    """Unpickling this runs a shell command (the classic malicious-checkpoint payload)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class RunsPython:
    """Unpickling this runs Python code through exec."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


PAYLOADS = {"os.system": RunsShell, "builtins.exec": RunsPython}


def malicious_checkpoint(directory: Path, step: int, payload: type, marker: Path, template: dict) -> Path:
    """A file that looks like our checkpoint (real weights, format version, a valid SHA-256 sidecar)
    with a payload object in it."""
    buffer = io.BytesIO()
    torch.save({**template, "step": step, "extra": payload(marker)}, buffer)
    path = checkpoint.checkpoint_path(directory, step)
    path.write_bytes(buffer.getvalue())
    path.with_suffix(".sha256").write_text(hashlib.sha256(buffer.getvalue()).hexdigest() + "\n")
    return path


@pytest.fixture
def poisoned_run(finished_run, tmp_path, helpers):
    """A copy of the finished run whose newest checkpoint (step 9) carries a payload."""
    def make(payload):
        source, flags = finished_run
        out = helpers.copy_run(source, tmp_path / "run")
        template = checkpoint.load(checkpoint.checkpoint_path(out / "checkpoints", 8))
        marker = tmp_path / "payload-ran"
        path = malicious_checkpoint(out / "checkpoints", 9, payload, marker, template)
        return out, flags, path, marker
    return make


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_payload_is_live(poisoned_run, payload):
    """The crafted file really is dangerous: an unsafe load runs the payload (so the tests below,
    where the marker stays absent, can fail)."""
    _, _, path, marker = poisoned_run(PAYLOADS[payload])
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_malicious_checkpoint_is_refused_by_the_loader(poisoned_run, payload):
    _, _, path, marker = poisoned_run(PAYLOADS[payload])
    with pytest.raises(CheckpointError, match=r"holds a pickled object \((posix\.system|exec)\).*refusing"):
        checkpoint.load(path)
    assert not marker.exists()


def test_malicious_checkpoint_given_to_resume_is_refused_in_one_line(poisoned_run, tmp_path, helpers, cli):
    out, flags, path, marker = poisoned_run(RunsShell)
    code, _, err = cli(["train", "--out", str(tmp_path / "other"), *flags, "--resume", str(path)])
    helpers.assert_one_line_error(code, err, str(path), "refusing to load it")
    assert not marker.exists()


def test_malicious_newest_checkpoint_is_skipped_by_resume_auto(poisoned_run, helpers, cli):
    """``--resume auto`` treats it like a corrupt file: a warning, then the step-8 checkpoint."""
    out, flags, path, marker = poisoned_run(RunsShell)
    with pytest.warns(CheckpointWarning, match="refusing to load it"):
        code, stdout, err = cli(["train", "--out", str(out), *flags, "--resume", "auto"])
    assert code == 0, err
    assert "already complete (step 8 of 8)" in stdout  # the valid step-8 checkpoint: nothing left to do
    assert not marker.exists()


def test_malicious_checkpoint_given_to_evaluate_is_refused_in_one_line(poisoned_run, helpers, cli):
    out, _, path, marker = poisoned_run(RunsPython)
    code, _, err = cli(["evaluate", str(out), "--checkpoint", str(path), "--device", "cpu"])
    helpers.assert_one_line_error(code, err, "refusing to load it")
    assert not marker.exists()


def calls_in_source() -> list[tuple[str, ast.Call]]:
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                found.append((f"{path.relative_to(SOURCE)}:{node.lineno}", node))
    return found


def call_name(node: ast.Call) -> str:
    return ast.unparse(node.func)


def test_every_torch_load_in_the_package_is_weights_only():
    """A guard for future code: any torch.load without weights_only=True fails this test."""
    loads = [(where, node) for where, node in calls_in_source() if call_name(node).endswith("torch.load")]
    assert loads, "expected the checkpoint loader's torch.load"
    for where, node in loads:
        keywords = {k.arg: k.value for k in node.keywords}
        assert "weights_only" in keywords and ast.literal_eval(keywords["weights_only"]) is True, where


@pytest.mark.parametrize("unsafe", ["eval", "exec", "pickle.load", "pickle.loads", "marshal.loads",
                                    "yaml.load", "yaml.unsafe_load", "torch.hub.load"])
def test_package_never_evaluates_or_unpickles_input(unsafe):
    used = [where for where, node in calls_in_source() if call_name(node) == unsafe]
    assert not used, f"{unsafe} called at {used}"


CODE_IN_RECIPES = [
    # (recipe text, the error it must give); {marker} is replaced by a path the code would create
    ('[optimizer]\nlr = __import__("os").system("touch {marker}")\n', "not valid TOML"),
    ('[optimizer]\nmomentum = "__import__(\'os\').system(\'touch {marker}\')"\n', "optimizer.momentum: expected a number"),
    ('[run]\nseed = "{{__import__(\'os\').system(\'touch {marker}\')}}"\n', "run.seed: expected an integer"),
    ('[model]\nname = "__import__(\'os\').system(\'touch {marker}\')"\n', "unknown model"),
    ('extends = "__import__(\'os\').system(\'touch {marker}\')"\n', "recipe"),
    ('[schedule]\nmilestones = ["exec(\'open({marker!r}, \\"w\\")\')"]\n', "schedule.milestones"),
]


@pytest.mark.parametrize("text, message", CODE_IN_RECIPES)
def test_python_code_in_a_recipe_is_just_a_bad_value(text, message, tmp_path, train_argv, helpers, cli):
    marker = tmp_path / "code-ran"
    recipe = tmp_path / "evil.toml"
    recipe.write_text(text.format(marker=str(marker)))
    code, _, err = cli(train_argv(tmp_path / "run", "--recipe", str(recipe)))
    helpers.assert_one_line_error(code, err, message)
    assert not marker.exists()


def test_training_and_evaluation_never_open_a_network_connection(train_argv, tmp_path, monkeypatch, cli):
    """Every way to reach the network from Python raises here; a tiny run and its evaluation
    still succeed, and none of them was even tried."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if args else kwargs)
        raise OSError("network access attempted during a test")
    for name in ("connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)

    out = tmp_path / "run"
    code, _, err = cli(train_argv(out, "--epochs", "1"))
    assert code == 0, err
    code, stdout, err = cli(["evaluate", str(out), "--device", "cpu"])
    assert code == 0, err
    assert '"top1"' in stdout
    assert attempts == []
