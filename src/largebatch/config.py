"""Typed run configuration: one dataclass per concern, loaded from TOML recipes.

A recipe is a TOML file with the sections ``[model]``, ``[data]``, ``[optimizer]``,
``[schedule]`` and ``[run]`` (any may be absent) and two optional top-level keys:
``description`` and ``extends`` (the name or path of a recipe this one modifies).
Precedence: dataclass defaults < the ``extends`` chain < the recipe < command-line flags.

Every field carries its help text, allowed values and range in ``metadata``; the command line
is generated from these fields (``--batch-size``, ``--optimizer`` ...), so a field's doc is its
``--help`` line, and every value, from a file or a flag, passes through the same validation.
Unknown keys and bad values raise :class:`ConfigError` with a one-line message naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from largebatch.errors import ConfigError

RECIPE_DIR = Path(__file__).parent / "recipes"

# The vocabulary of a recipe: every choice list is defined here, once, and the modules that act on
# a choice (optim, schedule, precision, data) import it from here.
DEFAULT_RECIPE = "fashion_mnist"

DATASETS = ("fashion-mnist", "mnist", "imagenet", "synthetic", "custom")  # custom: largebatch.fit(...)
OPTIMIZERS = ("lars", "larc", "lamb", "sgd")
AUGMENTATIONS = ("none", "minimal", "extended", "strong")
DECODERS = ("auto", "cpu", "cuda", "dali")
DECAYS = ("poly", "cosine", "step", "constant")
SCALING_RULES = ("none", "linear", "sqrt")
EXCLUSION_RULES = ("none", "1d", "bn_bias", "bn")
DECAY_ORIGINS = ("warmup_end", "start")
ZERO_NORM_RULES = ("rate_one", "gradient_only")
TRUST_DENOMINATORS = ("sum_of_norms", "norm_of_sum")
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "gloo", "nccl")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "fp64")


def option(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None,
           max: float | None = None, min_exclusive: bool = False, flag: str | None = None) -> Any:
    """A dataclass field with the metadata that drives validation and the command line."""
    meta = {"help": help, "choices": choices, "min": min, "max": max,
            "min_exclusive": min_exclusive, "flag": flag}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    name: str = option("fast_resnet", "model architecture (see `largebatch models`)", flag="model")
    zero_init_residual: bool = option(
        False, "start each residual block as identity: last BN gamma = 0 (Goyal et al. 2017)")


@dataclass
class DataConfig:
    dataset: str = option("fashion-mnist", "data set", choices=DATASETS)
    data_dir: str = option(
        "", "folder holding the data set (empty: $LARGEBATCH_DATA/<dataset>, then the system's copy)")
    image_size: int = option(0, "training image side in pixels (0: the data set's own, 224 for ImageNet)",
                             min=0, max=8192)
    num_classes: int = option(0, "classes (0: from the data set)", min=0, max=10_000_000)
    augmentation: str = option("none", "augmentation level (docs/augmentation.md)", choices=AUGMENTATIONS)
    workers: int = option(-1, "loader processes per training process (-1: from the CPU count)", min=-1, max=1024)
    prefetch: int = option(-1, "optimizer steps copied to the GPU ahead of the one training, on a side CUDA "
                           "stream (-1: 1 on CUDA; on CPU there is nothing to copy)", min=-1, max=64)
    train_subset: int = option(0, "use only this many training images, a fixed random subset (0: all)",
                               min=0)
    synthetic_images: int = option(12800, "images per epoch of the synthetic data set", min=1, max=2**31)
    color_jitter: float = option(0.4, "image files, extended/strong augmentation: brightness, contrast and "
                                 "saturation factors drawn from U(1-J, 1+J) (0: off)", min=0.0, max=1.0)
    lighting: float = option(0.1, "image files, extended/strong augmentation: std of AlexNet PCA lighting "
                             "noise (Krizhevsky et al. 2012: 0.1; 0: off)", min=0.0)
    label_smoothing: float = option(
        -1.0, "label smoothing epsilon of the training loss, target (1-eps)*y + eps/classes (Szegedy et al. 2016); "
        "-1: the augmentation level's own (0.1 at strong, else 0)", min=-1.0, max=1.0)
    fast_decode: bool = option(True, "image files: decode JPEGs at 1/2, 1/4 or 1/8 size in the DCT domain when "
                               "the crop still has at least image_size pixels per side")
    decode: str = option("auto", "image files, training: where JPEGs are decoded: cpu (loader workers), cuda "
                         "(batched nvJPEG through torchvision), dali (NVIDIA DALI), auto (cuda, else dali, else cpu)",
                         choices=DECODERS)
    cache_dir: str = option("", "prepared shards: node-local folder each shard is copied to (checked against its "
                            "SHA-256) on first use (empty: read them where they are)")
    resolution_start: int = option(0, "progressive resizing: training side at the start, rising to image_size "
                                   "(0: off; FFCV ResNet-50: 160 -> 192)", min=0)
    resolution_ramp: list = option([], "progressive resizing: first and last epoch of the ramp from "
                                   "resolution_start to image_size (FFCV ResNet-50, 88 epochs: 65,76)")
    eval_image_size: int = option(0, "evaluation image side (0: image_size; FFCV ResNet-50: 256 after training "
                                  "at 160-192)", min=0)


@dataclass
class OptimizerConfig:
    """The optimizer and its switches (docs/optimizers.md gives each switch's formula and the peer
    that uses it). The defaults are the published LARS (You, Gitman, Ginsburg 2017, Algorithm 1)."""

    name: str = option("lars", "optimizer (larc: lars with LARC clipping of the local rate)", choices=OPTIMIZERS,
                       flag="optimizer")
    lr: float = option(1.0, "peak learning rate; with a scaling rule, the rate at schedule.base_batch_size",
                       min=0.0, min_exclusive=True)
    momentum: float = option(0.9, "momentum m (SGD, LARS, LARC); LAMB's first-moment decay beta1", min=0.0,
                             max=1.0)
    weight_decay: float = option(5e-4, "L2 weight decay beta", min=0.0)
    nesterov: bool = option(False, "Nesterov momentum (SGD, LARS, LARC)")
    trust_coefficient: float = option(0.001, "LARS trust coefficient eta (You et al. 2017: 0.001)", min=0.0,
                                      min_exclusive=True)
    eps: float = option(0.0, "LARS/LARC: added to the trust-ratio denominator (paper: 0; timm, apex: 1e-8)",
                        min=0.0)
    trust_denominator: str = option(
        "sum_of_norms", "LARS trust-ratio denominator: sum_of_norms ||g|| + beta*||w|| (paper), or "
        "norm_of_sum ||g + beta*w|| (Facebook's self-supervised code)", choices=TRUST_DENOMINATORS)
    lr_in_velocity: bool = option(
        True, "LARS: the global LR multiplies the update inside the momentum buffer (paper, TF, MLPerf, optax); "
        "off: it multiplies the buffer (torch SGD style, timm, apex)")
    trust_ratio_min: float = option(0.0, "lower bound on every trust ratio (LARS, LARC, LAMB; 0: none)", min=0.0)
    trust_ratio_max: float = option(0.0, "upper bound on every trust ratio (LARS, LARC, LAMB; 0: none)", min=0.0)
    skip_adaptation: str = option(
        "none", "tensors that get no trust ratio (plain rate): none (paper), 1d (rank <= 1), bn_bias "
        "(normalization layers and biases), bn (normalization layers)", choices=EXCLUSION_RULES)
    skip_adaptation_lr_scale: float = option(1.0, "LR multiplier for the tensors skip_adaptation selects", min=0.0)
    skip_weight_decay: str = option(
        "none", "tensors that get no weight decay: none (paper), 1d (rank <= 1), bn_bias (normalization "
        "layers and biases), bn (normalization layers: Goyal et al. 2017 sec. 5.1)", choices=EXCLUSION_RULES)
    skip_weight_decay_lr_scale: float = option(1.0, "LR multiplier for the tensors skip_weight_decay selects",
                                               min=0.0)
    zero_norm: str = option(
        "rate_one", "LARS/LARC, a tensor whose weight or gradient norm is 0: rate_one (local rate 1, bounded, capped "
        "by LARC and weight-decayed like any other: the paper's Caffe code, timm) or gradient_only (a plain step on "
        "the gradient at the global LR, no cap, no weight decay: NVIDIA apex LARC)", choices=ZERO_NORM_RULES)
    lamb_beta2: float = option(0.999, "LAMB second-moment decay beta2 (beta1 is momentum)", min=0.0, max=1.0)
    lamb_eps: float = option(1e-6, "LAMB: added to sqrt(v_hat) (You et al. 2019: 1e-6)", min=0.0,
                             min_exclusive=True)


@dataclass
class ScheduleConfig:
    warmup_epochs: float = option(2.0, "linear warmup length in epochs (Goyal et al. 2017)", min=0.0, max=1_000_000)
    decay: str = option("poly", "decay after warmup", choices=DECAYS)
    power: float = option(2.0, "polynomial decay power (You et al. 2017: 2)", min=0.0)
    milestones: list = option([], "epochs at which step decay multiplies the LR by step_gamma")
    step_gamma: float = option(0.1, "step decay factor", min=0.0)
    scaling: str = option("none", "LR scaling rule from base_batch_size to the global batch",
                          choices=SCALING_RULES)
    base_batch_size: int = option(256, "batch size at which optimizer.lr is stated (scaling rules)", min=1, max=2**31)
    warmup_start_lr: float = option(
        0.0, "LR of the first warmup step, rising by equal steps to the peak at the warmup's end (Goyal et al. "
        "2017 sec. 2.2: 0.1 -> 3.2); 0: the first step runs at peak/warmup_steps", min=0.0)
    decay_from: str = option(
        "warmup_end", "where the decay's progress is counted from: warmup_end, (t-W)/(T-W) (MLPerf), or start, "
        "t/T, so the LR steps down at the warmup's end (You et al. 2017 Algorithm 1, Caffe's poly)",
        choices=DECAY_ORIGINS)


@dataclass
class RunConfig:
    epochs: int = option(5, "training epochs", min=1, max=1_000_000)
    batch_size: int = option(4096, "GLOBAL batch size (all processes and accumulation steps together); at most the "
                             "training set's size", min=1, max=2**31)
    micro_batch_size: int = option(
        0, "images per forward/backward pass per process; accumulation covers the rest (0: automatic)", min=0,
        max=2**31)
    seed: int = option(0, "random seed (data order, initialisation, augmentation)", min=0, max=2**32 - 1)
    out: str = option("", "run directory (empty: runs/<recipe>-b<batch>-<optimizer>-s<seed>)")
    eval_every: int = option(1, "evaluate on the test set every N epochs (and always at the end)", min=1,
                             max=1_000_000)
    checkpoint_every: int = option(1, "save a checkpoint every N epochs (and at the end); the best by test top-1 is "
                                   "kept too, as checkpoints/best.pt", min=1, max=1_000_000)
    checkpoint_every_steps: int = option(0, "also save a checkpoint every N optimizer steps (0: off)", min=0)
    keep_checkpoints: int = option(2, "how many recent checkpoints to keep (besides the best)", min=1, max=1000)
    log_every: int = option(20, "log boundary every N steps (and at epoch ends): the one host read that logs the mean "
                                "loss (a step record in metrics.jsonl, a progress line), checks for divergence and "
                                "acts on SIGTERM/SIGINT (0: at epoch ends only)", min=0)
    tensorboard: bool = option(False, "also write TensorBoard scalars to <run>/tensorboard (needs the tensorboard "
                               "package); metrics.jsonl stays the record")
    device: str = option("auto", "where to train", choices=DEVICES)
    backend: str = option("auto", "torch.distributed backend (auto: nccl on CUDA, gloo on CPU)",
                          choices=BACKENDS)
    precision: str = option("auto", "numeric precision: autocast bf16/fp16 for the forward pass (auto: bf16 on "
                            "CUDA, fp32 on CPU); fp64 for numerical checks",
                            choices=PRECISIONS)
    compile: bool = option(False, "torch.compile the model for training (slow to start; faster steps on GPU)")
    sync_batchnorm: bool = option(False, "BatchNorm statistics over all processes' micro-batches (SyncBatchNorm; "
                                  "CUDA only). Default: per micro-batch, as in the paper")
    channels_last: bool = option(True, "channels_last memory format for model and input (faster for "
                                 "convolutions on CPU and GPU)")
    threads: int = option(0, "CPU threads per process (0: $OMP_NUM_THREADS, else the cores divided among local processes)", min=0, max=4096)
    target_top1: float = option(0.0, "record when test top-1 first reaches this (0: off)", min=0.0, max=1.0)
    stop_at_target: bool = option(False, "stop the run once target_top1 is reached")
    noise_scale: bool = option(False, "measure the gradient noise scale B_simple (McCandlish et al. 2018) from the "
                               "micro-batch (one process) or per-process gradients; logged per epoch as "
                               "grad_noise_scale (docs/critical-batch.md)")
    noise_scale_every: int = option(1, "measure the noise scale every N optimizer steps", min=1, max=1_000_000)
    divergence_loss: float = option(1000.0, "stop the run as diverged when a step's mean training loss exceeds "
                                    "this, finite or not (a uniform guess costs ln(classes): 2.3 for 10 classes, "
                                    "6.9 for 1000); 0: stop only on NaN or infinity", min=0.0)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)
    recipe: str = DEFAULT_RECIPE
    description: str = ""


SECTIONS = ("model", "data", "optimizer", "schedule", "run")


def section_fields(section: str) -> list[dataclasses.Field]:
    return list(dataclasses.fields(Config.__dataclass_fields__[section].default_factory))


def flag_name(section: str, f: dataclasses.Field) -> str:
    """The command-line flag of a config field, without dashes: --batch-size, --optimizer."""
    return (f.metadata.get("flag") or f.name).replace("_", "-")


def all_flags() -> dict[str, tuple[str, dataclasses.Field]]:
    """flag -> (section, field) for every config field."""
    flags = {}
    for section in SECTIONS:
        for f in section_fields(section):
            name = flag_name(section, f)
            assert name not in flags, f"duplicate flag --{name}"
            flags[name] = (section, f)
    return flags


# ---------------------------------------------------------------------------------------------
# Validation: one function, used for recipe values and command-line values alike.

def _describe(f: dataclasses.Field) -> str:
    m = f.metadata
    if m.get("choices"):
        return "one of " + ", ".join(m["choices"])
    kind = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
            "list": "a list of numbers"}[f.type]
    lo, hi = m.get("min"), m.get("max")
    if lo is not None and hi is not None:
        return f"{kind} in [{lo}, {hi}]"
    if lo is not None:
        return f"{kind} {'>' if m.get('min_exclusive') else '>='} {lo}"
    return kind


def _finite(number: int | float) -> bool:
    """A finite number that converts to a float (TOML integers may have hundreds of digits)."""
    try:
        return math.isfinite(float(number))
    except OverflowError:
        return False


def _control_character(text: str, allowed: str = "") -> str:
    """The first control character (\\x00-\\x1f, \\x7f-\\x9f) in ``text`` not in ``allowed``, or ''."""
    return next((c for c in text if unicodedata.category(c) == "Cc" and c not in allowed), "")


def check_value(key: str, f: dataclasses.Field, value: Any) -> Any:
    """Return ``value`` converted to the field's type, or raise a one-line ConfigError."""
    def bad() -> ConfigError:
        shown = repr(value)  # quoted and escaped: a value holding a newline still gives one line
        return ConfigError(f"{key}: expected {_describe(f)}, got {shown[:80]}")

    kind, m = f.type, f.metadata
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad()
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise bad()
        value = float(value)
    elif kind == "str":
        if not isinstance(value, str):
            raise bad()
        control = _control_character(value)
        if control:  # a typo or paste accident; config.toml could not hold it either
            raise ConfigError(f"{key}: contains the control character {control!r}, in {value[:80]!r}")
        if m.get("choices") and value not in m["choices"]:
            raise bad()
        return value
    elif kind == "list":
        if not isinstance(value, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v) for v in value):
            raise bad()
        return [float(v) for v in value]
    lo, hi = m.get("min"), m.get("max")
    if lo is not None and (value < lo or (m.get("min_exclusive") and value == lo)):
        raise bad()
    if hi is not None and value > hi:
        raise bad()
    return value


# ---------------------------------------------------------------------------------------------
# Recipes

def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def find_recipe(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or "/" in name_or_path:
        if not path.is_file():
            raise ConfigError(f"recipe file {name_or_path} not found")
        return path
    path = RECIPE_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown recipe {name_or_path!r} (built-in: {', '.join(recipe_names())}; "
                          "or give a path to a .toml file)")
    return path


def load_recipe(name_or_path: str, _seen: tuple = ()) -> dict[str, dict[str, Any]]:
    """Read a recipe and its ``extends`` chain into {section: {key: value}} (not yet validated)."""
    path = find_recipe(name_or_path)
    if path.resolve() in _seen:
        raise ConfigError(f"recipe {path}: 'extends' forms a cycle")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"recipe {path}: not valid TOML ({error})") from None
    merged: dict[str, dict[str, Any]] = {}
    meta: dict[str, Any] = {}
    parent = raw.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(f"recipe {path}: 'extends' must be a recipe name or path")
        if parent.endswith(".toml") and not Path(parent).is_absolute():
            parent = str(path.parent / parent)  # relative to the recipe that extends it
        base = load_recipe(parent, _seen + (path.resolve(),))
        meta = base.pop("", {})
        merged = base
    for key, value in raw.items():
        if key in ("description", "recipe"):
            if not isinstance(value, str):
                raise ConfigError(f"recipe {path}: '{key}' must be a string")
            control = _control_character(value, allowed="\t\n" if key == "description" else "")
            if control:
                raise ConfigError(f"recipe {path}: '{key}' contains the control character {control!r}")
            meta[key] = value
        elif key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"recipe {path}: [{key}] must be a table")
            merged.setdefault(key, {}).update(value)
        else:
            raise ConfigError(f"recipe {path}: unknown key {key!r} (allowed: {', '.join(SECTIONS)}, "
                              "description, extends)")
    if "recipe" not in raw:
        meta["recipe"] = path.stem  # a recipe that extends another is named after itself
    merged[""] = meta
    return merged


def build_config(recipe: dict[str, dict[str, Any]] | None = None,
                 overrides: dict[str, Any] | None = None) -> Config:
    """Validate a loaded recipe plus flat ``section.key`` overrides into a :class:`Config`."""
    recipe = {k: dict(v) for k, v in (recipe or {}).items()}
    meta = recipe.pop("", {})
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        recipe.setdefault(section, {})[key] = value
    values: dict[str, Any] = {}
    for section in SECTIONS:
        given = recipe.pop(section, {})
        known = {f.name: f for f in section_fields(section)}
        for key in given:
            if key not in known:
                raise ConfigError(f"unknown key {f'{section}.{key}'!r} (allowed in [{section}]: "
                                  f"{', '.join(known)})")
        kwargs = {key: check_value(f"{section}.{key}", known[key], v) for key, v in given.items()}
        values[section] = Config.__dataclass_fields__[section].default_factory(**kwargs)
    for section in recipe:
        raise ConfigError(f"unknown section [{section}] (allowed: {', '.join(SECTIONS)})")
    config = Config(**values, recipe=meta.get("recipe", "custom"), description=meta.get("description", ""))
    check_consistency(config)
    return config


def check_consistency(config: Config) -> None:
    """Checks that involve more than one key."""
    run = config.run
    if run.micro_batch_size > run.batch_size:
        raise ConfigError(f"run.micro_batch_size ({run.micro_batch_size}) is larger than run.batch_size "
                          f"({run.batch_size}); lower it or set 0 for automatic")
    smoothing = config.data.label_smoothing
    if smoothing != -1.0 and not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"data.label_smoothing: expected -1 (the augmentation level's own) or a number in [0, 1), "
                          f"got {smoothing!r}")
    if config.data.dataset in ("fashion-mnist", "mnist") and config.data.image_size not in (0, 28):
        raise ConfigError(f"data.image_size: {config.data.dataset} images are 28x28; use 0 or 28")


def load_config(recipe: str = DEFAULT_RECIPE, overrides: dict[str, Any] | None = None) -> Config:
    return build_config(load_recipe(recipe), overrides)


def config_to_dict(config: Config) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    return {"recipe": data.pop("recipe"), "description": data.pop("description"), **data}


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a config saved by :func:`config_to_dict` (e.g. from a checkpoint), validating it."""
    data = dict(data)
    meta = {"recipe": data.pop("recipe", "custom"), "description": data.pop("description", "")}
    return build_config({**data, "": meta})


# ---------------------------------------------------------------------------------------------
# Writing TOML (the stdlib reads it but cannot write it; our values are flat scalars and lists)

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(config: Config) -> str:
    data = config_to_dict(config)
    lines = [f"recipe = {_toml_value(data.pop('recipe'))}",
             f"description = {_toml_value(data.pop('description'))}"]
    for section, values in data.items():
        lines.append(f"\n[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"
