"""Reports of runs and studies: a Markdown table, results.json and PNG plots (matplotlib).

``largebatch report DIR`` accepts a run directory or a study directory (any folder holding run
directories). It writes ``report.md``, ``results.json``, ``top1_vs_batch.png`` (top-1 against
batch size on a log2 axis, one line per optimizer variant, or per augmentation level) and
``top1_vs_epoch.png`` (test top-1 against epoch for every run) into DIR (or ``--out``).
"""

from __future__ import annotations

import json
import math
import statistics
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

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
            "final_train_loss": _last_train_loss(run_dir),
        })
    rows.sort(key=lambda r: (r["variant"], r["augmentation"], r["batch_size"], r["seed"], r["lr"] or 0))
    return rows


def _peak_lr(config: dict[str, Any], summary: dict[str, Any]) -> float:
    from largebatch.schedule import scaled_lr
    return scaled_lr(config["optimizer"]["lr"], summary["global_batch_size"], config["schedule"]["base_batch_size"],
                     config["schedule"]["scaling"])


def _last_train_loss(run_dir: Path) -> float | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    records = epoch_records(read_metrics(path))
    return records[-1].get("train_loss") if records else None


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| batch | optimizer | augmentation | seed | peak LR | top-1 | top-5 | epochs | steps | wall time | "
            "images/s |\n|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    def accuracy(value: float | None, row: dict[str, Any]) -> str:
        return "diverged" if row["diverged"] else f"{100 * value:.2f}%"

    lines = [f"| {r['batch_size']} | {r['variant']} | {r['augmentation']} | {r['seed']} | {r['lr']:.4g} | "
             f"{accuracy(r['top1'], r)} | {accuracy(r['top5'], r)} | {r['epochs']} | {r['steps']} | "
             f"{r['wall_s'] / 60:.1f} min | {r['images_per_s']:,.0f} |" for r in rows]
    return head + "\n".join(lines) + "\n"


def summary_by_batch(rows: list[dict[str, Any]], key: str = "variant") -> dict[str, dict[int, list[float]]]:
    """{variant or augmentation: {batch: [top1 of each seed]}}"""
    grouped: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if not r["diverged"]:
            grouped[r[key]][r["batch_size"]].append(r["top1"])
    return grouped


def _mean_spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def plot_top1_vs_batch(rows: list[dict[str, Any]], path: Path, key: str = "variant", title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, by_batch in sorted(summary_by_batch(rows, key).items()):
        batches = sorted(by_batch)
        stats = [_mean_spread(by_batch[b]) for b in batches]
        means = [100 * m for m, _ in stats]
        spreads = [100 * s for _, s in stats]
        ax.errorbar(batches, means, yerr=spreads if any(spreads) else None, marker="o", capsize=3, label=label)
    diverged = [r for r in rows if r["diverged"]]
    if diverged:
        bottom = ax.get_ylim()[0]
        ax.scatter([r["batch_size"] for r in diverged], [bottom] * len(diverged), marker="x", color="red",
                   s=60, zorder=5, label="diverged", clip_on=False)
    ax.set_xscale("log", base=2)
    all_batches = sorted({r["batch_size"] for r in rows})
    ax.set_xticks(all_batches)
    ax.set_xticklabels([str(b) for b in all_batches])
    ax.set_xlabel("global batch size (images per step, log2 scale)")
    ax.set_ylabel("test top-1 accuracy (%)")
    epochs = sorted({r["epochs"] for r in rows})
    ax.set_title(title or f"Top-1 versus batch size ({', '.join(map(str, epochs))} epochs)")
    ax.grid(True, alpha=0.3)
    ax.legend(title=key)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_top1_vs_epoch(directory: Path, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = sorted({r["variant"] for r in rows})
    fig, axes = plt.subplots(1, len(variants), figsize=(5.5 * len(variants), 4.2), squeeze=False, sharey=True)
    colormap = plt.get_cmap("viridis")
    batches = sorted({r["batch_size"] for r in rows})
    for ax, variant in zip(axes[0], variants):
        for r in rows:
            if r["variant"] != variant:
                continue
            records = [m for m in epoch_records(read_metrics(Path(directory) / r["run"] / "metrics.jsonl"))
                       if m.get("top1") is not None]
            shade = batches.index(r["batch_size"]) / max(1, len(batches) - 1)
            label = f"B={r['batch_size']}" + (f" {r['augmentation']}" if len({x['augmentation'] for x in rows}) > 1 else "")
            ax.plot([m["epoch"] for m in records], [100 * m["top1"] for m in records], color=colormap(0.9 * shade),
                    label=label if r["seed"] == min(x["seed"] for x in rows) else None)
        ax.set_title(variant)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("test top-1 accuracy (%)")
    low = min((100 * r["top1"] for r in rows if not r["diverged"]), default=0)
    axes[0][0].set_ylim(max(0.0, math.floor(low / 5) * 5 - 10), 100)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(directory: str, out: str = "") -> Path:
    """Write report.md, results.json and the plots for a run or study directory."""
    directory_path = Path(directory)
    rows = collect_runs(directory_path)
    if not rows:
        raise UserError(f"{directory}: no complete runs (run directories with summary.json) found")
    out_path = Path(out) if out else directory_path
    out_path.mkdir(parents=True, exist_ok=True)
    (out_path / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot_top1_vs_batch(rows, out_path / "top1_vs_batch.png")
    plot_top1_vs_epoch(directory_path, rows, out_path / "top1_vs_epoch.png")
    text = [f"# Report: {directory_path}\n", markdown_table(rows)]
    text.append("\n![top-1 versus batch size](top1_vs_batch.png)\n\n![top-1 versus epoch](top1_vs_epoch.png)\n")
    (out_path / "report.md").write_text("\n".join(text))
    return out_path / "report.md"
