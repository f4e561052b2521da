"""Checkpoints: one file per optimizer step, written atomically, loaded without unpickling.

``checkpoints/step-00001234.pt`` holds the model (unwrapped keys), optimizer, step, RNG states,
the resolved config and the metrics so far. It is written to a temporary name, flushed to disk
(fsync) and renamed, with a SHA-256 of its bytes beside it (``.sha256``): a file that exists
under its final name is complete, and one whose bytes changed afterwards is detected.
Loading uses ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from largebatch.errors import CheckpointError

FORMAT_VERSION = 1
NAME = re.compile(r"^step-(\d+)\.pt$")


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


def save(directory: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Save ``state`` as the checkpoint of ``step`` and delete all but the newest ``keep``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    data = buffer.getvalue()
    path = checkpoint_path(directory, step)
    try:
        write_atomic(path, data)
        write_atomic(path.with_suffix(".sha256"), hashlib.sha256(data).hexdigest().encode() + b"\n")
    except OSError as error:
        raise CheckpointError(f"could not write checkpoint {path} ({error.strerror or error}); "
                              "the previous checkpoint is intact: free disk space and resume with --resume auto"
                              ) from None
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".sha256").unlink(missing_ok=True)
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoint files, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint, verifying its checksum; raises CheckpointError if it is unusable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path} ({error.strerror or error})") from None
    digest_file = path.with_suffix(".sha256")
    if digest_file.is_file():
        expected = digest_file.read_text().strip()
        if hashlib.sha256(data).hexdigest() != expected:
            raise CheckpointError(f"checkpoint {path} is corrupt (SHA-256 differs from {digest_file.name})")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, unpickling refused, ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            reason = "it holds pickled objects other than tensors and plain values; refusing to load it"
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {reason[:200]}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not a largebatch checkpoint of format "
                              f"{FORMAT_VERSION}")
    return state


def load_latest(directory: Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict] | None:
    """The newest checkpoint in ``directory`` that loads; corrupt ones are skipped with a warning."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load(path, map_location)
        except CheckpointError as error:
            warnings.warn(f"{error}; falling back to the previous checkpoint", stacklevel=2)
    return None
