"""Checkpoints: one file per optimizer step, written atomically, loaded without unpickling.

``checkpoints/step-00001234.pt`` holds the model (unwrapped keys), optimizer, step, RNG states,
the resolved config, what identifies the data, and the :class:`largebatch.state.TrainState`
(metrics so far, epoch sums). ``checkpoints/best.pt`` is the one with the best test top-1. It is written to a temporary name, flushed to disk
(fsync) and renamed, with a SHA-256 of its bytes beside it (``.sha256``): a file that exists
under its final name is complete, and one whose bytes changed afterwards is detected.
Loading uses ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from largebatch.errors import CheckpointError, CheckpointWarning
from largebatch.state import TrainState

FORMAT_VERSION = 2  # 1: training state as positional lists (read, converted by _upgrade)
BEST_NAME = "best.pt"
NAME = re.compile(r"^step-(\d+)\.pt$")
ZIP_MAGIC = b"PK\x03\x04"


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step-{step:08d}.pt"


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to ``path`` so that it is either the old file or the whole new one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def save(directory: Path, step: int, state: dict[str, Any], keep: int = 2, best: bool = False) -> Path:
    """Save ``state`` as the checkpoint of ``step`` and delete all but the newest ``keep``; with
    ``best``, also as ``best.pt`` (kept whatever ``keep`` says)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    data = buffer.getvalue()
    path = checkpoint_path(directory, step)
    _write_with_checksum(path, data)
    if best:
        _write_with_checksum(directory / BEST_NAME, data)
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".sha256").unlink(missing_ok=True)
    for stale in directory.glob(".*.tmp-*"):  # left by a writer killed mid-write (SIGKILL, power loss)
        if not stale.name.endswith(f".tmp-{os.getpid()}"):
            stale.unlink(missing_ok=True)
    return path


def _write_with_checksum(path: Path, data: bytes) -> None:
    try:
        write_atomic(path, data)
        write_atomic(path.with_suffix(".sha256"), hashlib.sha256(data).hexdigest().encode() + b"\n")
    except OSError as error:
        # Without its checksum the new file would be trusted unchecked: drop it, keep the previous pair.
        path.unlink(missing_ok=True)
        raise CheckpointError(f"could not write checkpoint {path} ({error.strerror or error}); "
                              "the previous checkpoint is intact: free disk space and resume with --resume auto"
                              ) from None


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoint files, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def _load_failure(error: Exception) -> str:
    """One line on why torch.load refused a file (its own message is a paragraph of advice)."""
    text = str(error)
    refused = re.search(r"GLOBAL (\S+)", text)
    if refused:
        return (f"it holds a pickled object ({refused.group(1)}) other than tensors and plain values; "
                "refusing to load it")
    if "Weights only load failed" in text:
        return "its pickled data holds something other than tensors and plain values; refusing to load it"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return f"it is truncated or damaged ({first.split('. ')[0][:160]})"


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint, verifying its checksum; raises CheckpointError if it is unusable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path} ({error.strerror or error})") from None
    digest_file = path.with_suffix(".sha256")
    if digest_file.is_file():
        try:  # bytes, not text: a damaged sidecar must read as a mismatch, not raise UnicodeDecodeError
            expected = digest_file.read_bytes().decode("ascii", errors="replace").strip()
        except OSError as error:
            raise CheckpointError(f"cannot read {digest_file} ({error.strerror or error})") from None
        if hashlib.sha256(data).hexdigest() != expected:
            raise CheckpointError(f"checkpoint {path} is corrupt (SHA-256 differs from {digest_file.name})")
    if not data.startswith(ZIP_MAGIC):  # torch.save writes a zip archive; anything else is not ours
        what = "it is empty" if not data else "it is not a zip archive as torch.save writes"
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {what} (truncated or overwritten?)")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, unpickling refused, ...
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {_load_failure(error)}") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"checkpoint {path} is not a largebatch checkpoint (no format_version)")
    if state["format_version"] == 1:
        state = _upgrade(state)
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {str(state['format_version'])[:20]}; "
                              f"this largebatch reads format {FORMAT_VERSION}: use the largebatch "
                              "version that wrote it")
    return state


def load_latest(directory: Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict] | None:
    """The newest checkpoint in ``directory`` that loads; corrupt ones are skipped with a warning.

    None when there is no checkpoint at all (a fresh start); CheckpointError when there are some
    but none loads, since starting over silently would throw away the whole run."""
    paths = list_checkpoints(directory)
    for path in reversed(paths):
        try:
            return path, load(path, map_location)
        except CheckpointError as error:
            warnings.warn(f"{error}; falling back to the previous checkpoint", CheckpointWarning, stacklevel=2)
    if paths:
        raise CheckpointError(f"none of the {len(paths)} checkpoints in {directory} can be loaded (see the "
                              "warnings above); restore one from a backup, or start afresh with another --out")
    return None


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A format-1 checkpoint (metrics and epoch sums stored by position) in format 2."""
    try:
        loss_sum, steps, images, seconds = state.pop("epoch_accumulators")
        records = list(state.pop("metrics"))
        evaluated = [r for r in records if r.get("kind", "epoch") == "epoch" and r.get("top1") is not None]
        best = max(evaluated, key=lambda r: r["top1"], default=None)
        state["train_state"] = TrainState(
            step=int(state["step"]), records=records, train_time_s=float(state.pop("train_time_s")),
            epoch_loss_sum=float(loss_sum), epoch_steps=int(steps), epoch_images=int(images),
            epoch_time_s=float(seconds), skipped_steps=int(state.pop("skipped_steps", 0)),
            skipped_files=list(state.pop("skipped_files", [])), best_top1=best["top1"] if best else None,
            best_epoch=best["epoch"] if best else None, target_record=None).state_dict()
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint in format 1 lacks or mistypes its training state ({error})") from None
    state["format_version"] = FORMAT_VERSION
    return state


# ---------------------------------------------------------------------------------------------
# What a checkpoint holds besides tensors: RNG states, and the rules for resuming from it.

def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_model_state(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, naming the keys that differ when the checkpoint is from another model."""
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"checkpoint {source} holds no model weights")
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict)
                        if not isinstance(state_dict[k], torch.Tensor) or own[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}")
        raise CheckpointError(f"checkpoint {source} does not fit this model ({'; '.join(parts)})")
    model.load_state_dict(state_dict)


def find_resume_state(resume: str, out: Path, device: torch.device) -> tuple[Path, dict[str, Any]] | None:
    """(checkpoint path, state) to resume from: the newest valid one for ``auto`` (None if the run
    has none yet), or the given file."""
    if not resume:
        return None
    if resume == "auto":
        return load_latest(Path(out) / "checkpoints", map_location=device)
    return Path(resume), load(Path(resume), map_location=device)


# What defines a run's data and trajectory: a resume must not change any of these. The schedule
# (run.epochs and every [schedule] key) may change only when the user says so (extend_schedule).
# Everything else (the LR, logging, checkpoints, device, precision ...) may change; the change is
# recorded in run.json.
RUN_DEFINING_KEYS = (("model", "name"), ("model", "zero_init_residual"), ("data", "dataset"),
                     ("data", "train_subset"), ("data", "image_size"), ("data", "num_classes"),
                     ("data", "augmentation"), ("data", "color_jitter"), ("data", "lighting"),
                     ("data", "synthetic_images"), ("data", "label_smoothing"), ("optimizer", "name"), ("run", "batch_size"), ("run", "seed"))


# Settings whose 0 means "from the data set"; run files now hold the resolved value, older ones 0.
RESOLVED_FROM_DATA = {("data", "image_size"), ("data", "num_classes")}


def schedule_keys(config) -> list[tuple[str, str]]:
    return [("run", "epochs")] + [("schedule", key) for key in vars(config.schedule)]


def resume_differences(saved: dict[str, Any], config, extend_schedule: bool = False,
                       ) -> tuple[list[str], dict[str, list[Any]]]:
    """(refusals, allowed changes) between a checkpoint's config and this run's. A refusal names
    the key and both values; allowed changes map ``section.key`` to ``[before, now]``."""
    refusals, changes = [], {}
    defining = set(RUN_DEFINING_KEYS) | (set() if extend_schedule else set(schedule_keys(config)))
    for section, values in vars(config).items():
        if not hasattr(values, "__dataclass_fields__"):
            continue
        for key, now in vars(values).items():
            before = saved.get(section, {}).get(key, now) if isinstance(saved.get(section), dict) else now
            if before == now or (section, key) in RESOLVED_FROM_DATA and before == 0:
                continue  # equal, or "from the data set" in a checkpoint that saved the setting unresolved
            if (section, key) in defining:
                refusals.append(f"{section}.{key} is {before!r} there and {now!r} here")
            else:
                changes[f"{section}.{key}"] = [before, now]
    return refusals, changes


def check_data_identity(saved: dict[str, Any], now: dict[str, Any], source: Path) -> None:
    """Refuse a resume whose data set differs from the checkpoint's: other classes, other size."""
    if not isinstance(saved, dict):
        return  # a checkpoint from before data identities were saved
    problems = []
    if "train_images" in saved and saved["train_images"] != now["train_images"]:
        problems.append(f"{saved['train_images']} training images there, {now['train_images']} here")
    if saved.get("classes") and saved["classes"] != now["classes"]:
        before, after = saved["classes"], now["classes"]
        added = sorted(set(after) - set(before))[:3]
        removed = sorted(set(before) - set(after))[:3]
        detail = ", ".join(part for part in (f"added {added}" if added else "", f"missing {removed}" if removed else "")
                           if part) or "same names in another order"
        problems.append(f"the class list differs ({detail})")
    if problems:
        raise CheckpointError(f"checkpoint {source} was trained on other data ({'; '.join(problems)}); resume with "
                              "the run's data, or start a new run with another --out")
