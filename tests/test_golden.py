"""Golden test: 8 steps of fast_resnet in float64 on the tiny data give the losses the engine gave
when they were recorded (tests/golden/losses.json, by tests/golden/record.py). A change to the
engine that changes the numerics of training fails here."""

import json
import math
from pathlib import Path

import pytest

from largebatch.train import train

GOLDEN = Path(__file__).parent / "golden"


def _load_recorder():
    import importlib.util
    spec = importlib.util.spec_from_file_location("golden_record", GOLDEN / "record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECORDER = _load_recorder()
EXPECTED = json.loads((GOLDEN / "losses.json").read_text())


@pytest.mark.parametrize("name", sorted(RECORDER.CASES))
def test_losses_match_the_recorded_ones(name, tiny_data, tmp_path):
    out = tmp_path / name
    summary = train(RECORDER.golden_config(tiny_data, out, RECORDER.CASES[name]))
    losses = RECORDER.step_losses(out)
    expected = EXPECTED[name]["losses"]
    assert len(losses) == len(expected) == 8
    for step, (got, want) in enumerate(zip(losses, expected)):
        # float64 on any x86 CPU: kernels may differ in the last bits between machines
        assert math.isclose(got, want, rel_tol=1e-9), f"step {step}: {got!r} != {want!r}"
    assert summary["top1"] == EXPECTED[name]["top1"]
