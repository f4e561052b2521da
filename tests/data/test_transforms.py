"""Crop boxes, the fast (DCT-domain) decode against the plain one, colour, determinism."""

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from largebatch.data import transforms as T


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


# -- crop boxes --------------------------------------------------------------------------------

def test_random_resized_boxes_have_the_published_area_and_aspect_ranges():
    rng = random.Random(0)
    fractions, fallbacks = [], 0
    for _ in range(2000):
        left, top, right, bottom = T.random_resized_crop_box(500, 375, rng)
        w, h = right - left, bottom - top
        assert 0 <= left and 0 <= top and right <= 500 and bottom <= 375
        assert all(float(v).is_integer() for v in (left, top, right, bottom))
        if (w, h) == (500, 375):
            fallbacks += 1
            continue
        fractions.append(w * h / (500 * 375))
        # rounding w and h to whole pixels moves ratio and area by about a pixel's worth
        assert 3 / 4 * (1 - 2 / min(w, h)) <= w / h <= 4 / 3 * (1 + 2 / min(w, h))
        assert 0.08 * (1 - 4 / min(w, h)) <= fractions[-1] <= 1.0
    assert min(fractions) < 0.1 and max(fractions) > 0.9
    assert fallbacks < 20  # needs 10 failed attempts in a row: rare on a 4:3 image


def test_random_resized_crop_falls_back_to_a_centred_box_with_clamped_ratio():
    # A 1000 x 10 strip: a box of area >= 8% with ratio <= 4/3 cannot fit, so all 10 attempts
    # fail; fallback: full height, width round(10 * 4/3) = 13, centred: left (1000 - 13) // 2.
    assert T.random_resized_crop_box(1000, 10, random.Random(0)) == (493, 0, 506, 10)
    # A 10 x 1000 strip: full width, height round(10 / (3/4)) = 13.
    assert T.random_resized_crop_box(10, 1000, random.Random(0)) == (0, 493, 10, 506)


def test_center_crop_box_by_hand():
    # 500 x 375 -> shorter side 256: 341 x 256 (int(256 * 500 / 375) = 341); crop 224 at
    # left round(117 / 2) = 58, top 16; back in stored pixels: x * 500/341, y * 375/256.
    box = T.center_crop_box(500, 375, 224)
    expected = (58 * 500 / 341, 16 * 375 / 256, 282 * 500 / 341, 240 * 375 / 256)
    assert box == pytest.approx(expected)
    assert T.eval_resize(224) == 256 and T.eval_resize(128) == 146
    assert T.eval_resize(227) == 256  # Caffe's AlexNet: 227 x 227 crops of 256 x 256 images


def test_center_crop_equals_resize_then_crop(helpers):
    image = helpers.natural_image(500, 375, seed=3)
    reference = np.asarray(image.resize((341, 256), Image.Resampling.BILINEAR).crop((58, 16, 282, 240)))
    ours = np.asarray(T.decode_box(image, T.center_crop_box(500, 375, 224), 224, fast=False))
    assert np.abs(reference.astype(int) - ours.astype(int)).max() <= 1  # float box: rounding only


def test_paper_minimal_crop_is_a_224_window_of_the_256_square():
    rng = random.Random(1)
    for _ in range(50):
        left, top, right, bottom = T.resize_random_crop_box(512, 384, rng, 224)
        # in 256 x 256 coordinates: an integer 224-pixel window inside the square
        l256, t256 = left * 256 / 512, top * 256 / 384
        assert l256 == pytest.approx(round(l256)) and t256 == pytest.approx(round(t256))
        assert (right - left) * 256 / 512 == pytest.approx(224) and (bottom - top) * 256 / 384 == pytest.approx(224)
        assert 0 <= l256 <= 32 and 0 <= t256 <= 32


class MiddleCrop(random.Random):
    """An rng whose integer draws are the middle of their range: the random 224 crop of the
    256 square lands at offset 16, where the evaluation's centre crop is."""

    def randint(self, a: int, b: int) -> int:
        return (a + b) // 2


def box_scale(box, size):
    """Stored pixels per output pixel, horizontally and vertically, of a box resized to size^2."""
    return (box[2] - box[0]) / size, (box[3] - box[1]) / size


def test_a_4_by_3_image_is_resized_the_same_way_in_training_and_evaluation_at_minimal(helpers):
    width, height, size = 640, 480, 224
    train, evaluation = T.train_transform("minimal", size), T.eval_transform(size, level="minimal")
    rng = random.Random(0)
    for _ in range(20):  # every training crop: the squash, 2.5 x 1.875 stored pixels per output pixel
        assert box_scale(train.sample(width, height, rng).box, size) == pytest.approx((640 / 256, 480 / 256))
    eval_box = evaluation.sample(width, height, None).box
    assert box_scale(eval_box, size) == pytest.approx((640 / 256, 480 / 256))  # the same squash
    assert eval_box == pytest.approx((16 * 640 / 256, 16 * 480 / 256, 240 * 640 / 256, 240 * 480 / 256))
    # pixels: training's crop at the middle offset is the evaluation image, bit for bit
    image = helpers.natural_image(width, height, seed=5)
    middle = train.sample(width, height, MiddleCrop(0))
    assert middle.box == eval_box
    unflipped = T.Params(middle.box)
    assert np.array_equal(train.render(image, unflipped), evaluation(image))
    # the aspect-preserving evaluation would show the same content 1.33x narrower than training
    kept = T.eval_transform(size, level="extended").sample(width, height, None).box
    assert box_scale(kept, size) == pytest.approx((640 / 341, 480 / 256))  # 640 x 480 -> 341 x 256
    for level in ("none", "extended", "strong"):
        assert T.eval_transform(size, level=level).crop == "center"
    assert not evaluation.random


# -- fast decode -------------------------------------------------------------------------------

@pytest.mark.parametrize("box,size,scale", [((0, 0, 500, 375), 224, 1), ((0, 0, 1000, 900), 224, 4),
                                            ((0, 0, 1000, 447), 224, 1), ((0, 0, 448, 448), 224, 2),
                                            ((10, 10, 1610, 1210), 64, 8), ((0, 0, 1000, 1000), 126, 4)])
def test_draft_scale_keeps_the_box_at_least_the_output_size(box, size, scale):
    assert T.draft_scale(box, size) == scale


@pytest.mark.parametrize("box,size", [((0, 0, 1600, 1200), 224), ((100, 50, 1100, 950), 224),
                                      ((301, 299, 799, 811), 112), ((0, 0, 1600, 1200), 64),
                                      ((37, 5, 511, 470), 224)])
def test_fast_decode_agrees_with_plain_decode_for_the_same_box(helpers, box, size):
    data = helpers.cached_jpeg(1600, 1200, 1)
    fast = np.asarray(T.decode_box(opened(data), box, size, fast=True)).astype(int)
    plain = np.asarray(T.decode_box(opened(data), box, size, fast=False)).astype(int)
    assert fast.shape == plain.shape == (size, size, 3)
    difference = np.abs(fast - plain)
    assert difference.mean() < 1.0 and difference.max() <= 6


def test_fast_decode_really_decodes_at_reduced_size(helpers, monkeypatch):
    data = helpers.cached_jpeg(1600, 1200, 1)
    sizes = []
    resize = Image.Image.resize

    def spy(self, *args, **kwargs):
        sizes.append(self.size)
        return resize(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    T.decode_box(opened(data), (0, 0, 1600, 1200), 224, fast=True)
    T.decode_box(opened(data), (0, 0, 1600, 1200), 224, fast=False)
    assert sizes == [(400, 300), (1600, 1200)]


def test_crop_choices_do_not_depend_on_the_decode_path():
    fast, plain = T.train_transform("extended", 224, fast=True), T.train_transform("extended", 224, fast=False)
    for position in range(200):
        for width, height in ((500, 375), (1600, 1200), (300, 800)):
            assert fast.sample(width, height, T.image_rng(9, position)) == \
                plain.sample(width, height, T.image_rng(9, position))


def test_fast_and_plain_training_images_agree(helpers):
    data = helpers.cached_jpeg(1200, 900, 2)
    fast, plain = T.train_transform("extended", 112, fast=True), T.train_transform("extended", 112, fast=False)
    for position in range(20):
        a = fast(opened(data), T.image_rng(0, position)).astype(int)
        b = plain(opened(data), T.image_rng(0, position)).astype(int)
        assert np.abs(a - b).mean() < 1.5


# -- flip and colour ---------------------------------------------------------------------------

def test_flip_mirrors_the_unflipped_crop(helpers):
    image = helpers.natural_image(120, 90)
    transform = T.ImageTransform(64, "random-resized", flip=True)
    params = T.Params((10, 5, 90, 85), flip=False)
    unflipped = transform.render(image, params)
    flipped = transform.render(image, T.Params((10, 5, 90, 85), flip=True))
    assert np.array_equal(flipped, unflipped[:, ::-1])


def test_pca_lighting_by_hand():
    grey = np.full((2, 2, 3), 100, np.uint8)
    # alpha = (1, 0, 0): shift = 255 * 0.2175 * first eigenvector = (-31.47, -32.21, -32.37)
    out = T.pca_lighting(grey, (1.0, 0.0, 0.0))
    assert out[0, 0].tolist() == [69, 68, 68]
    assert T.pca_lighting(np.full((1, 1, 3), 250, np.uint8), (-1.0, 0.0, 0.0))[0, 0].tolist() == [255, 255, 255]


def test_color_jitter_by_hand():
    image = Image.new("RGB", (4, 4), (100, 150, 200))
    assert np.asarray(T.color_jitter(image, [("brightness", 0.5)]))[0, 0].tolist() == [50, 75, 100]
    # contrast blends towards the mean luminance, 0.299 * 100 + 0.587 * 150 + 0.114 * 200 = 141:
    # 141 + 0.3 * (100 - 141) = 128.7, and 143.7, 158.7
    contrast = np.asarray(T.color_jitter(image, [("contrast", 0.3)]))[0, 0]
    assert np.abs(contrast - np.array([128.7, 143.7, 158.7])).max() < 1
    grey = np.asarray(T.color_jitter(image, [("saturation", 0.0)]))[0, 0]
    assert grey[0] == grey[1] == grey[2]


def test_jitter_and_lighting_draws_are_within_their_ranges():
    transform = T.train_transform("extended", 224, color_jitter=0.4, lighting=0.1)
    for position in range(100):
        params = transform.sample(500, 375, T.image_rng(0, position))
        assert sorted(name for name, _ in params.jitter) == ["brightness", "contrast", "saturation"]
        assert all(0.6 <= factor <= 1.4 for _, factor in params.jitter)
        assert params.lighting is not None and all(abs(a) < 0.6 for a in params.lighting)
    plain = T.train_transform("extended", 224, color_jitter=0.0, lighting=0.0).sample(500, 375, T.image_rng(0, 0))
    assert plain.jitter == () and plain.lighting is None


# -- determinism and outputs -------------------------------------------------------------------

def test_random_choices_depend_on_seed_and_position_only():
    transform = T.train_transform("extended", 224)
    a = [transform.sample(500, 375, T.image_rng(3, p)) for p in range(50)]
    b = [transform.sample(500, 375, T.image_rng(3, p)) for p in reversed(range(50))][::-1]
    assert a == b  # order of evaluation (worker scheduling) does not matter
    assert len({params.box for params in a}) > 40
    assert a != [transform.sample(500, 375, T.image_rng(4, p)) for p in range(50)]


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_load_image_gives_uint8_chw_for_any_jpeg_mode(helpers, tmp_path, mode):
    path = tmp_path / "image.JPEG"
    helpers.natural_image(80, 60).convert(mode).save(path, "JPEG", quality=90)
    for level in ("none", "minimal", "extended"):
        tensor = T.load_image(str(path), T.train_transform(level, 32), T.image_rng(0, 1))
        assert tensor.dtype == torch.uint8 and tensor.shape == (3, 32, 32)


def test_a_png_named_jpeg_still_loads(helpers, tmp_path):
    path = tmp_path / "image.JPEG"
    helpers.natural_image(300, 300).save(path, "PNG")
    tensor = T.load_image(str(path), T.eval_transform(64))
    assert tensor.shape == (3, 64, 64)


def test_unknown_level_and_crop_are_rejected():
    with pytest.raises(ValueError):
        T.train_transform("heavy", 224)
    with pytest.raises(ValueError):
        T.ImageTransform(224, "random")
