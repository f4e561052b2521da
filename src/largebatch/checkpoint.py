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

from largebatch.errors import CheckpointError, CheckpointWarning

FORMAT_VERSION = 1
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
        # Without its checksum the new file would be trusted unchecked: drop it, keep the previous pair.
        path.unlink(missing_ok=True)
        raise CheckpointError(f"could not write checkpoint {path} ({error.strerror or error}); "
                              "the previous checkpoint is intact: free disk space and resume with --resume auto"
                              ) from None
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".sha256").unlink(missing_ok=True)
    for stale in directory.glob(".step-*.tmp-*"):  # left by a writer killed mid-write (SIGKILL, power loss)
        if not stale.name.endswith(f".tmp-{os.getpid()}"):
            stale.unlink(missing_ok=True)
    return path


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
