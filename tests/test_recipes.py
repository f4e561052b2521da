"""Every built-in recipe, resolved as a run would resolve it, against the numbers its source states.

Each row below holds the source's numbers with the citation beside them; the test derives the
run the way ``largebatch train`` does (:func:`largebatch.derive.derive` with ImageNet-1k's
1,281,167 / 50,000 images, or Fashion-MNIST's 60,000 / 10,000; the model built on the ``meta``
device; :func:`largebatch.optim.build_optimizer`) and compares: model variant, peak LR, warmup
start and end LR (the first and last warmup steps) and the LR of the step after warmup, warmup
steps, decay form, LR at 50% of the run, weight decay and adaptation per
parameter group, momentum and Nesterov, label smoothing, epochs, batch and BN batch. These are
the quantities ``largebatch train --dry-run --json`` reports (``derived``, ``lr_schedule``,
``param_groups``). A new recipe without a row here fails.

Step counts follow from the source's epochs: ceil(epochs * images / batch), as
:func:`largebatch.schedule.steps_for` computes them and as every row's comment writes out.

Sources: [G] Goyal et al. 2017, arXiv 1706.02677. [L-ICLR] You, Gitman, Ginsburg, ICLR 2018
submission (OpenReview rJ4uaX2aW) of arXiv 1708.03888. [L] v3: arXiv 1708.03888 v3, as the
project's paper notes give it (not verified against its text). [N] mlcommons/training_results_v2.0
at 8437fbb, NVIDIA/benchmarks/resnet/implementations/mxnet. [J] mlcommons/training_results_v0.7
at c664061, Google/benchmarks/resnet/implementations/resnet-research-JAX-tpu-v3-8192.
"""

from __future__ import annotations

import math

import pytest
import torch

from largebatch import models
from largebatch.augment import level_settings
from largebatch.config import load_config, recipe_names
from largebatch.derive import derive
from largebatch.optim import build_optimizer

IMAGENET = (1_281_167, 50_000)
FASHION_MNIST = (60_000, 10_000)


def steps(epochs: float, images: int, batch: int) -> int:
    return math.ceil(epochs * images / batch)


def poly_from_start(peak: float, power: float, step: int, total: int) -> float:
    """[L-ICLR] Algorithm 1: gamma_t = gamma_0 * (1 - t/T)^power."""
    return peak * (1 - step / total) ** power


def poly_from_warmup_end(peak: float, power: float, step: int, warmup: int, total: int) -> float:
    """MLPerf (lars_util.py, NVIDIA's PolySchedule, [J] train.py): peak * (1 - (t-W)/(T-W))^power."""
    return peak * (1 - (step - warmup) / (total - warmup)) ** power


# ResNet-50 has 53 convolutions, 53 BatchNorm layers (2 tensors each) and the classifier (2).
RESNET50_CONVOLUTIONS, RESNET50_BN_TENSORS = 53, 106

# -- the rows -----------------------------------------------------------------------------------

GOYAL_T, GOYAL_W = steps(90, IMAGENET[0], 8192), steps(5, IMAGENET[0], 8192)          # 14,076 and 782
L_T, L_W = steps(90, IMAGENET[0], 32768), steps(5, IMAGENET[0], 32768)                # 3,519 and 196
ALEX_T, ALEX_W = steps(100, IMAGENET[0], 32768), steps(5, IMAGENET[0], 32768)         # 3,910 and 196
ICLR_T, ICLR_W = steps(100, IMAGENET[0], 32768), steps(12, IMAGENET[0], 32768)        # 3,910 and 470
NV_T, NV_W = steps(37, IMAGENET[0], 3264), steps(2, IMAGENET[0], 3264)                # 14,524 and 786
JAX_T, JAX_W = steps(64, IMAGENET[0], 32768), steps(18, IMAGENET[0], 32768)           # 2,503 and 704
FM_T, FM_W = steps(5, FASHION_MNIST[0], 4096), steps(1.5, FASHION_MNIST[0], 4096)     # 74 and 22

EXPECTED = {
    "imagenet_resnet50_8k_sgd_goyal": dict(
        images=IMAGENET,
        model="resnet50",                  # [G] 5.1: "stride-2 convolutions are on 3x3 layers" (v1.5)
        zero_init_residual=True,           # [G] 5.1: last BN gamma of each residual block = 0
        peak_lr=3.2,                       # [G] 5.2: "eta = 3.2 as the reference learning rate" at 8k
        warmup_start_lr=0.1,               # [G] 5.2: "gradual warmup which starts with eta = 0.1"
        warmup_end_lr=0.1 + 3.1 * (GOYAL_W - 1) / GOYAL_W,  # [G] 2.2: a constant increment per iteration ...
        lr_after_warmup=3.2,               # ... "linearly increased to eta = 3.2 over 5 epochs" ([G] 5.2)
        warmup_steps=GOYAL_W,              # [G] 2.2: 5 epochs
        decay=("step", None, None),        # [G] 5.1: "reduce it by 1/10 at the 30-th, 60-th, and 80-th epoch"
        lr_at_half=0.32,                   # [G] 5.1: epoch 45 lies between the drops at 30 and 60
        groups={"decayed": (RESNET50_CONVOLUTIONS + 2, 1e-4, None),   # [G] 5.1: lambda = 0.0001
                "not decayed": (RESNET50_BN_TENSORS, 0.0, None)},     # [G] 5.1: not on BN gamma, beta
        momentum=(0.9, True),              # [G] 5.1: "Nesterov momentum [29] with m of 0.9"
        label_smoothing=0.0,               # [G]: none stated
        epochs=90, batch=8192,             # [G] 5.1: 90 epochs; 5.2: kn = 8k
        bn_batch=32,                       # [G] 5.1: "we use n = 32 throughout"
    ),
    "imagenet_alexnet_bn_32k_lars": dict(
        images=IMAGENET,
        model="alexnet_bn_caffe",          # [L-ICLR] 3: BVLC AlexNet with LRN replaced by BN
        zero_init_residual=False,
        peak_lr=22.0,                      # [L-ICLR] Table 3(b): 32K, LR 22
        warmup_start_lr=22.0 / ALEX_W,     # linear warmup from 0 (the engine's first step is peak / W)
        warmup_end_lr=22.0,
        lr_after_warmup=poly_from_start(22.0, 2.0, ALEX_W, ALEX_T),  # Algorithm 1 at t = W: a step down
        warmup_steps=ALEX_W,               # [L-ICLR] 5: AlexNet-BN warm-up 5 epochs
        decay=("poly", 2.0, "start"),      # [L-ICLR] 5: poly (p = 2); Algorithm 1: (1 - t/T)^2
        lr_at_half=poly_from_start(22.0, 2.0, ALEX_T // 2, ALEX_T),
        groups={"adapted, decayed": ("all", 5e-4, True)},  # [L-ICLR] 4-5: every layer, weight decay 0.0005
        momentum=(0.9, False),             # [L-ICLR] 5: momentum 0.9
        label_smoothing=0.0,
        epochs=100, batch=32768,           # [L-ICLR] 5: 100 epochs; Table 3(b): 32K
        bn_batch=256,                      # [L-ICLR]: not stated (Caffe iter_size chunks); the engine's GPU default
    ),
    "imagenet_resnet50_32k_lars": dict(
        images=IMAGENET,
        model="resnet50_v1",               # [L-ICLR] 5: "ResNet-50, v.1"
        zero_init_residual=False,
        peak_lr=2.9,                       # [L] v3 ResNet-50 table, 32K (not verified)
        warmup_start_lr=2.9 / L_W,
        warmup_end_lr=2.9,
        lr_after_warmup=poly_from_start(2.9, 2.0, L_W, L_T),
        warmup_steps=L_W,                  # [L] v3: 5 epochs (not verified)
        decay=("poly", 2.0, "start"),      # [L-ICLR] Algorithm 1
        lr_at_half=poly_from_start(2.9, 2.0, L_T // 2, L_T),
        groups={"adapted, decayed": ("all", 1e-4, True)},  # [L] v3: weight decay 1e-4 (not verified), every tensor
        momentum=(0.9, False),             # [L-ICLR] 5
        label_smoothing=0.0,
        epochs=90, batch=32768,            # [L] v3, [Y]: 90 epochs at 32K
        bn_batch=256,                      # not stated; the engine's GPU default
    ),
    "imagenet_resnet50_32k_lars_iclr2018": dict(
        images=IMAGENET,
        model="resnet50_v1",               # [L-ICLR] 5: "ResNet-50, v.1"
        zero_init_residual=False,
        peak_lr=40.0,                      # [L-ICLR] Table 4: 32K, gamma = 40
        warmup_start_lr=40.0 / ICLR_W,
        warmup_end_lr=40.0,
        lr_after_warmup=poly_from_start(40.0, 2.0, ICLR_W, ICLR_T),
        warmup_steps=ICLR_W,               # [L-ICLR] Table 4: warm-up 12
        decay=("poly", 2.0, "start"),      # [L-ICLR] 5, Algorithm 1
        lr_at_half=poly_from_start(40.0, 2.0, ICLR_T // 2, ICLR_T),
        groups={"adapted, decayed": ("all", 5e-4, True)},  # [L-ICLR] 5: weight decay 0.0005
        momentum=(0.9, False),             # [L-ICLR] 5: momentum 0.9
        label_smoothing=0.0,
        epochs=100, batch=32768,           # [L-ICLR] 5: 100 epochs
        bn_batch=256,                      # not stated; the engine's GPU default
    ),
    "imagenet_resnet50_3k_lars_mlperf": dict(
        images=IMAGENET,
        model="resnet50",                  # [N] resnet-v1b: stride on the 3x3 (v1.5)
        zero_init_residual=False,          # [N] run_and_time.sh: no --bn-gamma-init0
        peak_lr=10.5,                      # [N] config_DGXA100.sh: LR="10.5"
        warmup_start_lr=10.5 / NV_W,       # [N] fit.py: base_lr * iteration / warmup, iteration from 1
        warmup_end_lr=10.5,
        lr_after_warmup=10.5,              # [N] PolySchedule: the decay starts at the peak
        warmup_steps=NV_W,                 # [N] config: WARMUP_EPOCHS="2"
        decay=("poly", 2.0, "warmup_end"),  # [N] fit.py PolySchedule: power 2 from the warmup's end
        lr_at_half=poly_from_warmup_end(10.5, 2.0, NV_T // 2, NV_W, NV_T),
        groups={"adapted, decayed": (RESNET50_CONVOLUTIONS + 1, 5e-5, True),  # [N] WD="5.0e-05" on *_weight
                "not adapted, decayed": (1, 5e-5, False),                     # [N] fc bias: decayed, not LARS
                "not adapted, not decayed": (RESNET50_BN_TENSORS, 0.0, False)},  # [N] gamma, beta
        momentum=(0.9, False),             # [N] config: MOM="0.9"
        label_smoothing=0.1,               # [N] config: LABELSMOOTHING="0.1"
        epochs=37, batch=3264,             # [N] config: NUMEPOCHS="37", BATCHSIZE="408" x 8 GPUs
        bn_batch=408,                      # [N] run_and_time.sh: --bn-group 1 (per GPU)
    ),
    "imagenet_resnet50_32k_lars_mlperf": dict(
        images=IMAGENET,
        model="resnet50",                  # [J] models.py: stride on conv2 (v1.5)
        zero_init_residual=True,           # [J] models.py: bn3 scale_init zeros
        peak_lr=29.0,                      # [J] train.py: batch < 65536: base_lr = 29.0
        warmup_start_lr=29.0 / JAX_W,
        warmup_end_lr=29.0,
        lr_after_warmup=29.0,              # [J] train.py: the decay starts at the peak
        warmup_steps=JAX_W,                # [J] train.py: warmup_epochs = 18
        decay=("poly", 2.0, "warmup_end"),  # [J] train.py: (1 - (step - warmup) / decay_steps) ** 2
        lr_at_half=poly_from_warmup_end(29.0, 2.0, JAX_T // 2, JAX_W, JAX_T),
        groups={"adapted, decayed": (RESNET50_CONVOLUTIONS + 1, 1e-4, True),   # [J]: kernels get LARS, wd 1e-4
                "not adapted, not decayed": (RESNET50_BN_TENSORS + 1, 0.0, False)},  # [J]: bias, scale
        momentum=(0.929, False),           # [J] train.py: beta = 0.929
        label_smoothing=0.1,               # [J] train.py: label_smoothing 0.1
        epochs=64, batch=32768,            # [J] train.py: num_epochs = 64 at 32768
        bn_batch=128,                      # [J] train.py: batchnorm_span = 128 per core
    ),
    "fashion_mnist": dict(
        images=FASHION_MNIST,
        model="fast_resnet",               # the project's default small network (docs/models.md)
        zero_init_residual=False,
        peak_lr=10.0,                      # [L] Table 3: gamma_0 = 10 at 4K (AlexNet-BN)
        warmup_start_lr=10.0 / FM_W,
        warmup_end_lr=10.0,
        lr_after_warmup=10.0,
        warmup_steps=FM_W,                 # the recipe: 1.5 epochs of 5
        decay=("poly", 2.0, "warmup_end"),  # [L] Table 3: poly(2); the decay form the golden losses were recorded with
        lr_at_half=poly_from_warmup_end(10.0, 2.0, FM_T // 2, FM_W, FM_T),
        groups={"adapted, decayed": ("all", 5e-4, True)},  # [L] Table 3: weight decay 5e-4, every tensor
        momentum=(0.9, False),             # [L] Table 3: momentum 0.9
        label_smoothing=0.0,
        epochs=5, batch=4096,
        bn_batch=256,                      # the engine's GPU default (128 on a CPU)
    ),
}


# -- resolving a recipe as a run does ------------------------------------------------------------

def resolve(name: str) -> dict:
    config = load_config(name)
    row = EXPECTED[name]
    plan = derive(config, 1, *row["images"], device_type="cuda")
    with torch.device("meta"):
        model = models.build(config.model.name, zero_init_residual=config.model.zero_init_residual,
                             **({"num_classes": 10} if config.data.dataset == "fashion-mnist" else {}))
    optimizer = build_optimizer(config.optimizer, model, plan.peak_lr)
    adaptive = config.optimizer.name != "sgd"
    groups = {group["name"]: (len(group["params"]), group["weight_decay"], group["adapt"] if adaptive else None)
              for group in optimizer.param_groups}
    size = config.data.image_size or models.default_input_size(config.model.name)
    return dict(
        config=config, plan=plan, model=model, groups=groups,
        momentum=(optimizer.param_groups[0]["momentum"], optimizer.param_groups[0]["nesterov"]),
        label_smoothing=level_settings(config.data.augmentation, size, 3, in_workers=True,
                                       label_smoothing=config.data.label_smoothing).label_smoothing,
    )


def test_every_built_in_recipe_has_a_row():
    assert sorted(EXPECTED) == recipe_names()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_resolves_to_its_sources_numbers(name):
    row, got = EXPECTED[name], resolve(name)
    config, plan = got["config"], got["plan"]
    assert config.model.name == row["model"]
    assert config.model.zero_init_residual == row["zero_init_residual"]
    assert plan.peak_lr == pytest.approx(row["peak_lr"], rel=1e-12)
    assert plan.warmup_steps == row["warmup_steps"]
    assert plan.lr_at(0) == pytest.approx(row["warmup_start_lr"], rel=1e-12)
    assert plan.lr_at(plan.warmup_steps - 1) == pytest.approx(row["warmup_end_lr"], rel=1e-12)
    assert plan.lr_at(plan.warmup_steps) == pytest.approx(row["lr_after_warmup"], rel=1e-12)
    schedule = plan.schedule
    decay, power, origin = row["decay"]
    assert schedule.decay == decay
    if decay == "poly":
        assert (schedule.power, schedule.decay_from) == (power, origin)
    assert plan.lr_at(plan.total_steps // 2) == pytest.approx(row["lr_at_half"], rel=1e-12)
    expected_groups = {group: ((sum(1 for p in got["model"].parameters() if p.requires_grad)
                                if count == "all" else count), decay_rate, adapted)
                       for group, (count, decay_rate, adapted) in row["groups"].items()}
    assert got["groups"] == expected_groups
    assert got["momentum"] == row["momentum"]
    assert got["label_smoothing"] == row["label_smoothing"]
    assert (config.run.epochs, plan.global_batch_size) == (row["epochs"], row["batch"])
    assert plan.micro_batch_size == row["bn_batch"]


def test_the_model_variants_put_the_stride_where_their_papers_do():
    # v1 ([L-ICLR] 5, He et al.'s Caffe model): stride 2 on the first 1x1 of a downsampling block;
    # v1.5 ([G] 5.1, MLPerf): on the 3x3
    with torch.device("meta"):
        v1, v15 = models.build("resnet50_v1"), models.build("resnet50")
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)


def test_goyal_warmup_rises_by_a_constant_amount_per_iteration():
    # [G] 2.2: "increment it by a constant amount at each iteration such that it reaches 3.2 after 5 epochs"
    plan = resolve("imagenet_resnet50_8k_sgd_goyal")["plan"]
    increments = {round(plan.lr_at(t + 1) - plan.lr_at(t), 12) for t in range(plan.warmup_steps)}
    assert increments == {round(3.1 / GOYAL_W, 12)}


def test_the_lars_paper_recipes_step_down_at_the_warmups_end():
    # [L-ICLR] Algorithm 1 counts t from the first step: after warmup the LR is gamma_0 (1 - W/T)^2
    plan = resolve("imagenet_resnet50_32k_lars")["plan"]
    assert plan.lr_at(L_W - 1) == pytest.approx(2.9)
    assert plan.lr_at(L_W) == pytest.approx(2.9 * (1 - L_W / L_T) ** 2)
    assert 1 - plan.lr_at(L_W) / 2.9 == pytest.approx(0.108, abs=1e-3)
