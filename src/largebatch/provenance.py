"""Where a run came from: versions, code, command, machine, devices, times and data classes.

Saved as ``run.json`` in the run directory (beside config.toml, which says what was configured);
written at the start, updated with the end time when the run finishes, and extended with one
entry per resume (at which step, and which settings the resume changed).
"""

from __future__ import annotations

import datetime
import json
import socket
import sys
from pathlib import Path
from typing import Any

import torch

import largebatch


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def git_commit(start: Path | None = None) -> str | None:
    """The commit checked out where the package runs from, if that is a git checkout (read from
    ``.git`` directly: no git process, no network)."""
    folder = (start or Path(largebatch.__file__)).resolve().parent
    for candidate in (folder, *folder.parents):
        git = candidate / ".git"
        if git.is_file():  # a worktree: "gitdir: PATH"
            text = git.read_text(encoding="utf-8", errors="replace").strip()
            if not text.startswith("gitdir:"):
                return None
            git = (candidate / text.split(":", 1)[1].strip()).resolve()
        if git.is_dir():
            return _resolve_head(git)
    return None


def _resolve_head(git: Path) -> str | None:
    try:
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
        if not head.startswith("ref:"):
            return head if len(head) == 40 else None
        ref = head.split(":", 1)[1].strip()
        common = git
        if (git / "commondir").is_file():
            common = (git / (git / "commondir").read_text(encoding="utf-8").strip()).resolve()
        for base in (git, common):
            if (base / ref).is_file():
                return (base / ref).read_text(encoding="utf-8").strip()
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text(encoding="utf-8").splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
    except OSError:
        return None
    return None


def versions() -> dict[str, Any]:
    found = {"largebatch": f"largebatch {getattr(largebatch, '__version__', '?')}", "torch": torch.__version__,
             "python": sys.version.split()[0], "cuda": torch.version.cuda, "cudnn": None, "nccl": None}
    if torch.cuda.is_available():
        found["cudnn"] = torch.backends.cudnn.version()
        try:
            found["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except (AttributeError, RuntimeError):
            pass
    return found


def provenance(context, classes: tuple[str, ...] | list[str], previous: Path | None = None, resumed_at: int = 0,
               changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's provenance; a resume keeps the first session's and appends itself to ``resumes``."""
    device = context.device
    session = {"started": now(), "command": sys.argv, "host": socket.gethostname(),
               "world_size": context.world_size, "device": str(device),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               **versions(), "git_commit": git_commit()}
    earlier: dict[str, Any] = {}
    if previous is not None and resumed_at and previous.is_file():
        try:
            earlier = json.loads(previous.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            earlier = {}
        if not isinstance(earlier, dict):
            earlier = {}
    if not earlier:
        return {**session, "finished": None, "classes": {name: index for index, name in enumerate(classes)},
                "resumes": []}
    resumes = earlier.get("resumes") if isinstance(earlier.get("resumes"), list) else []
    resumes.append({**session, "at_step": resumed_at, "changed": changes or {}})
    return {**earlier, "finished": None, "resumes": resumes}
