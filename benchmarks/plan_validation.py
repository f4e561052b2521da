"""What each term of the planner does to its predictions of the published records.

Runs ``largebatch plan --validate``'s records under variants of the model and prints predicted /
published time for each (above 1: predicted slower), as a markdown table, and the JSON:

- ``model``: the planner as it is (rate curve, input pipeline, overlap where the paper says so);
- ``constant rate``: no rate curve (``--half-batch 0``): the rate at the device's reference batch
  at every per-processor batch, as the planner did before it had curves;
- ``no input``: no input-pipeline term (``--decoder none``);
- ``no overlap``: the all-reduce after the backward pass, whole.

    PYTHONPATH=src python benchmarks/plan_validation.py --json benchmarks/results/plan_validation.json

Pure arithmetic (no torch, no timing): the numbers are the same on every machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from largebatch.plan.records import RECORDS, TARGET_RATIO, validation_rows

VARIANTS = {"model": {}, "constant rate": {"half_batch": 0.0}, "no input": {"decoder": "none"},
            "no overlap": {"overlap": False}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default="", help="write the ratios here")
    args = parser.parse_args(argv)
    table = {name: validation_rows(**overrides) for name, overrides in VARIANTS.items()}
    print("| run | kind | per proc | " + " | ".join(VARIANTS) + " |")
    print("|---|---|---:|" + "---:|" * len(VARIANTS))
    results = []
    for i, record in enumerate(RECORDS):
        row = table["model"][i]
        ratios = {name: table[name][i]["ratio"] for name in VARIANTS}
        cells = " | ".join(f"{ratios[name]:.2f}" for name in VARIANTS)
        print(f"| {record.run} | {row['kind']} | {row['per_processor_batch']:g} | {cells} |")
        results.append({"run": record.run, "kind": row["kind"], "per_processor_batch": row["per_processor_batch"],
                        "ratios": ratios})
    for name in VARIANTS:
        rows = [r for r in table[name] if r["kind"] == "validation"]
        inside = sum(1 / TARGET_RATIO <= r["ratio"] <= TARGET_RATIO for r in rows)
        print(f"{name}: {inside} of {len(rows)} validation records within {TARGET_RATIO:g}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"variants": {k: v for k, v in VARIANTS.items()}, "records": results},
                                              indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
