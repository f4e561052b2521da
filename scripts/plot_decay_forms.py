"""Plot the two polynomial-decay forms of a recipe's LR schedule, and print how far apart they are.

``decay_from = "start"`` (You, Gitman, Ginsburg 2017, Algorithm 1: gamma_0 (1 - t/T)^2 on the global
step) against ``decay_from = "warmup_end"`` (MLPerf: gamma_0 (1 - (t-W)/(T-W))^2), both after the
same linear warmup, with the steps and LRs that ``largebatch.derive.derive`` gives the recipe on
ImageNet-1k (1,281,167 training images). Usage:

    PYTHONPATH=src python scripts/plot_decay_forms.py [--recipe imagenet_resnet50_32k_lars]
        [--out docs/recipes_decay_forms.png] [--json docs/recipes_decay_forms.json]

Prints one table line per form (LR after warmup, LR at 25/50/75% of the run, the sum of the LR
over all steps) and the largest gap between them as a fraction of the peak; writes the PNG and,
with --json, the same numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from largebatch.config import load_config
from largebatch.derive import derive

IMAGENET_TRAIN, IMAGENET_TEST = 1_281_167, 50_000
FORMS = ("start", "warmup_end")


def schedules(recipe: str) -> dict[str, list[float]]:
    """The LR of every step under each decay form, the recipe otherwise unchanged."""
    config = load_config(recipe)
    curves = {}
    for form in FORMS:
        varied = dataclasses.replace(config, schedule=dataclasses.replace(config.schedule, decay_from=form))
        plan = derive(varied, 1, IMAGENET_TRAIN, IMAGENET_TEST, "cuda")
        curves[form] = [plan.lr_at(step) for step in range(plan.total_steps)]
    return curves


def summary(recipe: str, curves: dict[str, list[float]]) -> dict:
    config = load_config(recipe)
    plan = derive(config, 1, IMAGENET_TRAIN, IMAGENET_TEST, "cuda")
    total, warmup, peak = plan.total_steps, plan.warmup_steps, plan.peak_lr
    rows = {}
    for form, lrs in curves.items():
        rows[form] = {"lr_after_warmup": lrs[warmup],
                      **{f"lr_at_{q}pct": lrs[total * q // 100] for q in (25, 50, 75)},
                      "lr_sum": sum(lrs)}
    start, end = curves["start"], curves["warmup_end"]
    gap = max(range(total), key=lambda step: abs(end[step] - start[step]))
    return {"recipe": recipe, "peak_lr": peak, "total_steps": total, "warmup_steps": warmup,
            "forms": rows,
            "largest_gap": {"step": gap, "fraction_of_peak": (end[gap] - start[gap]) / peak},
            "lr_sum_ratio": rows["warmup_end"]["lr_sum"] / rows["start"]["lr_sum"]}


def plot(recipe: str, curves: dict[str, list[float]], facts: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    labels = {"start": "decay_from = start: γ0 (1 − t/T)²  (You et al. Alg. 1, Caffe poly)",
              "warmup_end": "decay_from = warmup_end: γ0 (1 − (t−W)/(T−W))²  (MLPerf)"}
    for form, style in zip(FORMS, ("-", "--")):
        axis.plot(range(len(curves[form])), curves[form], style, linewidth=1.6, label=labels[form])
    warmup = facts["warmup_steps"]
    axis.axvline(warmup, color="grey", linewidth=0.8, linestyle=":")
    axis.annotate(f"W = {warmup}", (warmup, facts["peak_lr"] * 0.05), fontsize=8, color="grey",
                  xytext=(4, 0), textcoords="offset points")
    gap = facts["largest_gap"]
    axis.set_title(f"{recipe}: T = {facts['total_steps']} steps, largest gap "
                   f"{100 * gap['fraction_of_peak']:.1f}% of the peak at step {gap['step']}", fontsize=9)
    axis.set_xlabel("optimizer step t")
    axis.set_ylabel("learning rate")
    axis.set_xlim(0, facts["total_steps"])
    axis.set_ylim(0, facts["peak_lr"] * 1.05)
    axis.legend(fontsize=7.5, loc="upper right")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="imagenet_resnet50_32k_lars")
    parser.add_argument("--out", type=Path, default=Path("docs/recipes_decay_forms.png"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    curves = schedules(args.recipe)
    facts = summary(args.recipe, curves)
    print(f"{args.recipe}: peak {facts['peak_lr']:g}, T = {facts['total_steps']}, W = {facts['warmup_steps']}")
    print(f"{'decay_from':<12} {'after warmup':>12} {'25%':>8} {'50%':>8} {'75%':>8} {'sum of LR':>10}")
    for form, row in facts["forms"].items():
        print(f"{form:<12} {row['lr_after_warmup']:>12.4f} {row['lr_at_25pct']:>8.4f} {row['lr_at_50pct']:>8.4f} "
              f"{row['lr_at_75pct']:>8.4f} {row['lr_sum']:>10.1f}")
    gap = facts["largest_gap"]
    print(f"sum of LR, warmup_end / start: {facts['lr_sum_ratio']:.4f}; largest gap "
          f"{100 * gap['fraction_of_peak']:.2f}% of the peak at step {gap['step']}")
    plot(args.recipe, curves, facts, args.out)
    if args.json:
        args.json.write_text(json.dumps(facts, indent=2) + "\n")
    print(f"wrote {args.out}" + (f" and {args.json}" if args.json else ""))


if __name__ == "__main__":
    main()
