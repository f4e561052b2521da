"""Writing the outputs of ``report`` and ``critical-batch``: all at once, each file atomically,
into a folder that belongs to them.

The commands compute every output in memory first; :func:`write_outputs` then checks the folder,
takes its lock (``largebatch.rundir.RunLock``: another process writing there is refused with one
line) and replaces each file by an atomic rename (``largebatch.checkpoint.write_atomic``), so a
failure before or during the writing leaves every earlier output whole.
"""

from __future__ import annotations

import sys
from pathlib import Path

from largebatch import rundir
from largebatch.errors import ConfigError

# The files that make a folder a run directory (its lock file aside: RunLock deals with that).
RUN_FILES = tuple(name for name in rundir.RUN_FILES if name != rundir.LOCK_NAME)
# What `report` and `critical-batch` write into a study directory, besides PNG plots.
REPORT_FILES = ("report.md", "results.json", "sweeps.json", "critical_batch.json")


def check_output_directory(out: Path, directory: Path, option: str = "--out") -> None:
    """Refuse an output folder that belongs to something else: a file, a run directory, or a
    study directory (one holding run directories), unless it is ``directory``, the folder read."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"{option} {out} is a file; give a folder")
    if directory.exists() and out.resolve() == directory.resolve():
        return
    for name in RUN_FILES:
        if (out / name).exists():
            raise ConfigError(f"{option} {out} is a run directory (it holds {name}); give another folder")
    for entry in sorted(out.iterdir()):
        if entry.is_dir() and (entry / "config.toml").is_file():
            raise ConfigError(f"{option} {out} holds the run directory {entry.name}: it is a study's folder; "
                              "give another folder")


def write_outputs(out: Path, files: dict[str, bytes], directory: Path) -> None:
    """Write ``files`` (name -> bytes) into ``out`` after checking that it may hold them, holding
    its lock while writing."""
    from largebatch.checkpoint import write_atomic

    check_output_directory(out, directory)
    with rundir.RunLock(out, " ".join(sys.argv), wait_s=rundir.STUDY_LOCK_WAIT_S):
        for name, data in files.items():
            write_atomic(out / name, data)
