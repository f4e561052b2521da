"""The Python entry point: train your own model on your own data with largebatch's engine."""

from __future__ import annotations

from typing import Any

from torch import nn

from largebatch import config as cfg
from largebatch.data.custom import MapDataset
from largebatch.errors import ConfigError


def overrides_from_names(values: dict[str, Any]) -> dict[str, Any]:
    """``{"batch_size": 512, "optimizer": "lars"}`` (flag names with underscores) ->
    ``{"run.batch_size": 512, "optimizer.name": "lars"}``, each value validated by name."""
    by_name = {flag.replace("-", "_"): (section, f) for flag, (section, f) in cfg.all_flags().items()}
    result = {}
    for name, value in values.items():
        if name not in by_name:
            raise ConfigError(f"unknown setting {name!r} (the recipe keys by their flag names with underscores, e.g. "
                              "batch_size, epochs, lr, optimizer, warmup_epochs, out)")
        section, f = by_name[name]
        result[f"{section}.{f.name}"] = cfg.check_value(name, f, value)
    return result


def fit(model: nn.Module, train_set: Any, test_set: Any, recipe: str = cfg.DEFAULT_RECIPE, resume: str = "",
        **overrides: Any) -> dict[str, Any]:
    """Train ``model`` on ``train_set`` and evaluate on ``test_set`` with the engine of
    ``largebatch train``: the same derivation, step, checkpoints, resume, torchrun and outputs.

    ``train_set`` and ``test_set`` are map-style data sets: ``len()`` and ``[i] -> (image, label)``
    with uint8 ``(C, H, W)`` image tensors (also accepted: float tensors in [0, 1], uint8 numpy
    ``(H, W[, C])`` arrays, PIL images; see :mod:`largebatch.data.custom`). ``recipe`` gives the
    defaults (a built-in name or a .toml path); ``overrides`` are recipe keys by their flag names
    with underscores (``batch_size=512, epochs=1, out="runs/mine", optimizer="lars"``).
    ``resume="auto"`` continues the run in ``out`` from its newest checkpoint. Returns the
    summary that is also written to ``summary.json``.

    Example::

        summary = largebatch.fit(MyCNN(), train_set, test_set, batch_size=1024, epochs=2, out="runs/mine")
    """
    from largebatch.train import train

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    values = overrides_from_names(overrides)
    values["data.dataset"] = "custom"
    values["model.name"] = type(model).__name__
    config = cfg.build_config(cfg.load_recipe(recipe), values)
    return train(config, resume, model=model, train_set=MapDataset(train_set, "train_set"),
                 test_set=MapDataset(test_set, "test_set"))
