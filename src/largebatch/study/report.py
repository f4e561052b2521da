"""``largebatch report``: a Markdown table, results.json and PNG plots of a run or a study.

``largebatch report DIR`` accepts a run directory or a study directory (any folder holding run
directories). It writes into DIR (or ``--out``):

- ``results.json``: one object per run (:func:`largebatch.study.runs.result_row`);
- ``report.md``: the table of runs and, where they apply, the sections below;
- ``top1_vs_batch.png``: top-1 against batch size on a log2 axis, one line per variant (or per
  variant and augmentation level), each cell at its best LR factor;
- ``top1_vs_epoch.png``: test top-1 against epoch for each cell's best-factor runs;
- with LR sweeps (cells with several LR factors): the "LR sweeps" section (best factor, top-1 at
  it as mean ± std over seeds, the width of the good LR range: :mod:`largebatch.study.sweep`),
  ``sweeps.json`` and one ``sweep_b<batch>.png`` per batch size (top-1 against LR factor, one
  line per variant, diverged runs marked);
- with several augmentation levels: the gain of each level over ``none`` per batch size with the
  spread over seeds (:func:`augmentation_tables`) and ``top1_vs_batch_augmentation.png``.

``--merge FILE`` adds the rows of an earlier report's ``results.json`` whose run directories are
not in DIR (runs done on another machine, or in a run folder since deleted), so one report can
cover a study that ran in several places. A run present in DIR replaces the merged row of the
same name: the run directory is the primary record.

Every file read is checked (:mod:`largebatch.study.runs`); a damaged run or merged row is left
out with a one-line warning, or stops the report with ``strict``. Everything is computed before
anything is written, and each output is written atomically, so a failure leaves the previous
report as it was.
"""

from __future__ import annotations

import io
import json
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from largebatch.config import AUGMENTATIONS
from largebatch.errors import UserError
from largebatch.progress import format_duration
from largebatch.study import sweep as sweeps
from largebatch.study.outputs import write_outputs
from largebatch.study.runs import collect_runs, load_results, merge_results, study_min_top1

Row = dict[str, Any]


def label(row: Row) -> str:
    """What a run's line is called: its study variant, or its optimizer for a plain run."""
    return row.get("variant") or row["optimizer"]


def _mean_spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# ---------------------------------------------------------------------------------------------
# Cells and their LR sweeps

Cell = tuple[str, str, int]  # (label, augmentation, batch)


def cell_of(row: Row) -> Cell:
    return (label(row), row["augmentation"], row["batch_size"])


@dataclass
class CellReport:
    """A cell's runs and its sweep (:func:`largebatch.study.sweep.analyse`)."""

    cell: Cell
    rows: list[Row]
    sweep: sweeps.CellSweep
    best_rows: list[Row] = field(default_factory=list)   # the runs at the best factor (all, if none)


def analyse_cells(rows: list[Row], min_top1: float = 0.0) -> dict[Cell, CellReport]:
    """Every cell of the rows with its sweep; the curve seeds are those present at every factor;
    runs that ended below ``min_top1`` count as failed (:func:`largebatch.study.sweep.failed_below`)."""
    grouped: dict[Cell, list[Row]] = defaultdict(list)
    for r in rows:
        grouped[cell_of(r)].append(r)
    cells = {}
    for cell, mine in sorted(grouped.items()):
        results = [sweeps.Result(r["lr_factor"], r["seed"], r["top1"], bool(r["diverged"])) for r in mine]
        analysis = sweeps.analyse(sweeps.failed_below(results, min_top1))
        best = analysis.best.lr_factor if analysis.best else None
        cells[cell] = CellReport(cell, mine, analysis,
                                 [r for r in mine if r["lr_factor"] == best] if best is not None else list(mine))
    return cells


def best_factor_rows(cells: dict[Cell, CellReport]) -> list[Row]:
    """The runs at each cell's best LR factor (a cell without one: all its runs)."""
    return [r for c in cells.values() for r in c.best_rows]


def _factor(value: float) -> str:
    return f"x{value:g}"


def _width(c: CellReport) -> str:
    s = c.sweep
    if not s.swept:
        return "-"
    if s.width_log2 is None:
        return "none (all failed)"
    return ("≥ " if s.open_low or s.open_high else "") + f"{s.width_log2:g}"


def _best_top1(c: CellReport) -> str:
    s = c.sweep
    if s.best is None:
        return "failed at every factor"
    text = _points(s.best_mean, s.best_std) + f" (n={len(s.best_top1s)})"
    if s.best_diverged:
        text += f", {s.best_diverged} diverged"
    return text


def sweep_tables(cells: dict[Cell, CellReport], min_top1: float = 0.0) -> str:
    """Markdown: per swept cell, the factors, the best factor and its top-1 over seeds, and the
    good LR range; then best top-1 and range width by batch size and variant."""
    swept = {k: c for k, c in cells.items() if c.sweep.swept}
    several_levels = len({k[1] for k in cells}) > 1
    text = ["## LR sweeps\n",
            "Each cell (variant, batch) runs its optimizer's LR rule times each factor. Best factor: highest "
            "test top-1 over the curve seeds (the seeds run at every factor); a diverged run has no top-1 and "
            "ranks below every finished one. Top-1 at the best factor: mean ± standard deviation over all "
            "its seeds (n). Good-LR range: the consecutive factors around the best, none diverged, whose "
            "top-1 is within 0.5 point of the best; its width is log2(largest / smallest factor), i.e. in "
            "factors of 2, \"≥\" when the range reaches an end of the sweep. \"edge\": the best is the "
            "smallest or largest factor swept."
            + (f" Failed: diverged, or ended below {100 * min_top1:g}% top-1 (the study's min_top1: it did not "
               "train); a failed run ranks with the diverged ones.\n" if min_top1 else "\n"),
            f"| variant |{' augmentation |' if several_levels else ''} batch | factors swept | "
            f"{'failed' if min_top1 else 'diverged'} at | best "
            "factor | peak LR | top-1 at best (%) | good-LR range | width (log2) |",
            f"|---|{'---|' if several_levels else ''}---:|---|---|---:|---:|---:|---|---:|"]
    for (name, level, batch), c in sorted(swept.items(), key=lambda item: (item[0][2], item[0][0], item[0][1])):
        s = c.sweep
        factors = [p.lr_factor for p in s.points]
        diverged = ", ".join(_factor(p.lr_factor) for p in s.points if p.diverged) or "-"
        best = "-" if s.best is None else _factor(s.best.lr_factor) + (" (edge)" if s.at_edge else "")
        lr = "-"
        if s.best is not None:
            lrs = {r["lr"] for r in c.best_rows if r.get("lr") is not None}
            lr = ", ".join(f"{v:.4g}" for v in sorted(lrs)) or "-"
        good = "-" if s.range_factors is None else f"{_factor(s.range_factors[0])} - {_factor(s.range_factors[1])}"
        text.append(f"| {name} |{f' {level} |' if several_levels else ''} {batch} | {_factor(factors[0])} - "
                    f"{_factor(factors[-1])} ({len(factors)}) | {diverged} | {best} | {lr} | {_best_top1(c)} | "
                    f"{good} | {_width(c)} |")
    labels = sorted({(k[0], k[1]) for k in cells})
    batches = sorted({k[2] for k in cells})
    head = ("| batch | " + " | ".join(f"{n} / {lv}" if several_levels else n for n, lv in labels) + " |\n|---:|"
            + "---:|" * len(labels))

    def pivot(title: str, render) -> str:
        lines = [f"| {b} | " + " | ".join(render(cells[(n, lv, b)]) if (n, lv, b) in cells else "-"
                                          for n, lv in labels) + " |" for b in batches]
        return f"\n**{title}**\n\n" + head + "\n" + "\n".join(lines) + "\n"

    text.append(pivot("Best top-1 (%), at each cell's best factor (a cell with one factor: that factor), "
                      "mean ± std over seeds (n)", _best_top1))
    text.append(pivot("Good-LR range width (log2 of largest / smallest factor within 0.5 point of the best)",
                      _width))
    return "\n".join(text) + "\n"


def sweeps_json(cells: dict[Cell, CellReport]) -> list[dict[str, Any]]:
    """The sweep of every cell, for sweeps.json."""
    out = []
    for (name, level, batch), c in cells.items():
        s = c.sweep
        out.append({
            "variant": name, "augmentation": level, "batch_size": batch,
            "curve": [{"lr_factor": p.lr_factor, "top1": p.top1, "diverged": p.diverged, "seeds": list(p.seeds)}
                      for p in s.points],
            "best_factor": s.best.lr_factor if s.best else None,
            "best_top1_mean": s.best_mean, "best_top1_std": s.best_std, "best_seeds": len(s.best_top1s),
            "best_diverged": s.best_diverged, "best_at_edge": s.at_edge,
            "good_range": list(s.range_factors) if s.range_factors else None,
            "width_log2": s.width_log2, "width_is_lower_bound": s.open_low or s.open_high,
        })
    return out


def plot_sweep(cells: dict[Cell, CellReport], batch: int) -> bytes:
    """Top-1 against LR factor (log2 axis) at one batch size: one line per variant (mean over the
    curve seeds), failed factors (diverged, or below the study's min_top1) as crosses on the bottom
    edge, each best factor starred."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    mine = {k: c for k, c in cells.items() if k[2] == batch and c.sweep.swept}
    several_levels = len({k[1] for k in cells}) > 1
    crosses = []
    for (name, level, _), c in sorted(mine.items()):
        text = f"{name} / {level}" if several_levels else name
        finished = [p for p in c.sweep.points if not p.diverged]
        line = ax.plot([p.lr_factor for p in finished], [100 * p.top1 for p in finished], marker="o",
                       label=text if finished else "_nolegend_")[0]
        color = line.get_color()
        if c.sweep.best is not None:
            ax.scatter([c.sweep.best.lr_factor], [100 * c.sweep.best.top1], marker="*", s=160, color=color, zorder=5)
        crosses.append((text, color, [p.lr_factor for p in c.sweep.points if p.diverged]))
    if not any(not p.diverged for c in mine.values() for p in c.sweep.points):
        ax.set_ylim(0.0, 100.0)
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top)  # the crosses below must not move the axis
    for text, color, factors in crosses:
        if factors:
            ax.scatter(factors, [bottom] * len(factors), marker="x", s=70, color=color, zorder=5, clip_on=False,
                       label=f"{text}: failed")
    ax.set_xscale("log", base=2)
    factors = sorted({p.lr_factor for c in mine.values() for p in c.sweep.points})
    ax.set_xticks(factors)
    ax.set_xticklabels([f"{f:g}" for f in factors])
    ax.minorticks_off()
    ax.set_xlabel("LR factor on the variant's scaling rule (log2 scale)")
    ax.set_ylabel("test top-1 accuracy (%), mean over the curve seeds")
    ax.set_title(f"Batch {batch}: top-1 versus LR factor (star: best factor)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# Runs by batch size

def markdown_table(rows: list[Row]) -> str:
    """The table of runs. The variant and LR factor columns appear only when some run has one."""
    variants = any(r.get("variant") for r in rows)
    factors = any(r["lr_factor"] != 1.0 for r in rows)
    columns = ["batch"] + (["variant"] if variants else []) + ["optimizer", "augmentation", "seed"] + (
        ["LR factor"] if factors else []) + ["peak LR", "top-1", "top-5", "epochs", "steps", "wall time", "images/s"]
    align = {"variant": "---", "optimizer": "---", "augmentation": "---"}
    head = "| " + " | ".join(columns) + " |\n|" + "|".join(align.get(c, "---:") for c in columns) + "|\n"

    def accuracy(value: float | None, row: Row) -> str:
        if row.get("diverged"):
            return "diverged"
        return "-" if value is None else f"{100 * value:.2f}%"

    lines = []
    for r in rows:
        cells = [str(r["batch_size"])] + ([r.get("variant") or "-"] if variants else []) + [
            r["optimizer"], r["augmentation"], str(r["seed"])] + ([f"x{r['lr_factor']:g}"] if factors else []) + [
            "-" if r.get("lr") is None else f"{r['lr']:.4g}", accuracy(r["top1"], r), accuracy(r.get("top5"), r),
            str(r["epochs"]), str(r["steps"]), format_duration(r["wall_s"]), f"{r['images_per_s']:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def summary_by_batch(rows: list[Row], key: str | tuple[str, ...] = "label") -> dict[str, dict[int, list[float]]]:
    """{line label: {batch: [top1 of each seed]}} of the finished runs."""
    grouped: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if not r.get("diverged"):
            grouped[_group_label(r, key)][r["batch_size"]].append(r["top1"])
    return grouped


def _group_label(row: Row, key: str | tuple[str, ...]) -> str:
    """The row's value of ``key`` (several keys joined by " / "; "label": :func:`label`)."""
    keys = (key,) if isinstance(key, str) else key
    return " / ".join(label(row) if k == "label" else str(row[k]) for k in keys)


def plot_top1_vs_batch(rows: list[Row], key: str | tuple[str, ...] = "label", title: str = "") -> bytes:
    """Top-1 against batch size (log2), one line per label, error bars over seeds; diverged runs as
    crosses on the bottom edge."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {}
    for name, by_batch in sorted(summary_by_batch(rows, key).items()):
        batches = sorted(by_batch)
        stats = [_mean_spread(by_batch[b]) for b in batches]
        means = [100 * m for m, _ in stats]
        spreads = [100 * s for _, s in stats]
        lines = ax.errorbar(batches, means, yerr=spreads if any(spreads) else None, marker="o", capsize=3,
                            label=name)
        colors[name] = lines[0].get_color()
    # Diverged runs have no accuracy: a cross on the bottom edge, in their line's colour.
    diverged_by_label: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        if r.get("diverged"):
            diverged_by_label[_group_label(r, key)].append(r["batch_size"])
    bottom = ax.get_ylim()[0] if colors else 0.0
    for name, batches in sorted(diverged_by_label.items()):
        ax.scatter(batches, [bottom] * len(batches), marker="x", s=70, zorder=5, clip_on=False,
                   color=colors.get(name, "red"), label=f"{name}: diverged (no accuracy)")
    ax.set_xscale("log", base=2)
    all_batches = sorted({r["batch_size"] for r in rows})
    ax.set_xticks(all_batches)
    ax.set_xticklabels([str(b) for b in all_batches])
    ax.set_xlim(*log2_limits(all_batches))
    ax.minorticks_off()
    ax.set_xlabel("global batch size (images per step, log2 scale)")
    ax.set_ylabel("test top-1 accuracy (%)")
    epochs = sorted({r["epochs"] for r in rows})
    ax.set_title(title or f"Top-1 versus batch size ({', '.join(map(str, epochs))} epochs)")
    ax.grid(True, alpha=0.3)
    keys = (key,) if isinstance(key, str) else key
    ax.legend(title=" / ".join("variant" if k == "label" else k for k in keys))
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# Augmentation levels (a study with several data.augmentation values)

def augmentation_levels(rows: list[dict[str, Any]]) -> list[str]:
    """The augmentation levels present, in the order none, minimal, extended, strong."""
    present = {r["augmentation"] for r in rows}
    return [a for a in AUGMENTATIONS if a in present] + sorted(present - set(AUGMENTATIONS))


def augmentation_gains(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (variant, batch size, level): top-1 over seeds and its gain over ``none``.

    ``mean``/``std``: test top-1 over the seeds (std 0 with one seed); ``gain``: mean of the level
    minus mean of ``none`` at the same variant and batch size; ``gain_std``: sqrt(std_level^2 +
    std_none^2), the spread of a difference of two single runs (None with one seed each);
    ``vs_smallest``: mean minus the same level's mean at the variant's smallest batch size.
    All in fractions (0.01 = 1 point)."""
    cells: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if not r.get("diverged"):
            cells[(label(r), r["batch_size"], r["augmentation"])].append(r)
    stats = {k: _mean_spread([r["top1"] for r in v]) for k, v in cells.items()}
    smallest = {}
    for variant, batch, _ in cells:
        smallest[variant] = min(batch, smallest.get(variant, batch))
    levels = augmentation_levels(rows)
    out = []
    for (variant, batch, level), runs in sorted(cells.items(), key=lambda item: (
            item[0][0], item[0][1], levels.index(item[0][2]))):
        mean, std = stats[(variant, batch, level)]
        none = stats.get((variant, batch, "none"))
        base = stats.get((variant, smallest[variant], level))
        several = len(runs) > 1 or len(cells.get((variant, batch, "none"), [])) > 1
        out.append({"variant": variant, "batch_size": batch, "augmentation": level,
                    "seeds": sorted(r["seed"] for r in runs), "mean": mean, "std": std,
                    "gain": mean - none[0] if none else None,
                    "gain_std": math.hypot(std, none[1]) if none and several else None,
                    "vs_smallest": mean - base[0] if base else None,
                    "epochs": sorted({r["epochs"] for r in runs})})
    return out


def _points(value: float | None, spread: float | None = None, signed: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"
    return text + (f" ± {100 * spread:.2f}" if spread is not None else "")


def augmentation_tables(rows: list[dict[str, Any]]) -> str:
    """Markdown: per variant, top-1 by batch size and level (mean ± std over seeds), the gain of
    each level over ``none``, and each level's change from the smallest batch size."""
    gains = augmentation_gains(rows)
    levels = augmentation_levels(rows)
    text = ["## Augmentation levels\n",
            "Test top-1 in %, mean ± standard deviation over seeds (n = number of seeds). Gain: mean of "
            "the level minus mean of `none` at the same batch size, in points; ± is sqrt(std_level² + "
            "std_none²), the spread of the difference of two single runs (no ± with one seed). "
            "Change from the smallest batch: the level's mean minus its own mean at the smallest batch "
            "size.\n"]
    for variant in sorted({g["variant"] for g in gains}):
        mine = [g for g in gains if g["variant"] == variant]
        batches = sorted({g["batch_size"] for g in mine})
        cell = {(g["batch_size"], g["augmentation"]): g for g in mine}
        header = "| batch | " + " | ".join(levels) + " |\n|---:|" + "---:|" * len(levels) + "\n"

        def table(title: str, render) -> str:
            lines = [f"| {b} | " + " | ".join(render(cell[(b, a)]) if (b, a) in cell else "-" for a in levels) + " |"
                     for b in batches]
            return f"**{variant}: {title}**\n\n" + header + "\n".join(lines) + "\n"

        text.append(table("top-1 (%)", lambda g: _points(g["mean"], g["std"] if len(g["seeds"]) > 1 else None)
                          + f" (n={len(g['seeds'])})"))
        if "none" in levels and len(levels) > 1:
            text.append(table("gain over none (points)", lambda g: "reference" if g["augmentation"] == "none"
                              else _points(g["gain"], g["gain_std"], signed=True)))
        text.append(table(f"change from batch {batches[0]}, same level (points)",
                          lambda g: _points(g["vs_smallest"], signed=True)))
    return "\n".join(text)


def plot_top1_vs_batch_by_augmentation(rows: list[dict[str, Any]]) -> bytes:
    """Top-1 against batch size, one line per augmentation level (error bars: std over seeds),
    one panel per variant."""
    plt = _pyplot()
    gains = augmentation_gains(rows)
    variants = sorted({g["variant"] for g in gains})
    levels = augmentation_levels(rows)
    fig, axes = plt.subplots(1, len(variants), figsize=(7 * len(variants), 4.8), squeeze=False, sharey=True)
    all_batches = sorted({g["batch_size"] for g in gains})
    markers = "osD^v<>"
    for ax, variant in zip(axes[0], variants):
        for index, level in enumerate(levels):
            mine = sorted((g for g in gains if g["variant"] == variant and g["augmentation"] == level),
                          key=lambda g: g["batch_size"])
            if not mine:
                continue
            # a small sideways offset per level (in log2 units) keeps the error bars apart
            offset = 2 ** (0.04 * (index - (len(levels) - 1) / 2))
            counts = sorted({len(g["seeds"]) for g in mine})
            seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
            ax.errorbar([g["batch_size"] * offset for g in mine], [100 * g["mean"] for g in mine],
                        yerr=[100 * g["std"] for g in mine], marker=markers[index % len(markers)], capsize=3,
                        label=f"{level} ({seeds} seed{'s' if counts[-1] > 1 else ''})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_batches)
        ax.set_xticklabels([str(b) for b in all_batches])
        ax.set_xlim(*log2_limits(all_batches))
        ax.minorticks_off()
        ax.set_xlabel("global batch size (images per step, log2 scale)")
        epochs = sorted({e for g in gains if g["variant"] == variant for e in g["epochs"]})
        ax.set_title(f"{variant}: top-1 versus batch size by augmentation ({', '.join(map(str, epochs))} epochs)")
        ax.grid(True, alpha=0.3)
        ax.legend(title="augmentation level")
    axes[0][0].set_ylabel("test top-1 accuracy (%), mean ± std over seeds")
    fig.tight_layout()
    return _png(fig)


def epoch_line_labels(rows: list[dict[str, Any]]) -> list[str | None]:
    """Legend labels for one epoch panel: the first run of each batch size gets "B=<batch>" (with
    the number of seeds where there are several), the others None, so every batch size is named
    once whichever seeds a panel holds (merged runs may lack the lowest seed's epoch record)."""
    runs_per_batch = Counter(r["batch_size"] for r in rows)
    labels: list[str | None] = []
    named: set[int] = set()
    for r in rows:
        batch = r["batch_size"]
        if batch in named:
            labels.append(None)
            continue
        named.add(batch)
        seeds = f", {runs_per_batch[batch]} seeds" if runs_per_batch[batch] > 1 else ""
        diverged = " (diverged)" if r.get("diverged") else ""
        labels.append(f"B={batch}{seeds}{diverged}")
    return labels


def log2_limits(batches: list[int], margin: float = 1.5) -> tuple[float, float]:
    """x-axis limits for a log2 batch axis that keep points at the smallest and largest batch off
    the frame (a panel with one batch size would otherwise draw its point on the edge)."""
    return min(batches) / margin, max(batches) * margin




def plot_top1_vs_epoch(rows: list[Row]) -> bytes | None:
    """Test top-1 against epoch for every run with a per-epoch record (``top1_by_epoch``): one
    panel per variant, or per variant and augmentation level when the runs use several levels
    (one colour per batch size). Every evaluation is a marker, so a run evaluated once still shows."""
    rows = [r for r in rows if r.get("top1_by_epoch")]
    if not rows:
        return None
    plt = _pyplot()
    several_levels = len({r["augmentation"] for r in rows}) > 1
    levels = augmentation_levels(rows) if several_levels else [""]
    panels = [(name, level) for name in sorted({label(r) for r in rows}) for level in levels
              if any(label(r) == name and (not level or r["augmentation"] == level) for r in rows)]
    columns = min(len(panels), 4)
    lines = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.6 * columns if columns > 1 else 6, 3.9 * lines),
                             squeeze=False, sharey=True)
    colormap = plt.get_cmap("viridis")
    batches = sorted({r["batch_size"] for r in rows})
    for ax, (name, level) in zip(axes.flat, panels):
        mine = [r for r in rows if label(r) == name and (not several_levels or r["augmentation"] == level)]
        for r, text in zip(mine, epoch_line_labels(mine)):
            epochs, top1 = zip(*r["top1_by_epoch"])
            shade = batches.index(r["batch_size"]) / max(1, len(batches) - 1)
            ax.plot(epochs, [100 * t for t in top1], color=colormap(0.9 * shade), marker="o", markersize=3,
                    label=text)
        ax.set_title(f"{name}, augmentation {level}" if several_levels else name)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for line in axes:
        line[0].set_ylabel("test top-1 accuracy (%)")
    low = min((100 * r["top1"] for r in rows if not r.get("diverged")), default=0)
    axes[0][0].set_ylim(max(0.0, math.floor(low / 5) * 5 - 10), 100)
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# The report

@dataclass
class Report:
    """Everything a report writes, computed before anything is written."""

    rows: list[Row]
    files: dict[str, bytes]
    warnings: list[str]


def build_report(directory: str | Path, merge: list[str] | tuple[str, ...] = (), strict: bool = False,
                 title: str = "", min_top1: float | None = None) -> Report:
    """The report of a run or study directory plus the rows of earlier results.json files
    (``merge``) for runs whose directories are not there; nothing is written. ``min_top1``
    (default: the study directory's ``study.toml``, else 0): runs ending below it count as
    failed in the sweeps."""
    directory = Path(directory)
    if min_top1 is None:
        min_top1 = study_min_top1(directory)
    rows, warnings = collect_runs(directory, strict) if directory.exists() else ([], [])
    for source in merge:
        merged, skipped = load_results(source, strict)
        warnings += skipped
        rows = merge_results(rows, merged, str(source))
    if not rows:
        raise UserError(f"{directory}: no complete runs (run directories with summary.json) found"
                        + (f" ({len(warnings)} damaged, skipped)" if warnings else ""))
    cells = analyse_cells(rows, min_top1)
    best = best_factor_rows(cells)
    swept = any(c.sweep.swept for c in cells.values())
    several_levels = len(augmentation_levels(rows)) > 1
    files: dict[str, bytes] = {"results.json": (json.dumps(rows, indent=2) + "\n").encode()}
    files["top1_vs_batch.png"] = plot_top1_vs_batch(
        best, key=("label", "augmentation") if several_levels else "label",
        title="Top-1 versus batch size, each at its best LR factor" if swept else "")
    epoch_png = plot_top1_vs_epoch(best)
    if epoch_png is not None:
        files["top1_vs_epoch.png"] = epoch_png
    text = [f"# Report: {title or directory}\n", markdown_table(rows)]
    merged = [r for r in rows if r.get("source")]
    if merged:
        sources = sorted({r["source"] for r in merged})
        without_epochs = sum(1 for r in merged if not r.get("top1_by_epoch"))
        text.append(f"{len(merged)} of the {len(rows)} runs come from {', '.join(sources)} (their run directories "
                    f"are not in {directory})" + (f"; {without_epochs} of them have no per-epoch record and "
                                                  "are not in the epoch plot" if without_epochs else "") + ".\n")
    if warnings:
        text.append(f"{len(warnings)} damaged run(s) left out: " + "; ".join(warnings) + "\n")
    if swept:
        text.append(sweep_tables(cells, min_top1))
        files["sweeps.json"] = (json.dumps(sweeps_json(cells), indent=2) + "\n").encode()
        for batch in sorted({k[2] for k, c in cells.items() if c.sweep.swept}):
            files[f"sweep_b{batch}.png"] = plot_sweep(cells, batch)
            text.append(f"![batch {batch}: top-1 versus LR factor](sweep_b{batch}.png)\n")
    if several_levels:
        files["top1_vs_batch_augmentation.png"] = plot_top1_vs_batch_by_augmentation(best)
        text.append(augmentation_tables(best))
        text.append("![top-1 versus batch size by augmentation level](top1_vs_batch_augmentation.png)\n")
    text.append("\n![top-1 versus batch size](top1_vs_batch.png)\n")
    if epoch_png is not None:
        text.append("\n![top-1 versus epoch](top1_vs_epoch.png)\n")
    files["report.md"] = "\n".join(text).encode()
    return Report(rows, files, warnings)


def write_report(directory: str, out: str = "", merge: list[str] | tuple[str, ...] = (),
                 strict: bool = False, min_top1: float | None = None) -> Path:
    """Compute the report of a run or study directory (:func:`build_report`), then write each of
    its files atomically into ``out`` (default: the directory itself); returns report.md's path.
    Damaged runs left out are printed as one warning line each on stderr."""
    import sys

    report = build_report(directory, merge, strict, min_top1=min_top1)
    for warning in report.warnings:
        print(f"largebatch: warning: {warning}", file=sys.stderr)
    out_path = Path(out) if out else Path(directory)
    write_outputs(out_path, report.files, Path(directory))
    return out_path / "report.md"
