"""Per-image decoding and augmentation for image files, producing uint8 pixels.

Training (the ``extended`` level, Szegedy et al. 2015 as used by You et al. 2018 [L-ICLR]):
random-resized crop (area scale 0.08-1 of the image, aspect ratio 3/4-4/3), horizontal flip,
optional colour jitter (brightness, contrast, saturation, in random order) and optional AlexNet
PCA lighting noise (Krizhevsky et al. 2012). The paper's ``minimal`` level: resize to 256x256,
random 224x224 crop, flip. Evaluation resizes the way the training level does: after
``minimal`` it squashes to 256x256 and takes the centre 224x224 (Caffe's test phase, whose LMDB
holds the same 256x256 images as training's), after every other level it resizes the shorter
side to 256 and takes the centre crop (aspect ratio kept). Caffe's AlexNet input of 227 is
cropped from the same 256 pixels; for another ``image_size`` S both are scaled: resize to
round(S * 256 / 224), crop S.

Every geometric operation is one crop box in the coordinates of the stored image followed by
one bilinear (antialiased) resize of that box to ``size x size``. The box is sampled from the
stored image's size, read from the file header before anything is decoded, so the fast decode
path cannot change which boxes are drawn.

Fast decode: a JPEG can be decoded at 1/2, 1/4 or 1/8 of its size in the DCT domain (PIL's
``Image.draft``), which skips most of the inverse-DCT, upsampling and colour-conversion work.
We take the largest such reduction that still leaves the crop box at least ``size`` pixels on
each side, so the final resize still only shrinks (or, for small boxes, enlarges exactly as
the plain path would); the box is divided by the reduction factor. Entropy decoding cannot be
skipped, which bounds the gain (docs/data.md has measurements).

All random choices of one image come from one ``random.Random`` seeded by (run seed, stream
position) (:func:`image_rng`), so they do not depend on which worker process decodes the
image, how many there are, or whether the run was resumed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance

# AlexNet PCA lighting (Krizhevsky et al. 2012, section 4.1): eigenvalues and eigenvectors
# (columns) of the 3x3 covariance of ImageNet RGB pixels in [0, 1] units, as published with
# fb.resnet.torch and used since by most ImageNet training code.
PCA_EIGENVALUES = np.array([0.2175, 0.0188, 0.0045])
PCA_EIGENVECTORS = np.array([[-0.5675, 0.7192, 0.4009],
                             [-0.5808, -0.0045, -0.8140],
                             [-0.5836, -0.6948, 0.4203]])

CROPS = ("random-resized", "resize-random", "center", "squash-center")
Box = tuple[float, float, float, float]  # (left, top, right, bottom) in stored-image pixels, PIL's convention


def image_rng(seed: int, position: int) -> random.Random:
    """The random source of one image: a function of (run seed, stream position) only."""
    return random.Random(seed * (1 << 40) + position)


# Crop sizes taken from 256-pixel images: 224 (ResNet, torchvision) and 227 (Caffe's AlexNet,
# whose train_val.prototxt crops 227 x 227 from the 256 x 256 images of its LMDB).
CROPS_FROM_256 = (224, 227)


def eval_resize(size: int) -> int:
    """Side the image is resized to before a ``size`` crop: 256 for the crops ImageNet code
    takes from 256-pixel images (224, and Caffe's 227), ``round(size * 256 / 224)`` otherwise."""
    return 256 if size in CROPS_FROM_256 else int(round(size * 256 / 224))


# -------------------------------------------------------------------------------------------
# Crop boxes

def random_resized_crop_box(width: int, height: int, rng: random.Random,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Box:
    """Szegedy et al. (2015): a box covering a fraction ``U(scale)`` of the image area with aspect
    ratio ``exp(U(log ratio))``; 10 attempts, then the largest centred box whose aspect ratio is
    clamped into ``ratio``."""
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return (left, top, left + w, top + h)
    image_ratio = width / height
    if image_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif image_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h)


def resize_random_crop_box(width: int, height: int, rng: random.Random, size: int) -> Box:
    """The paper's minimal augmentation ([L]): resize to ``R x R`` (R = 256 for size 224, aspect
    not kept), then a random ``size x size`` crop; returned in stored-image coordinates."""
    resized = eval_resize(size)
    left, top = rng.randint(0, resized - size), rng.randint(0, resized - size)
    sx, sy = width / resized, height / resized
    return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


def squash_center_box(width: int, height: int, size: int) -> Box:
    """Resize to ``R x R`` (R = ``eval_resize(size)``, aspect not kept), take the centre ``size x
    size``: evaluation after the paper's minimal augmentation, in stored-image coordinates."""
    resized = eval_resize(size)
    offset = (resized - size) // 2
    sx, sy = width / resized, height / resized
    return (offset * sx, offset * sy, (offset + size) * sx, (offset + size) * sy)


def center_crop_box(width: int, height: int, size: int) -> Box:
    """Resize the shorter side to ``eval_resize(size)``, centre crop ``size``: the crop as a box in
    stored-image coordinates (a resize of this box equals resize-then-crop exactly)."""
    resized = eval_resize(size)
    if width <= height:
        new_width, new_height = resized, int(resized * height / width)
    else:
        new_width, new_height = int(resized * width / height), resized
    left = int(round((new_width - size) / 2.0))
    top = int(round((new_height - size) / 2.0))
    sx, sy = width / new_width, height / new_height
    return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


# -------------------------------------------------------------------------------------------
# Decoding a box

def draft_scale(box: Box, size: int) -> int:
    """Largest DCT reduction (1, 2, 4 or 8) that keeps the box at least ``size`` pixels on each side."""
    side = min(box[2] - box[0], box[3] - box[1])
    for scale in (8, 4, 2):
        if side >= scale * size:
            return scale
    return 1


def decode_box(image: Image.Image, box: Box, size: int, fast: bool = True) -> Image.Image:
    """The ``box`` of a freshly opened (not yet decoded) image, resized to ``size x size``, RGB.

    ``fast``: decode a JPEG at the largest DCT reduction that :func:`draft_scale` allows and
    divide the box by it; otherwise decode at full size (the baseline)."""
    scale = 1
    if fast and image.format == "JPEG":
        wanted = draft_scale(box, size)
        if wanted > 1:
            width, height = image.size
            drafted = image.draft("RGB", (width // wanted, height // wanted))
            if drafted is not None:
                scale = round(width / drafted[1][2])
    if image.mode != "RGB":
        image = image.convert("RGB")
    if scale > 1:
        box = (box[0] / scale, box[1] / scale, box[2] / scale, box[3] / scale)
    return image.resize((size, size), Image.Resampling.BILINEAR, box=box)


# -------------------------------------------------------------------------------------------
# Colour

def color_jitter(image: Image.Image, factors: Sequence[tuple[str, float]]) -> Image.Image:
    """Apply (operation, factor) pairs in order; operations: brightness (scale towards black),
    contrast (towards the mean grey), saturation (towards the grey image); factor 1 = no change."""
    enhancers = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast,
                 "saturation": ImageEnhance.Color}
    for name, factor in factors:
        image = enhancers[name](image).enhance(factor)
    return image


def pca_lighting(pixels: np.ndarray, alpha: Sequence[float]) -> np.ndarray:
    """AlexNet lighting noise: add ``V (alpha * lambda)`` (in [0, 1] units, times 255) to every
    pixel's RGB, ``alpha ~ N(0, sigma)`` per principal component; uint8 HWC in and out."""
    shift = PCA_EIGENVECTORS @ (np.asarray(alpha) * PCA_EIGENVALUES) * 255.0
    out = pixels.astype(np.float32) + shift.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# -------------------------------------------------------------------------------------------
# Transforms

@dataclass(frozen=True)
class Params:
    """The decisions for one image: the random choices and the output side (``size`` 0: the
    transform's own ``size``; progressive resizing sets it per step)."""
    box: Box
    flip: bool = False
    jitter: tuple[tuple[str, float], ...] = ()
    lighting: tuple[float, float, float] | None = None
    size: int = 0


@dataclass(frozen=True)
class ImageTransform:
    """Stored image -> ``size x size`` RGB uint8 pixels.

    ``crop``: ``random-resized`` (training, extended), ``resize-random`` (training, the paper's
    minimal: squash, random crop), ``squash-center`` (evaluation after minimal: squash, centre
    crop) or ``center`` (evaluation, or training without augmentation: shorter side, centre
    crop). ``color_jitter`` J
    draws brightness, contrast and saturation factors from U(1 - J, 1 + J) (0: off);
    ``lighting`` is the std of the PCA noise (AlexNet: 0.1; 0: off)."""

    size: int = 224
    crop: str = "center"
    flip: bool = False
    color_jitter: float = 0.0
    lighting: float = 0.0
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    fast: bool = True

    def __post_init__(self):
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}")

    @property
    def random(self) -> bool:
        return self.crop not in ("center", "squash-center") or self.flip or self.color_jitter > 0 or self.lighting > 0

    def sample(self, width: int, height: int, rng: random.Random | None, size: int = 0) -> Params:
        """The random choices for an image of ``width x height`` made ``size x size`` (0: the
        transform's ``size``); the same whatever the decode path."""
        side = size or self.size
        if self.crop == "squash-center":
            box = squash_center_box(width, height, side)
        elif self.crop == "center" or rng is None:
            box = center_crop_box(width, height, side)
        elif self.crop == "random-resized":
            box = random_resized_crop_box(width, height, rng, self.scale, self.ratio)
        else:
            box = resize_random_crop_box(width, height, rng, side)
        if rng is None:
            return Params(box, size=size)
        flip = self.flip and rng.random() < 0.5
        jitter: tuple[tuple[str, float], ...] = ()
        if self.color_jitter > 0:
            names = ["brightness", "contrast", "saturation"]
            rng.shuffle(names)
            jitter = tuple((name, rng.uniform(max(0.0, 1 - self.color_jitter), 1 + self.color_jitter))
                           for name in names)
        lighting = None
        if self.lighting > 0:
            lighting = (rng.gauss(0, self.lighting), rng.gauss(0, self.lighting), rng.gauss(0, self.lighting))
        return Params(box, flip, jitter, lighting, size)

    def render(self, image: Image.Image, params: Params) -> np.ndarray:
        """Decode and augment an opened image with the given choices: uint8 ``(side, side, 3)``,
        side ``params.size`` or the transform's ``size``."""
        out = decode_box(image, params.box, params.size or self.size, self.fast)
        if params.flip:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if params.jitter:
            out = color_jitter(out, params.jitter)
        pixels = np.asarray(out)
        if params.lighting is not None:
            pixels = pca_lighting(pixels, params.lighting)
        return pixels

    def __call__(self, image: Image.Image, rng: random.Random | None = None, size: int = 0) -> np.ndarray:
        return self.render(image, self.sample(image.width, image.height, rng, size))


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 HWC pixels -> a uint8 CHW tensor (a view: channels-last strides, no copy)."""
    return torch.from_numpy(np.array(pixels, copy=True)).permute(2, 0, 1)


def load_image(path: str, transform: ImageTransform, rng: random.Random | None = None) -> torch.Tensor:
    """Decode one image file with ``transform``: uint8 ``(3, size, size)``."""
    with Image.open(path) as image:
        return to_tensor(transform(image, rng))


def train_transform(level: str, size: int, color_jitter: float = 0.4, lighting: float = 0.1,
                    fast: bool = True) -> ImageTransform:
    """The per-image training transform of an augmentation level for full-size images.

    ``none``: resize + centre crop (as evaluation); ``minimal`` (the paper's [L]): resize to 256x256,
    random 224 crop, flip; ``extended`` ([L-ICLR], Szegedy et al.): random-resized crop, flip,
    colour jitter ``color_jitter`` and PCA lighting ``lighting`` (either 0: off); ``strong``:
    as extended per image (batch-level additions such as mixup act in the training process)."""
    if level == "none":
        return ImageTransform(size, "center", fast=fast)
    if level == "minimal":
        return ImageTransform(size, "resize-random", flip=True, fast=fast)
    if level in ("extended", "strong"):
        return ImageTransform(size, "random-resized", flip=True, color_jitter=color_jitter,
                              lighting=lighting, fast=fast)
    raise ValueError(f"unknown augmentation level {level!r}")


def eval_transform(size: int, fast: bool = True, level: str = "none") -> ImageTransform:
    """The evaluation transform that matches training at augmentation ``level``: after
    ``minimal`` squash to ``eval_resize(size)`` square and centre crop ``size`` (as training
    squashes before its random crop, and as Caffe's test phase does); otherwise resize the
    shorter side to ``eval_resize(size)`` and centre crop ``size``."""
    return ImageTransform(size, "squash-center" if level == "minimal" else "center", fast=fast)
