"""gloo all-reduce between 2 local processes: time, algorithm and bus bandwidth per message size.

The sizes bracket the planner's cases: 1 and 4 MB (small models, buckets), 25.6 MB (a DDP-sized
bucket, and ResNet-50's FP16 gradients halved) and 100 MB (ResNet-50's FP32 gradients). Bandwidths
are of the median time. The 'model' column is the ring alpha-beta fit of the fastest repeat of
each size (largebatch.benchmark.fit_alpha_beta), and 'min/model' the ratio of that fastest time to
it: how well two numbers describe this link. Prints a table and writes JSON.

    PYTHONPATH=src python benchmarks/allreduce.py [--repeats 10] [--output benchmarks/results/allreduce.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from largebatch.benchmark import fit_alpha_beta, measure_allreduce  # noqa: E402

SIZES_MB = (1.0, 4.0, 25.6, 100.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "allreduce.json"))
    args = parser.parse_args()

    import torch
    processes = 2
    sizes = [int(mb * 1e6) for mb in SIZES_MB]
    rows = measure_allreduce(sizes, processes=processes, repeats=args.repeats, warmup=2, threads=args.threads)
    # Fit the fastest repeat of each size (least disturbed by other processes), as the calibration does.
    bandwidth, latency = fit_alpha_beta([r["bytes"] for r in rows], [r["min_s"] for r in rows], processes)
    print(f"gloo all-reduce, {processes} processes on this machine ({platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}), median of {args.repeats}")
    print(f"{'size MB':>8} {'median ms':>9} {'min..max ms':>15} {'algbw GB/s':>10} {'busbw GB/s':>10} "
          f"{'model ms':>9} {'min/model':>9}")
    for row in rows:
        model = 2 * (processes - 1) / processes * row["bytes"] / bandwidth + 2 * (processes - 1) * latency
        row["model_s"] = model
        print(f"{row['bytes'] / 1e6:>8.1f} {row['median_s'] * 1e3:>9.2f} "
              f"{row['min_s'] * 1e3:>7.2f}..{row['max_s'] * 1e3:<7.2f} {row['algorithm_bandwidth'] / 1e9:>10.2f} "
              f"{row['bus_bandwidth'] / 1e9:>10.2f} {model * 1e3:>9.2f} {row['min_s'] / model:>9.2f}")
    print(f"fit: bandwidth {bandwidth / 1e9:.2f} GB/s, latency {latency * 1e6:.1f} us per step")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"processes": processes, "backend": "gloo", "repeats": args.repeats,
                                  "threads": args.threads, "torch": torch.__version__,
                                  "machine": platform.platform(), "fit_bandwidth": bandwidth,
                                  "fit_latency": latency, "rows": rows}, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
