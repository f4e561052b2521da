"""Batched augmentation: shapes, hand-checked operations, soft labels, determinism, the study."""

import inspect
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from largebatch import augment as A
from largebatch.errors import ConfigError


def batch(n=8, channels=1, size=28, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    return images, labels


# -- levels ------------------------------------------------------------------------------------

@pytest.mark.parametrize("level", A.LEVELS)
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_each_level_keeps_shapes_dtypes_and_pixel_range(level, channels, size):
    augmenter = A.BatchAugmenter(level, 10, size, seed=0, global_batch=16, channels=channels)
    images, labels = batch(8, channels, size)
    out, targets = augmenter(images, labels, step=3, offset=8)
    assert out.shape == images.shape
    if level == "none":
        assert out is images and targets is labels
        return
    assert out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 255
    if level == "strong":
        assert targets.shape == (8, 10) and targets.dtype == torch.float32
        torch.testing.assert_close(targets.sum(1), torch.ones(8))
    else:
        assert targets.dtype == torch.int64 and torch.equal(targets, labels)
    # a float64 batch (fp64 checks) stays float64, soft labels included
    out64, targets64 = augmenter(images.double(), labels, step=3, offset=8)
    assert out64.dtype == torch.float64 and (level != "strong" or targets64.dtype == torch.float64)
    torch.testing.assert_close(out64.float(), out, atol=1e-3, rtol=0)


def test_level_settings_follow_the_documented_table():
    from largebatch.config import AUGMENTATIONS
    assert A.LEVELS == AUGMENTATIONS  # the levels --augmentation accepts
    minimal28 = A.level_settings("minimal", 28, 1)
    assert (minimal28.padding, minimal28.flip, minimal28.resized_crop) == (2, True, False)
    assert A.level_settings("minimal", 32, 3).padding == 4  # He et al. 2016 on CIFAR
    extended = A.level_settings("extended", 28, 1)
    assert extended.resized_crop and extended.scale == (0.35, 1.0) and not extended.color_jitter
    assert A.level_settings("extended", 224, 3).scale == (0.08, 1.0)  # Szegedy et al. 2015
    rgb = A.level_settings("extended", 32, 3, color_jitter=0.3, lighting=0.05)
    assert (rgb.color_jitter, rgb.lighting) == (0.3, 0.05)
    strong = A.level_settings("strong", 28, 1)
    assert strong.resized_crop and strong.erasing == 0.25 and strong.mixing and strong.label_smoothing == 0.1
    # image files: the workers crop, flip and colour; only strong's batch-level part is left
    assert not A.level_settings("minimal", 224, 3, in_workers=True).active
    assert not A.level_settings("extended", 224, 3, in_workers=True).active
    workers_strong = A.level_settings("strong", 224, 3, in_workers=True)
    assert workers_strong.mixing and workers_strong.erasing and not workers_strong.resized_crop
    assert not workers_strong.flip and not workers_strong.color_jitter
    assert not A.level_settings("none", 28).active
    with pytest.raises(ConfigError, match="data.augmentation"):
        A.level_settings("heavy", 28)


def test_a_label_smoothing_setting_replaces_the_levels_own():
    # MLPerf's ResNet-50: crop-and-flip augmentation with label smoothing 0.1 (data.label_smoothing)
    assert A.level_settings("extended", 224, 3, in_workers=True, label_smoothing=0.1).label_smoothing == 0.1
    assert A.level_settings("strong", 28, 1, label_smoothing=0.0).label_smoothing == 0.0
    assert A.level_settings("strong", 28, 1, label_smoothing=-1.0).label_smoothing == 0.1  # the level's own
    augmenter = A.BatchAugmenter("none", 10, 28, 0, 8, label_smoothing=0.2)
    assert augmenter.label_smoothing == 0.2 and not augmenter.active
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 10, dtype=torch.float64), torch.randint(0, 10, (8,))
    smoothed = A.batch_loss(logits, labels, augmenter.label_smoothing)
    targets = torch.full((8, 10), 0.02, dtype=torch.float64).scatter_(1, labels.view(8, 1), 0.82)
    assert torch.allclose(smoothed, -(targets * torch.log_softmax(logits, 1)).sum())


# -- operations, by hand -------------------------------------------------------------------------

def test_padded_crop_shifts_the_content_by_hand():
    image = torch.arange(1, 17, dtype=torch.float32).view(1, 1, 4, 4)  # 1..16, row by row
    shift = lambda y, x, flip=None: A.padded_crop_flip(  # noqa: E731
        image, 1, torch.tensor([y]), torch.tensor([x]), None if flip is None else torch.tensor([flip]))[0, 0]
    assert torch.equal(shift(1, 1), image[0, 0])  # shift == padding: in place
    # window at the padded image's top-left corner: content moves one pixel down and right
    assert torch.equal(shift(0, 0), torch.tensor([[0., 0, 0, 0], [0, 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11]]))
    # window at the bottom-right: content moves up and left, zeros come in from the bottom and right
    assert torch.equal(shift(2, 2), torch.tensor([[6., 7, 8, 0], [10, 11, 12, 0], [14, 15, 16, 0], [0, 0, 0, 0]]))
    # one row down only, then mirrored left to right
    assert torch.equal(shift(0, 1, True), torch.tensor([[0., 0, 0, 0], [4, 3, 2, 1], [8, 7, 6, 5], [12, 11, 10, 9]]))


def test_padded_crop_keeps_every_image_its_own_shift():
    images = torch.stack([torch.full((1, 4, 4), 10.0), torch.full((1, 4, 4), 20.0)])
    out = A.padded_crop_flip(images, 1, torch.tensor([0, 2]), torch.tensor([1, 1]))
    assert out[0, 0, 0].eq(0).all() and out[0, 0, 1:].eq(10).all()  # down one row
    assert out[1, 0, 3].eq(0).all() and out[1, 0, :3].eq(20).all()  # up one row


def test_resized_crop_of_the_full_box_is_the_image_and_a_half_box_is_a_stretch():
    images, _ = batch(2, 3, 8)
    images = images.float()
    ones, zeros = torch.ones(2), torch.zeros(2)
    torch.testing.assert_close(A.resized_crop_flip(images, zeros, zeros, ones, ones), images, atol=1e-4, rtol=0)
    torch.testing.assert_close(A.resized_crop_flip(images, zeros, zeros, ones, ones, torch.tensor([1.0, 0.0]))[0],
                               images[0].flip(-1), atol=1e-4, rtol=0)
    # columns holding their own index: the left half stretched to the full width reads input column
    # (j + 0.5) / 2 - 0.5 (pixel centres, align_corners=False), clamped to 0 at the border
    ramp = torch.arange(8.0).expand(1, 1, 8, 8).contiguous()
    out = A.resized_crop_flip(ramp, torch.zeros(1), torch.zeros(1), torch.tensor([0.5]), torch.ones(1))
    expected = torch.clamp((torch.arange(8.0) + 0.5) / 2 - 0.5, min=0)
    torch.testing.assert_close(out[0, 0], expected.expand(8, 8), atol=1e-5, rtol=0)


def test_resized_crop_boxes_stay_inside_with_the_documented_ranges():
    settings = A.level_settings("extended", 28, 1)
    table = A.draw_parameters(settings, 4096, seed=0, step=0)
    column = lambda name: table[:, A._COLUMN[name]]  # noqa: E731
    width, height = column("crop_width"), column("crop_height")
    assert (column("crop_left") >= 0).all() and (column("crop_left") + width <= 1 + 1e-12).all()
    assert (column("crop_top") >= 0).all() and (column("crop_top") + height <= 1 + 1e-12).all()
    area = width * height
    assert area.min() >= 0.35 - 1e-9 and area.max() <= 1 + 1e-12 and area.min() < 0.4
    ratio = width / height
    unclamped = (width < 1) & (height < 1)
    assert ratio[unclamped].min() >= 3 / 4 - 1e-9 and ratio[unclamped].max() <= 4 / 3 + 1e-9
    assert 0.45 < column("flip").mean() < 0.55


def test_color_jitter_and_lighting_by_hand():
    images = torch.tensor([[[[100.0]], [[50.0]], [[200.0]]]])  # one RGB pixel
    one = torch.ones(1)
    torch.testing.assert_close(A.color_jitter(images, one, one, one), images)
    torch.testing.assert_close(A.color_jitter(images, torch.tensor([0.5]), one, one), images / 2)
    grey = 0.299 * 100 + 0.587 * 50 + 0.114 * 200
    torch.testing.assert_close(A.color_jitter(images, one, one, torch.zeros(1)), torch.full((1, 3, 1, 1), grey))
    torch.testing.assert_close(A.pca_lighting(images, torch.zeros(1, 3)), images)
    alpha = torch.tensor([[0.1, 0.0, 0.0]])
    expected_shift = torch.tensor(A.PCA_EIGENVECTORS[:, 0] * A.PCA_EIGENVALUES[0] * 0.1 * 255, dtype=torch.float32)
    torch.testing.assert_close(A.pca_lighting(images, alpha)[0, :, 0, 0], images[0, :, 0, 0] + expected_shift)


def test_random_erasing_fills_only_the_box_with_random_pixels():
    images = torch.full((2, 1, 10, 10), 7.0)
    out = A.random_erasing(images, torch.tensor([1.0, 0.0]), torch.tensor([0.2, 0.2]), torch.tensor([0.3, 0.3]),
                           torch.tensor([0.4, 0.4]), torch.tensor([0.5, 0.5]), torch.tensor([11, 12]))
    box = torch.zeros(10, 10, dtype=torch.bool)
    box[3:8, 2:6] = True  # top 0.3 * 10, height 5; left 2, width 4
    assert out[0, 0][~box].eq(7).all()
    erased = out[0, 0][box]
    assert (erased != 7).float().mean() > 0.9 and erased.min() >= 0 and erased.max() < 255
    assert len(torch.unique(erased)) > 15  # noise, not a constant
    assert out[1].eq(7).all()  # erase = 0: untouched
    host = A.random_erasing(images, np.array([True, False]), torch.tensor([0.2, 0.2]), torch.tensor([0.3, 0.3]),
                            torch.tensor([0.4, 0.4]), torch.tensor([0.5, 0.5]), torch.tensor([11, 12]))
    assert torch.equal(host, out)  # the erase flags may come from the host table


def test_hash_noise_is_uniform_enough_and_deterministic():
    keys = torch.arange(100_000, dtype=torch.int64) * 7919
    values = A.hash_uniform(keys)
    assert torch.equal(values, A.hash_uniform(keys))
    assert 0 <= values.min() and values.max() < 1
    assert abs(values.mean().item() - 0.5) < 0.01 and abs(values.var().item() - 1 / 12) < 0.005
    histogram = torch.histc(values, bins=10, min=0, max=1)
    assert histogram.min() > 9000 and histogram.max() < 11000


def test_mixup_and_cutmix_by_hand():
    images = torch.stack([torch.full((1, 4, 4), 100.0), torch.full((1, 4, 4), 20.0)])
    labels = torch.tensor([3, 5])
    # mixup, weight 0.25: image 0 = 0.25 * 100 + 0.75 * 20; its partner is image 1 (mirrored place)
    out, targets = A.mix(images, labels, 6, torch.tensor([0.0, 0.0]), torch.tensor([0.25, 0.25]),
                         torch.full((2,), 0.5), torch.full((2,), 0.5))
    assert out[0].eq(0.25 * 100 + 0.75 * 20).all() and out[1].eq(0.25 * 20 + 0.75 * 100).all()
    torch.testing.assert_close(targets[0], torch.tensor([0, 0, 0, 0.25, 0, 0.75]))
    # cutmix, weight 0.75: box side sqrt(0.25) = 0.5 of 4 pixels, centred: rows and columns 1..2
    out, targets = A.mix(images, labels, 6, torch.tensor([1.0, 1.0]), torch.tensor([0.75, 0.75]),
                         torch.full((2,), 0.5), torch.full((2,), 0.5))
    box = torch.zeros(4, 4, dtype=torch.bool)
    box[1:3, 1:3] = True
    assert out[0, 0][box].eq(20).all() and out[0, 0][~box].eq(100).all()
    torch.testing.assert_close(targets[0], torch.tensor([0, 0, 0, 0.75, 0, 0.25]))
    # a box clipped by the border: centre (0, 0), side 0.5 -> 2x2 pixels... of which 1x1 inside
    out, targets = A.mix(images, labels, 6, torch.tensor([1.0, 1.0]), torch.tensor([0.75, 0.75]),
                         torch.zeros(2), torch.zeros(2))
    assert out[0, 0, 0, 0] == 20 and out[0, 0].eq(20).sum() == 1
    torch.testing.assert_close(targets[0], torch.tensor([0, 0, 0, 15 / 16, 0, 1 / 16]))


def test_strong_soft_labels_sum_to_one_and_name_only_the_two_classes():
    augmenter = A.BatchAugmenter("strong", 10, 28, seed=1, global_batch=64)
    images, labels = batch(64)
    _, targets = augmenter(images, labels, step=0)
    torch.testing.assert_close(targets.sum(1), torch.ones(64))
    partner = labels.flip(0)
    for row, own, other in zip(targets, labels, partner):
        named = set(torch.nonzero(row).flatten().tolist())
        assert named <= {own.item(), other.item()}
        assert row[own] >= 0 and row[other] >= 0
    weights = targets[torch.arange(64), labels]
    assert weights.min() < 0.9 and (targets > 0).sum(1).max() == 2  # some images really are mixed


# -- the loss ------------------------------------------------------------------------------------

def test_batch_loss_matches_cross_entropy_and_smoothing_by_hand():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 3, 1, 1, 2])
    reference = F.cross_entropy(logits, labels, reduction="sum")
    torch.testing.assert_close(A.batch_loss(logits, labels), reference)
    torch.testing.assert_close(A.batch_loss(logits, F.one_hot(labels, 4).double()), reference)
    eps = 0.1
    log_p = torch.log_softmax(logits, 1)
    smoothed = -((1 - eps) * log_p[torch.arange(5), labels] + eps / 4 * log_p.sum(1)).sum()
    torch.testing.assert_close(A.batch_loss(logits, labels, eps), smoothed)
    torch.testing.assert_close(A.batch_loss(logits, F.one_hot(labels, 4).float(), eps), smoothed)
    soft = torch.tensor([[0.7, 0.3, 0, 0]] * 5, dtype=torch.float64)
    torch.testing.assert_close(A.batch_loss(logits, soft), -(soft * log_p).sum())


# -- determinism ---------------------------------------------------------------------------------

LEVEL_CASES = [("minimal", 1, 28), ("extended", 1, 28), ("extended", 3, 32), ("strong", 1, 28), ("strong", 3, 32)]


@pytest.mark.parametrize("level, channels, size", LEVEL_CASES)
def test_same_seed_and_step_give_the_same_batch_and_a_restart_continues_the_stream(level, channels, size):
    images, labels = batch(16, channels, size)

    def run(augmenter, steps):
        return [augmenter(images, labels, step) for step in steps]

    first = run(A.BatchAugmenter(level, 10, size, 5, 16, channels=channels), range(6))
    # a resumed run: a new augmenter (new process) that starts at step 3
    resumed = run(A.BatchAugmenter(level, 10, size, 5, 16, channels=channels), range(3, 6))
    for (a, ta), (b, tb) in zip(first[3:], resumed):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    assert not torch.equal(first[0][0], first[1][0])  # another step, other choices
    other_seed = A.BatchAugmenter(level, 10, size, 6, 16, channels=channels)(images, labels, 0)
    assert not torch.equal(first[0][0], other_seed[0])


@pytest.mark.parametrize("level, channels, size", LEVEL_CASES)
def test_the_split_into_micro_batches_does_not_change_an_image(level, channels, size):
    images, labels = batch(12, channels, size)
    augmenter = A.BatchAugmenter(level, 10, size, 0, 12, channels=channels)
    splits = ((0, 5), (5, 8), (8, 12))
    # every per-image choice (crop, flip, colour, erasing and its noise) ...
    whole = augmenter.augment_images(images, step=7, offset=0)
    parts = [augmenter.augment_images(images[a:b], 7, offset=a) for a, b in splits]
    torch.testing.assert_close(torch.cat(parts), whole, atol=1e-4, rtol=0)
    # ... and the mixing weights and cutmix boxes; only the partner depends on the micro-batch
    drawn = augmenter.parameters(7, 0, 12, torch.device("cpu"))
    for a, b in splits:
        part = augmenter.parameters(7, a, b - a, torch.device("cpu"))
        for name, values in part.items():
            assert torch.equal(values, drawn[name][a:b]), name
    if level != "strong":
        whole_out, whole_targets = augmenter(images, labels, step=7, offset=0)
        outs = [augmenter(images[a:b], labels[a:b], 7, offset=a) for a, b in splits]
        torch.testing.assert_close(torch.cat([o[0] for o in outs]), whole_out, atol=1e-4, rtol=0)
        assert torch.equal(torch.cat([o[1] for o in outs]), whole_targets)


def test_parameters_are_drawn_for_the_global_batch_only():
    augmenter = A.BatchAugmenter("minimal", 10, 28, 0, 8)
    images, labels = batch(4)
    with pytest.raises(ValueError, match="outside the global batch"):
        augmenter(images, labels, step=0, offset=6)


def test_the_step_generator_depends_on_seed_and_step_only():
    a = A.step_generator(3, 10).uniform(size=4)
    assert np.array_equal(a, A.step_generator(3, 10).uniform(size=4))
    assert not np.array_equal(a, A.step_generator(3, 11).uniform(size=4))
    assert not np.array_equal(a, A.step_generator(4, 10).uniform(size=4))


# -- training and the study ------------------------------------------------------------------------

def test_the_training_loop_uses_the_augmenter():
    from largebatch import train
    if "augmenter" not in inspect.signature(train.forward_backward).parameters:
        pytest.skip("train.forward_backward does not take an augmenter yet (not wired into train.py)")
    from largebatch.data import Normalizer
    from largebatch.precision import Precision

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).double()
    images, labels = batch(8)
    normalizer = Normalizer((0.5,), (0.25,), torch.device("cpu"), dtype=torch.float64)
    precision = Precision.build("fp64", torch.device("cpu"))

    def gradient(level):
        model.zero_grad()
        augmenter = A.BatchAugmenter(level, 10, 28, 0, 8)
        loss = train.forward_backward(model, [(images, labels)], normalizer, precision, 8, False,
                                      augmenter=augmenter, step=0, offset=0)
        return loss.item(), model[1].weight.grad.clone()

    (loss_none, grad_none), (loss_minimal, grad_minimal) = gradient("none"), gradient("minimal")
    assert math.isfinite(loss_minimal) and not torch.equal(grad_none, grad_minimal)


STUDY = """
[study]
base = "fashion_mnist"
batch_sizes = [64, 256]
epochs = 1
seeds = [0, 1]
augmentations = ["none", "minimal", "strong"]

[variants.lars]
optimizer = {{ name = "lars", lr = 2.0 }}
schedule = {{ scaling = "sqrt", base_batch_size = 256, warmup_epochs = 0.5 }}
run = {{ micro_batch_size = 64, threads = 1 }}
data = {{ data_dir = "{data}" }}
"""


@pytest.mark.slow
def test_mini_augmentation_study_runs_and_its_report_parses(tiny_data, tmp_path, capsys):
    from largebatch.cli import main

    path = tmp_path / "augment.toml"
    path.write_text(STUDY.format(data=tiny_data))
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 12
    assert {(r["batch_size"], r["augmentation"], r["seed"]) for r in rows} == {
        (b, a, s) for b in (64, 256) for a in ("none", "minimal", "strong") for s in (0, 1)}
    for row in rows:
        assert {"batch_size", "optimizer", "augmentation", "seed", "top1", "epochs", "wall_s"} <= set(row)
        assert 0 <= row["top1"] <= 1 and row["epochs"] == 1 and row["wall_s"] > 0
    report = (out / "report.md").read_text()
    section = report[report.index("## Augmentation levels"):]
    assert "**lars: top-1 (%)**" in section and "**lars: gain over none (points)**" in section
    gain_table = section[section.index("gain over none"):].split("\n\n")[1].splitlines()
    assert gain_table[0] == "| batch | none | minimal | strong |"
    by_batch = {int(line.split("|")[1]): [c.strip() for c in line.split("|")[2:-1]] for line in gain_table[2:]}
    assert set(by_batch) == {64, 256}
    from largebatch.study.report import augmentation_gains
    gains = {(g["batch_size"], g["augmentation"]): g for g in augmentation_gains(rows)}
    for batch_size, cells in by_batch.items():
        assert cells[0] == "reference"  # none over none
        expected = gains[(batch_size, "strong")]
        value = float(cells[2].split("±")[0])
        assert value == pytest.approx(100 * expected["gain"], abs=0.006)
        assert len(expected["seeds"]) == 2 and "±" in cells[2]
    png = out / "top1_vs_batch_augmentation.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["study", str(path), "--out", str(out)]) == 0  # resumed: everything is complete
    assert capsys.readouterr().out.count("complete, skipped") == 12


def test_builtin_augmentation_studies_reuse_the_batch_size_study_runs():
    from largebatch.config import config_to_dict
    from largebatch.study import load_study

    main = load_study("augmentation_fashion_mnist")
    assert len(main.runs) == 16
    assert {(r.batch_size, r.augmentation) for r in main.runs} == {
        (b, a) for b in (128, 1024, 4096, 16384) for a in A.LEVELS}
    assert all(r.config.run.epochs == 20 and r.seed == 0 and r.variant == "lars" for r in main.runs)
    # the `none` runs of study_fashion_mnist's lars variant are these runs: same names, same configs
    # (apart from where they are written and the recipe label)
    batch_study = {r.name: r for r in load_study("study_fashion_mnist").runs}

    def comparable(run):
        data = config_to_dict(run.config)
        data.pop("recipe"), data.pop("description"), data["run"].pop("out")
        return data

    for run in main.runs:
        if run.augmentation == "none":
            assert comparable(run) == comparable(batch_study[run.name]), run.name
    seeds = load_study("augmentation_fashion_mnist_seeds")
    assert {(r.batch_size, r.seed) for r in seeds.runs} == {(b, s) for b in (128, 4096) for s in (1, 2)}
    assert seeds.out == main.out
    long = load_study("augmentation_fashion_mnist_long")
    assert {r.batch_size for r in long.runs} == {16384} and all(r.config.run.epochs == 40 for r in long.runs)
    assert long.out == main.out and {r.variant for r in long.runs} == {"lars_40ep"}
    for run in seeds.runs + long.runs:  # the same training setup as the main study, apart from seed / epochs
        twin = next(r for r in main.runs if r.batch_size == run.batch_size and r.augmentation == run.augmentation)
        a, b = comparable(run), comparable(twin)
        for data in (a, b):
            data["run"].pop("seed"), data["run"].pop("epochs")
        assert a == b
