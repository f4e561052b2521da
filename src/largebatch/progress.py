"""Terminal output of a run: a live progress line on a terminal, one line per epoch otherwise.

Only rank 0 prints. Metrics go to ``metrics.jsonl`` through :class:`MetricsLog`, one JSON object
per line, flushed at once so a killed run keeps every completed record.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """The progress display of rank 0 (``enabled`` False on other ranks)."""

    def __init__(self, total_steps: int, epochs: int, enabled: bool = True, stream: TextIO | None = None,
                 min_interval_s: float = 0.25):
        self.total_steps, self.epochs = total_steps, epochs
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.live = enabled and self.stream.isatty()
        self.min_interval_s = min_interval_s
        self._last_draw = 0.0

    def message(self, text: str) -> None:
        if self.enabled:
            if self.live:
                self.stream.write("\r\033[K")
            print(text, file=self.stream, flush=True)

    def step(self, step: int, epoch: float, loss: float, lr: float, images_per_s: float) -> None:
        """Redraw the live line (terminal only, at most every ``min_interval_s``)."""
        if not self.live:
            return
        now = time.monotonic()
        if now - self._last_draw < self.min_interval_s and step + 1 < self.total_steps:
            return
        self._last_draw = now
        width = 24
        filled = int(width * (step + 1) / self.total_steps)
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r\033[K[{bar}] step {step + 1}/{self.total_steps} epoch {epoch:.2f}/{self.epochs} "
                          f"loss {loss:.4f} lr {lr:.4g} {images_per_s:,.0f} img/s")
        self.stream.flush()

    def epoch(self, record: dict[str, Any]) -> None:
        top = ""
        if record.get("top1") is not None:
            top = f" top1 {record['top1']:.4f} top5 {record['top5']:.4f}"
        self.message(f"epoch {record['epoch']:>3}/{self.epochs} step {record['step']:>6} "
                     f"loss {record['train_loss']:.4f}{top} lr {record['lr']:.4g} "
                     f"{record['images_per_s']:,.0f} img/s elapsed {format_duration(record['elapsed_s'])}")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep the information as text
    return value


class MetricsLog:
    """Appends JSON records to ``metrics.jsonl``; rewritten from a checkpoint's records on resume."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def reset(self, records: list[dict[str, Any]]) -> None:
        if self.enabled:
            with open(self.path, "w", encoding="utf-8") as handle:
                for record in records:
                    handle.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")

    def append(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every record of a metrics.jsonl: epoch records and, every ``log_every`` steps, step records.

    A last line without its newline that is not valid JSON is a record being written (a run still
    training, or killed mid-write) and is left out. Any other line that is not a JSON object
    raises :class:`largebatch.errors.DataError` naming the file and the line."""
    from largebatch.errors import DataError

    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start}); the file is damaged") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as error:
            if number == len(lines):  # unterminated last line: being written
                break
            message = error.msg if isinstance(error, json.JSONDecodeError) else "nested too deeply"
            raise DataError(f"{path}: line {number} is not JSON ({message}); the file is damaged") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {number} is not a JSON object; the file is damaged")
        records.append(record)
    return records


def epoch_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The end-of-epoch records (``kind`` "epoch"): epoch, step, lr, train_loss, top1, top5 ..."""
    return [r for r in records if r.get("kind", "epoch") == "epoch"]
