"""A run directory belongs to one run: its default name, the refusal to reuse it, and a lock.

Before any collective call, every process checks the directory on its own (:func:`check_start`),
so a second run on the same ``--out`` is refused with one line by each of its processes, never
with a traceback from a half-formed process group. Rank 0 then holds :class:`RunLock` for the
whole run: a lock file naming the owner (host, pid, job), created exclusively, removed on exit;
a lock whose owner is dead on this host is taken over with a warning.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import time
import warnings
from pathlib import Path

from largebatch.errors import CheckpointWarning, ConfigError

LOCK_NAME = ".lock"
# Study processes with disjoint --only selections share a study directory and hold its lock only
# while they write its own files (a moment): one waits this long for another before refusing.
STUDY_LOCK_WAIT_S = 30.0
# The files a run writes; anything else in a directory means it belongs to something else.
RUN_FILES = ("config.toml", "metrics.jsonl", "summary.json", "run.json", "plan.json", "checkpoints", "tensorboard",
             LOCK_NAME)


class RunDirectoryError(ConfigError):
    """A run directory that holds another run, or something that is not a run, or is locked."""


def default_name(dataset: str, model: str, batch_size: int, optimizer: str, seed: int) -> str:
    """``<dataset>-<model>-b<batch>-<optimizer>-s<seed>``: what the run is, not which recipe started it."""
    return f"{dataset}-{model}-b{batch_size}-{optimizer}-s{seed}"


def job_id() -> str:
    """The identity of this job, the same on all its processes: torchrun's run id and master
    address (unique among jobs running at the same time), or the process id without torchrun."""
    if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        return (f"{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}@{os.environ['MASTER_ADDR']}:"
                f"{os.environ.get('MASTER_PORT', '')}")
    return f"pid-{os.getpid()}@{socket.gethostname()}"


def _read_lock(path: Path) -> dict:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):  # being written, or damaged: an owner we cannot name
        return {}


def describe_owner(owner: dict) -> str:
    if not owner:
        return "another process"
    return (f"process {owner.get('pid', '?')} on {owner.get('host', '?')} (job {owner.get('job', '?')}, since "
            f"{owner.get('started', '?')})")


def contents(directory: Path) -> tuple[list[str], list[str]]:
    """(run files, other entries) in ``directory``, sorted; both empty when it does not exist."""
    try:
        names = sorted(entry.name for entry in directory.iterdir())
    except FileNotFoundError:
        return [], []
    except NotADirectoryError:
        raise RunDirectoryError(f"--out {directory} is a file, not a directory; choose another --out") from None
    ours = [name for name in names if name in RUN_FILES]
    return ours, [name for name in names if name not in RUN_FILES]


def check_start(directory: Path, resume: str, has_checkpoint: bool, what: str = "run") -> None:
    """Refuse, in one line, to start (or resume) in ``directory`` when that would overwrite or
    mix runs: a new run needs an empty or new directory; ``--resume auto`` without a checkpoint
    starts afresh, unless the run there finished (its summary.json would be replaced). A lock
    held by another job is refused too."""
    ours, others = contents(directory)
    lock = directory / LOCK_NAME
    if LOCK_NAME in ours:
        owner = _read_lock(lock)
        if owner.get("job") != job_id() and not _stale(lock, owner):
            raise RunDirectoryError(f"--out {directory} is in use by {describe_owner(owner)}; wait for it to "
                                    f"finish or choose another --out (if no such process exists, delete {lock})")
    ours = [name for name in ours if name != LOCK_NAME]
    if others and not ours:
        raise RunDirectoryError(f"--out {directory} is not empty and holds no {what} of ours ({', '.join(others[:3])}"
                                f"{' ...' if len(others) > 3 else ''}); choose a new or empty directory")
    if resume and has_checkpoint:
        return
    if ours and not resume:
        raise RunDirectoryError(f"--out {directory} already holds a {what} ({', '.join(ours)}); continue it with "
                                "--resume auto, or choose another --out")
    if resume and "summary.json" in ours:
        raise RunDirectoryError(f"--out {directory} holds a {what} (finished: summary.json) but no checkpoint to resume "
                                f"from ({', '.join(ours)}); choose another --out to train again")
    # --resume auto on a run stopped before its first checkpoint: nothing to resume, start it afresh


def _stale(lock: Path, owner: dict) -> bool:
    """True when the lock's owner is known to be gone: on this host, no process holds the file's
    advisory lock (the kernel releases it when the owner dies, even by SIGKILL)."""
    if owner.get("host") != socket.gethostname():
        return False
    try:
        with open(lock, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return False


class RunLock:
    """Hold ``directory``'s lock file for the lifetime of a ``with`` block (rank 0 only).
    ``wait_s``: how long to wait for a live owner to let go before refusing (0: refuse at once;
    the study directory's lock is held for a moment at a time, so its users wait)."""

    def __init__(self, directory: Path, command: str = "", wait_s: float = 0.0):
        self.path = Path(directory) / LOCK_NAME
        self.command = command
        self.wait_s = wait_s
        self._handle = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "job": job_id(),
                 "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                 "command": self.command}
        deadline = time.monotonic() + self.wait_s
        takeovers = 0
        while takeovers < 2:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileExistsError:
                existing = _read_lock(self.path)
                if existing.get("job") == job_id() or _stale(self.path, existing):
                    if existing.get("job") != job_id():
                        warnings.warn(f"{self.path}: taking over the lock of {describe_owner(existing)}, which is no "
                                      "longer running", CheckpointWarning, stacklevel=2)
                    self.path.unlink(missing_ok=True)
                    takeovers += 1
                    continue
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise RunDirectoryError(f"{self.path.parent} is in use by {describe_owner(existing)}; wait for it to "
                                        f"finish or choose another --out (if no such process exists, delete {self.path})"
                                        ) from None
        else:
            raise RunDirectoryError(f"could not take the lock {self.path}; another process keeps taking it")
        self._handle = os.fdopen(fd, "w", encoding="utf-8")
        fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._handle.write(json.dumps(owner) + "\n")
        self._handle.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            try:
                if _read_lock(self.path).get("pid") == os.getpid():
                    self.path.unlink(missing_ok=True)
            except OSError as error:
                if error.errno != errno.ENOENT:
                    raise
            finally:
                self._handle.close()
                self._handle = None
