"""What a run tells its user while it trains: a live bar on a terminal, plain lines elsewhere;
``metrics.jsonl``, the record of everything; TensorBoard scalars when asked.

Only rank 0 prints. On a terminal the bar is redrawn at most every quarter second. When stdout is
a file or a pipe (``| tee``, ``nohup``, SLURM, Kubernetes), a plain line is printed at every log
boundary and at least every ``min_interval_s`` seconds, with step, epoch, loss, LR, images/s,
the fraction of time spent waiting for data, and the time left; evaluation prints its progress
the same way. Metrics go to ``metrics.jsonl`` through :class:`MetricsLog`, one JSON object per
line, flushed at once so a killed run keeps every completed record.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from largebatch.errors import ConfigError


def format_duration(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """The progress display of rank 0 (``enabled`` False on other ranks)."""

    def __init__(self, total_steps: int, epochs: int, enabled: bool = True, stream: TextIO | None = None,
                 min_interval_s: float = 30.0, start_step: int = 0):
        self.total_steps, self.epochs = total_steps, epochs
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.live = enabled and self.stream.isatty()
        self.min_interval_s = min_interval_s
        self._last_draw = 0.0
        self._last_line = time.monotonic()
        self._started, self._start_step = time.monotonic(), start_step
        self._loss: float | None = None  # the last mean loss a log boundary gave

    def message(self, text: str) -> None:
        if self.enabled:
            if self.live:
                self.stream.write("\r\033[K")
            print(text, file=self.stream, flush=True)
            self._last_line = time.monotonic()

    def eta_s(self, step: int) -> float:
        """Seconds left at the pace of this session so far (evaluations included)."""
        done = step - self._start_step
        if done <= 0:
            return math.inf
        return (self.total_steps - step) * (time.monotonic() - self._started) / done

    def _line(self, step: int, epoch: float, lr: float, images_per_s: float, data_wait: float | None) -> str:
        loss = f"{self._loss:.4f}" if self._loss is not None else "-"
        wait = f" data wait {data_wait:.0%}" if data_wait is not None else ""
        return (f"step {step}/{self.total_steps} epoch {epoch:.2f}/{self.epochs} loss {loss} lr {lr:.4g} "
                f"{images_per_s:,.0f} img/s{wait} eta {format_duration(self.eta_s(step))}")

    def step(self, step: int, epoch: float, lr: float, images_per_s: float) -> None:
        """After each step (host values only): redraw the bar, or print a line if none was
        printed for ``min_interval_s`` (the loss shown is the last logged one)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if self.live:
            if now - self._last_draw < 0.25 and step < self.total_steps:
                return
            self._last_draw = now
            width = 24
            filled = int(width * step / self.total_steps)
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r\033[K[{bar}] " + self._line(step, epoch, lr, images_per_s, None))
            self.stream.flush()
        elif now - self._last_line >= self.min_interval_s:
            self.message(self._line(step, epoch, lr, images_per_s, None))

    def boundary(self, step: int, epoch: float, loss: float, lr: float, images_per_s: float,
                 data_wait: float) -> None:
        """At a log boundary: the mean loss since the previous one is known."""
        self._loss = loss
        if self.enabled and not self.live:
            self.message(self._line(step, epoch, lr, images_per_s, data_wait))

    def evaluation(self, images_done: int, images_total: int) -> None:
        """During evaluation: on a terminal a live count, elsewhere a line every ``min_interval_s``."""
        if not self.enabled:
            return
        now = time.monotonic()
        text = f"evaluating: {images_done:,}/{images_total:,} images"
        if self.live:
            if now - self._last_draw >= 0.25:
                self._last_draw = now
                self.stream.write("\r\033[K" + text)
                self.stream.flush()
        elif now - self._last_line >= self.min_interval_s:
            self.message(text)

    def epoch(self, record: dict[str, Any]) -> None:
        top = ""
        if record.get("top1") is not None:
            top = f" top1 {record['top1']:.4f} top5 {record['top5']:.4f}"
        self.message(f"epoch {record['epoch']:>3}/{self.epochs} step {record['step']:>6} "
                     f"loss {record['train_loss']:.4f}{top} lr {record['lr']:.4g} "
                     f"{record['images_per_s']:,.0f} img/s elapsed {format_duration(record['elapsed_s'])}")


class TensorBoardLog:
    """Scalars for TensorBoard in ``directory`` (rank 0), written by ``torch.utils.tensorboard``.
    ``metrics.jsonl`` stays the record; this is a view of it. The ``tensorboard`` package is
    imported only here, when a run asks for it."""

    def __init__(self, directory: Path, enabled: bool = True):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("run.tensorboard needs the tensorboard package: pip install tensorboard "
                              "(or run without --tensorboard)") from None
        self.writer = SummaryWriter(log_dir=str(directory))

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


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
