"""Run one run of a study with the gradient noise scale measured (issue 14, docs/critical-batch.md).

The run is the study's own (same config, same run directory), with run.noise_scale switched on;
the study then finds it complete and skips it. Usage:

    python scripts/study_noise_run.py study_fashion_mnist lars-b1024-none-s0
"""
import dataclasses
import sys

from largebatch.study import load_study
from largebatch.train import train


def main() -> None:
    study_name, run_name = sys.argv[1], sys.argv[2]
    study = load_study(study_name)
    run = next((r for r in study.runs if r.name == run_name), None)
    if run is None:
        sys.exit(f"study_noise_run: no run {run_name} in {study_name} (runs: {', '.join(r.name for r in study.runs)})")
    config = dataclasses.replace(run.config, run=dataclasses.replace(run.config.run, noise_scale=True))
    study.out.mkdir(parents=True, exist_ok=True)
    train(config, resume="auto")


if __name__ == "__main__":
    main()
