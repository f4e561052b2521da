"""Plain model weights out of a run: ``largebatch export RUN_DIR --out FILE``.

The file is the model's ``state_dict`` alone (no optimizer, no pickled objects), with the key
names of the model's own module tree, which for the ResNets are torchvision's: it loads with
``torch.load(FILE, weights_only=True)`` into our models and into torchvision's ResNets. A
``.safetensors`` name writes the safetensors format instead (optional dependency). The class
map (class name -> output index) is written beside it as ``FILE.classes.json``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from largebatch import checkpoint
from largebatch.errors import CheckpointError, ConfigError


def export(run_dir: str, out: str, best: bool = False, checkpoint_file: str = "") -> list[Path]:
    """Write the weights of ``run_dir``'s newest valid checkpoint (``best``: its best by test
    top-1; or ``checkpoint_file``) to ``out``; returns the files written."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"{run_dir}: not a directory")
    if best and checkpoint_file:
        raise ConfigError("give --best or --checkpoint, not both")
    if checkpoint_file:
        source, state = Path(checkpoint_file), checkpoint.load(Path(checkpoint_file))
    elif best:
        source = run / "checkpoints" / checkpoint.BEST_NAME
        if not source.is_file():
            raise CheckpointError(f"{source}: no best checkpoint (the run has not evaluated yet, or predates best.pt); "
                                  "export without --best")
        state = checkpoint.load(source)
    else:
        found = checkpoint.load_latest(run / "checkpoints")
        if found is None:
            raise CheckpointError(f"{run / 'checkpoints'}: no checkpoint to export")
        source, state = found
    weights = state.get("model")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"checkpoint {source} holds no model weights")
    weights = {key: value.detach().to("cpu").contiguous() for key, value in weights.items()}
    target = Path(out)
    if target.suffix == ".safetensors":
        try:
            from safetensors.torch import save as save_safetensors
        except ImportError:
            raise ConfigError("--out *.safetensors needs the safetensors package: pip install safetensors "
                              "(or write a .pt file)") from None
        data = save_safetensors(weights)
    else:
        buffer = io.BytesIO()
        torch.save(weights, buffer)
        data = buffer.getvalue()
    target.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_atomic(target, data)
    classes_file = target.with_name(target.name + ".classes.json")
    classes = _class_map(run, state)
    checkpoint.write_atomic(classes_file, (json.dumps(classes, indent=2) + "\n").encode())
    return [target, classes_file]


def _class_map(run: Path, state: dict) -> dict[str, int]:
    """Class name -> index, from the checkpoint's data identity, else run.json."""
    data = state.get("data")
    if isinstance(data, dict) and isinstance(data.get("classes"), list) and data["classes"]:
        return {str(name): index for index, name in enumerate(data["classes"])}
    try:
        provenance = json.loads((run / "run.json").read_text(encoding="utf-8"))
        classes = provenance.get("classes") if isinstance(provenance, dict) else None
        if isinstance(classes, dict):
            return {str(k): int(v) for k, v in classes.items() if isinstance(v, int)}
    except (OSError, ValueError):
        pass
    return {}
