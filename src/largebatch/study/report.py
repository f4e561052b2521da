"""Reports of runs and studies: a Markdown table, results.json and PNG plots (matplotlib).

``largebatch report DIR`` accepts a run directory or a study directory (any folder holding run
directories). It writes ``report.md``, ``results.json``, ``top1_vs_batch.png`` (top-1 against
batch size on a log2 axis, one line per optimizer variant, or per variant and augmentation
level) and ``top1_vs_epoch.png`` (test top-1 against epoch for every run) into DIR (or
``--out``). When the runs use several augmentation levels, the report adds the gain of each
level over ``none`` per batch size with the spread over seeds (:func:`augmentation_tables`) and
``top1_vs_batch_augmentation.png`` (one line per level, error bars over seeds).

``--merge FILE`` adds the rows of an earlier report's ``results.json`` whose run directories are
not in DIR (runs done on another machine, or in a run folder since deleted), so one report can
cover a study that ran in several places. A run present in DIR replaces the merged row of the
same name: the run directory is the primary record.
"""

from __future__ import annotations

import json
import math
import statistics
import tomllib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from largebatch.config import AUGMENTATIONS
from largebatch.errors import UserError
from largebatch.progress import epoch_records, read_metrics


def find_run_dirs(directory: Path) -> list[Path]:
    """Run directories (config.toml + summary.json) at or below ``directory``."""
    directory = Path(directory)
    if (directory / "summary.json").is_file():
        return [directory]
    return sorted(p.parent for p in directory.rglob("summary.json") if (p.parent / "config.toml").is_file())


def collect_runs(directory: Path) -> list[dict[str, Any]]:
    """One row per complete run: the study's axes, the results, and the run directory."""
    rows = []
    for run_dir in find_run_dirs(directory):
        summary = json.loads((run_dir / "summary.json").read_text())
        config = tomllib.loads((run_dir / "config.toml").read_text())
        metrics = run_dir / "metrics.jsonl"
        records = epoch_records(read_metrics(metrics)) if metrics.is_file() else []
        variant = run_dir.name.split("-b")[0] if "-b" in run_dir.name else config["optimizer"]["name"]
        rows.append({
            "run": str(run_dir.relative_to(directory)) if run_dir != Path(directory) else run_dir.name,
            "variant": variant,
            "batch_size": summary["global_batch_size"],
            "optimizer": config["optimizer"]["name"],
            "augmentation": config["data"].get("augmentation", "none"),
            "seed": config["run"]["seed"],
            "lr": summary.get("peak_lr") if summary.get("peak_lr") is not None else _peak_lr(config, summary),
            "diverged": bool(summary.get("diverged", False)),
            "top1": summary["top1"],
            "top5": summary["top5"],
            "best_top1": summary["best_top1"],
            "epochs": summary["epochs"],
            "steps": summary["steps"],
            "wall_s": summary.get("wall_time_s", 0.0),
            "train_s": summary["train_time_s"],
            "images_per_s": summary["images_per_s"],
            "final_train_loss": _last_train_loss(records),
            # Kept in results.json so that a report merged from it (--merge) can still plot epochs.
            "top1_by_epoch": [[m["epoch"], m["top1"]] for m in records if m.get("top1") is not None],
        })
    rows.sort(key=lambda r: (r["variant"], r["augmentation"], r["batch_size"], r["seed"], r["lr"] or 0))
    return rows


def _peak_lr(config: dict[str, Any], summary: dict[str, Any]) -> float:
    from largebatch.schedule import scaled_lr
    return scaled_lr(config["optimizer"]["lr"], summary["global_batch_size"], config["schedule"]["base_batch_size"],
                     config["schedule"]["scaling"])


def _last_train_loss(records: list[dict[str, Any]]) -> float | None:
    return records[-1].get("train_loss") if records else None


# What a merged row must hold: the axes of the study and the result (issue 13's results.json).
RESULT_KEYS = ("run", "variant", "batch_size", "optimizer", "augmentation", "seed", "top1", "epochs", "wall_s")


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """The rows of an earlier report's results.json, checked for the keys a report needs."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such results file; give the results.json written by `largebatch report`")
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not JSON ({error.msg} at line {error.lineno}); give a results.json written by "
                        "`largebatch report`")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"{path}: expected a JSON list of run objects, as `largebatch report` writes in results.json")
    for index, r in enumerate(rows):
        missing = [k for k in RESULT_KEYS if k not in r]
        if missing:
            raise UserError(f"{path}: run {index} ({r.get('run', 'no name')}) lacks {', '.join(missing)}; "
                            "results.json rows need " + ", ".join(RESULT_KEYS))
    return rows


def merge_results(rows: list[dict[str, Any]], merged: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """``rows`` plus the rows of ``merged`` whose run name is not among them, marked with ``source``."""
    present = {r["run"] for r in rows}
    added = [{**r, "source": r.get("source") or source} for r in merged if r["run"] not in present]
    out = rows + added
    out.sort(key=lambda r: (r["variant"], r["augmentation"], r["batch_size"], r["seed"], r.get("lr") or 0))
    return out


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| batch | optimizer | augmentation | seed | peak LR | top-1 | top-5 | epochs | steps | wall time | "
            "images/s |\n|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    def accuracy(value: float | None, row: dict[str, Any]) -> str:
        return "diverged" if row.get("diverged") else f"{100 * value:.2f}%"

    lines = [f"| {r['batch_size']} | {r['variant']} | {r['augmentation']} | {r['seed']} | {r['lr']:.4g} | "
             f"{accuracy(r['top1'], r)} | {accuracy(r['top5'], r)} | {r['epochs']} | {r['steps']} | "
             f"{r['wall_s'] / 60:.1f} min | {r['images_per_s']:,.0f} |" for r in rows]
    return head + "\n".join(lines) + "\n"


def summary_by_batch(rows: list[dict[str, Any]], key: str | tuple[str, ...] = "variant"
                     ) -> dict[str, dict[int, list[float]]]:
    """{variant or augmentation (or several keys joined by " / "): {batch: [top1 of each seed]}}"""
    grouped: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if not r.get("diverged"):
            grouped[_group_label(r, key)][r["batch_size"]].append(r["top1"])
    return grouped


def _group_label(row: dict[str, Any], key: str | tuple[str, ...]) -> str:
    """The row's value of ``key`` (several keys joined by " / "): a line of the batch plot."""
    return " / ".join(str(row[k]) for k in ((key,) if isinstance(key, str) else key))


def _mean_spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def plot_top1_vs_batch(rows: list[dict[str, Any]], path: Path, key: str | tuple[str, ...] = "variant",
                       title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {}
    for label, by_batch in sorted(summary_by_batch(rows, key).items()):
        batches = sorted(by_batch)
        stats = [_mean_spread(by_batch[b]) for b in batches]
        means = [100 * m for m, _ in stats]
        spreads = [100 * s for _, s in stats]
        lines = ax.errorbar(batches, means, yerr=spreads if any(spreads) else None, marker="o", capsize=3,
                            label=label)
        colors[label] = lines[0].get_color()
    # Diverged runs have no accuracy: a cross on the bottom edge, in their variant's colour.
    diverged_by_label: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        if r.get("diverged"):
            diverged_by_label[_group_label(r, key)].append(r["batch_size"])
    bottom = ax.get_ylim()[0]
    for label, batches in sorted(diverged_by_label.items()):
        ax.scatter(batches, [bottom] * len(batches), marker="x", s=70, zorder=5, clip_on=False,
                   color=colors.get(label, "red"), label=f"{label}: diverged (no accuracy)")
    ax.set_xscale("log", base=2)
    all_batches = sorted({r["batch_size"] for r in rows})
    ax.set_xticks(all_batches)
    ax.set_xticklabels([str(b) for b in all_batches])
    ax.set_xlabel("global batch size (images per step, log2 scale)")
    ax.set_ylabel("test top-1 accuracy (%)")
    epochs = sorted({r["epochs"] for r in rows})
    ax.set_title(title or f"Top-1 versus batch size ({', '.join(map(str, epochs))} epochs)")
    ax.grid(True, alpha=0.3)
    ax.legend(title=key if isinstance(key, str) else " / ".join(key))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
            cells[(r["variant"], r["batch_size"], r["augmentation"])].append(r)
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


def plot_top1_vs_batch_by_augmentation(rows: list[dict[str, Any]], path: Path) -> None:
    """Top-1 against batch size, one line per augmentation level (error bars: std over seeds),
    one panel per variant."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def plot_top1_vs_epoch(rows: list[dict[str, Any]], path: Path) -> None:
    """Test top-1 against epoch for every run with a per-epoch record (``top1_by_epoch``): one
    panel per variant, or per variant and augmentation level when the runs use several levels
    (one colour per batch size)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("top1_by_epoch")]
    if not rows:
        return
    several_levels = len({r["augmentation"] for r in rows}) > 1
    levels = augmentation_levels(rows) if several_levels else [""]
    panels = [(variant, level) for variant in sorted({r["variant"] for r in rows}) for level in levels
              if any(r["variant"] == variant and (not level or r["augmentation"] == level) for r in rows)]
    columns = min(len(panels), 4)
    lines = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.6 * columns if columns > 1 else 6, 3.9 * lines),
                             squeeze=False, sharey=True)
    colormap = plt.get_cmap("viridis")
    batches = sorted({r["batch_size"] for r in rows})
    for ax, (variant, level) in zip(axes.flat, panels):
        mine = [r for r in rows if r["variant"] == variant and (not several_levels or r["augmentation"] == level)]
        for r, label in zip(mine, epoch_line_labels(mine)):
            epochs, top1 = zip(*r["top1_by_epoch"])
            shade = batches.index(r["batch_size"]) / max(1, len(batches) - 1)
            ax.plot(epochs, [100 * t for t in top1], color=colormap(0.9 * shade), label=label)
        ax.set_title(f"{variant}, augmentation {level}" if several_levels else variant)
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(directory: str, out: str = "", merge: list[str] | tuple[str, ...] = ()) -> Path:
    """Write report.md, results.json and the plots for a run or study directory, plus the rows
    of earlier results.json files (``merge``) for runs whose directories are not there."""
    directory_path = Path(directory)
    rows = collect_runs(directory_path)
    # Read every merged file before writing anything: --out may name the folder of one of them.
    for source in merge:
        rows = merge_results(rows, load_results(source), str(source))
    if not rows:
        raise UserError(f"{directory}: no complete runs (run directories with summary.json) found")
    out_path = Path(out) if out else directory_path
    out_path.mkdir(parents=True, exist_ok=True)
    (out_path / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    several_levels = len(augmentation_levels(rows)) > 1
    plot_top1_vs_batch(rows, out_path / "top1_vs_batch.png",
                       key=("variant", "augmentation") if several_levels else "variant")
    plot_top1_vs_epoch(rows, out_path / "top1_vs_epoch.png")
    text = [f"# Report: {directory_path}\n", markdown_table(rows)]
    merged = [r for r in rows if r.get("source")]
    if merged:
        sources = sorted({r["source"] for r in merged})
        without_epochs = sum(1 for r in merged if not r.get("top1_by_epoch"))
        text.append(f"{len(merged)} of the {len(rows)} runs come from {', '.join(sources)} (their run directories "
                    f"are not in {directory_path})" + (f"; {without_epochs} of them have no per-epoch record and "
                                                       "are not in the epoch plot" if without_epochs else "") + ".\n")
    if several_levels:
        plot_top1_vs_batch_by_augmentation(rows, out_path / "top1_vs_batch_augmentation.png")
        text.append(augmentation_tables(rows))
        text.append("![top-1 versus batch size by augmentation level](top1_vs_batch_augmentation.png)\n")
    text.append("\n![top-1 versus batch size](top1_vs_batch.png)\n\n![top-1 versus epoch](top1_vs_epoch.png)\n")
    (out_path / "report.md").write_text("\n".join(text))
    return out_path / "report.md"
