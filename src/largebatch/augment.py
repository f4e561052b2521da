"""Augmentation levels, and the batched augmentation that runs on the training device.

Four named levels (``--augmentation LEVEL``, recipe key ``data.augmentation``; docs/augmentation.md):

- ``none``: the images as stored.
- ``minimal``, the paper's ([L], You, Gitman, Ginsburg 2017): a random crop and a horizontal
  flip. Small images (28x28, 32x32): zero-pad P pixels on each side and crop back to the original
  size at a random offset (He et al. 2016, sec. 4.2: P = 4 on 32x32; P = 2 on 28x28, whose
  garments or digits fill the frame), flip with probability 1/2.
- ``extended`` ([L-ICLR], You et al. 2018): random-resized crop (Szegedy et al. 2015): a box of
  a fraction U(scale) of the image area with aspect ratio exp(U(log ratio)), resized back to the
  image size; flip; on RGB images colour jitter and AlexNet PCA lighting (Krizhevsky et al. 2012).
  Small images use the area range (0.35, 1) instead of ImageNet's (0.08, 1): 8% of a 28x28 image
  is an 8x8 patch, too little of a garment to name its class.
- ``strong``: extended, then random erasing (Zhong et al. 2020), then per image either mixup
  (Zhang et al. 2018) or cutmix (Yun et al. 2019), and label smoothing in the loss (Szegedy et
  al. 2016). The values (erasing 0.25, mixup alpha 0.2, cutmix alpha 1, one or the other with
  probability 1/2, smoothing 0.1) are those of widely used ImageNet recipes (DeiT, Touvron et
  al. 2021, for erasing, the switch and smoothing; Zhang et al.'s ImageNet alpha for mixup).

Where each part runs: image files (ImageNet) are cropped, flipped and colour-jittered per image
in the loader workers (:mod:`largebatch.data.transforms`); in-memory small images are augmented
here, as whole batches of tensors on the training device, as the fast CIFAR trainers do, so
augmentation never limits throughput. Erasing, mixup/cutmix and label smoothing always run here.

Determinism: all random choices of a step come from one generator seeded by (run seed, step),
drawn for the whole global batch and sliced at the micro-batch's offset in it. So a resumed run
continues the same augmented stream, and each image's crop, flip, colour, erasing box, mixing
weight and cutmix box are the same however the global batch is split into processes and
micro-batches. One exception, documented: a mixup/cutmix partner is the image at the mirrored
place in the same micro-batch (timm's convention), so *which* image is mixed in depends on the
micro-batch split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from largebatch.data.transforms import PCA_EIGENVALUES, PCA_EIGENVECTORS
from largebatch.errors import ConfigError

LEVELS = ("none", "minimal", "extended", "strong")
SMALL_IMAGE_LIMIT = 64  # sides up to this are "small": padded crops and the narrower resized-crop area range

# One odd 31-bit multiplier per mixing round of the pixel hash (:func:`hash_uniform`); below 2**31
# so that a 32-bit value times it stays inside int64.
_HASH_MULTIPLIERS = (0x7FEB352D, 0x5BD1E995)


@dataclass(frozen=True)
class LevelSettings:
    """What one augmentation level does on the training device (0 or False: off)."""

    level: str
    padding: int = 0                                   # minimal: zero padding before the random crop, pixels
    flip: bool = False                                 # horizontal flip with probability 1/2
    resized_crop: bool = False                         # extended: random-resized crop
    scale: tuple[float, float] = (0.35, 1.0)           # resized crop: fraction of the image area
    ratio: tuple[float, float] = (3 / 4, 4 / 3)        # resized crop: width / height
    color_jitter: float = 0.0                          # RGB: brightness, contrast, saturation from U(1-J, 1+J)
    lighting: float = 0.0                              # RGB: std of the PCA lighting noise
    erasing: float = 0.0                               # probability that an image gets an erased box
    erasing_area: tuple[float, float] = (0.02, 0.4)    # erased box: fraction of the image area
    erasing_ratio: tuple[float, float] = (0.3, 1 / 0.3)  # erased box: height / width
    mixup_alpha: float = 0.0                           # mixup weight ~ Beta(alpha, alpha)
    cutmix_alpha: float = 0.0                          # cutmix weight ~ Beta(alpha, alpha)
    cutmix_probability: float = 0.5                    # per image: cutmix with this probability, else mixup
    label_smoothing: float = 0.0                       # epsilon of the loss (Szegedy et al. 2016)

    @property
    def mixing(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @property
    def active(self) -> bool:
        """Whether the batch changes at all on the device (label smoothing acts in the loss only)."""
        return bool(self.padding or self.flip or self.resized_crop or self.color_jitter or self.lighting
                    or self.erasing or self.mixing)

    def describe(self) -> str:
        parts = []
        if self.padding:
            parts.append(f"pad {self.padding} + random crop")
        if self.resized_crop:
            parts.append(f"random-resized crop (area {self.scale[0]:g}-{self.scale[1]:g}, "
                         f"ratio {self.ratio[0]:.3g}-{self.ratio[1]:.3g})")
        if self.flip:
            parts.append("flip")
        if self.color_jitter:
            parts.append(f"colour jitter {self.color_jitter:g}")
        if self.lighting:
            parts.append(f"PCA lighting {self.lighting:g}")
        if self.erasing:
            parts.append(f"random erasing p {self.erasing:g}")
        if self.mixing:
            parts.append(f"mixup alpha {self.mixup_alpha:g} / cutmix alpha {self.cutmix_alpha:g} "
                         f"(cutmix p {self.cutmix_probability:g})")
        if self.label_smoothing:
            parts.append(f"label smoothing {self.label_smoothing:g}")
        where = ", ".join(parts) if parts else "nothing on the device"
        return f"{self.level}: {where}"


def level_settings(level: str, image_size: int, channels: int = 1, in_workers: bool = False,
                   color_jitter: float = 0.4, lighting: float = 0.1, label_smoothing: float = -1.0) -> LevelSettings:
    """The on-device part of ``level`` for images of side ``image_size`` with ``channels`` channels.

    ``in_workers``: the loader workers already cropped, flipped and coloured each image (image files,
    :func:`largebatch.data.transforms.train_transform`); only the batch-level part of ``strong``
    (erasing, mixup/cutmix, label smoothing) is left for the device. ``color_jitter`` and
    ``lighting`` apply to 3-channel images at the extended and strong levels (0: off).
    ``label_smoothing`` >= 0 replaces the level's own epsilon (0.1 at strong, else 0; a negative
    value keeps it): MLPerf's ResNet-50 smooths by 0.1 with crop-and-flip augmentation."""
    settings = _level_settings(level, image_size, channels, in_workers, color_jitter, lighting)
    if label_smoothing >= 0:
        settings = replace(settings, label_smoothing=label_smoothing)
    return settings


def _level_settings(level: str, image_size: int, channels: int, in_workers: bool, color_jitter: float,
                    lighting: float) -> LevelSettings:
    if level not in LEVELS:
        raise ConfigError(f"data.augmentation: expected one of {', '.join(LEVELS)}, got '{level}'")
    if level == "none":
        return LevelSettings(level)
    strong = dict(erasing=0.25, mixup_alpha=0.2, cutmix_alpha=1.0, cutmix_probability=0.5,
                  label_smoothing=0.1) if level == "strong" else {}
    if in_workers:
        return LevelSettings(level, **strong)
    small = image_size <= SMALL_IMAGE_LIMIT
    if level == "minimal":
        # He et al. 2016 pad 4 on 32x32 CIFAR images; 28x28 Fashion-MNIST/MNIST objects fill the frame: 2.
        return LevelSettings(level, padding=2 if image_size <= 28 else 4 if small else image_size // 8, flip=True)
    rgb = channels == 3
    return LevelSettings(level, flip=True, resized_crop=True, scale=(0.35, 1.0) if small else (0.08, 1.0),
                         color_jitter=color_jitter if rgb else 0.0, lighting=lighting if rgb else 0.0, **strong)


# -------------------------------------------------------------------------------------------
# The per-image random choices of one step

# Columns of the (global batch, K) float64 parameter table; a level fills only the ones it uses.
_COLUMNS = ("shift_y", "shift_x", "flip", "crop_left", "crop_top", "crop_width", "crop_height",
            "brightness", "contrast", "saturation", "light_0", "light_1", "light_2",
            "erase", "erase_left", "erase_top", "erase_width", "erase_height",
            "cutmix", "mix_weight", "cut_center_x", "cut_center_y")
_COLUMN = {name: index for index, name in enumerate(_COLUMNS)}


def step_generator(seed: int, step: int) -> np.random.Generator:
    """The random source of one optimizer step's augmentation: a function of (run seed, step) only."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, step, 0xA06])))


def draw_parameters(settings: LevelSettings, global_batch: int, seed: int, step: int) -> np.ndarray:
    """The random choices of every image of the global batch of ``step``: ``(global_batch, K)``,
    fractions of the image side for boxes, pixels for the padded-crop shifts."""
    rng = step_generator(seed, step)
    table = np.zeros((global_batch, len(_COLUMNS)))
    def put(name: str, values: np.ndarray) -> None:
        table[:, _COLUMN[name]] = values

    n = global_batch
    if settings.padding:
        put("shift_y", rng.integers(0, 2 * settings.padding + 1, n))
        put("shift_x", rng.integers(0, 2 * settings.padding + 1, n))
    if settings.resized_crop:
        # Szegedy et al. 2015: area fraction ~ U(scale), aspect ratio ~ exp(U(log ratio)); a box that
        # would leave the image is clamped to its side (instead of the per-image retry loop).
        area = rng.uniform(settings.scale[0], settings.scale[1], n)
        aspect = np.exp(rng.uniform(math.log(settings.ratio[0]), math.log(settings.ratio[1]), n))
        width, height = np.minimum(np.sqrt(area * aspect), 1.0), np.minimum(np.sqrt(area / aspect), 1.0)
        put("crop_width", width)
        put("crop_height", height)
        put("crop_left", rng.uniform(0, 1, n) * (1 - width))
        put("crop_top", rng.uniform(0, 1, n) * (1 - height))
    if settings.flip:
        put("flip", rng.uniform(0, 1, n) < 0.5)
    if settings.color_jitter:
        jitter = settings.color_jitter
        for name in ("brightness", "contrast", "saturation"):
            put(name, rng.uniform(max(0.0, 1 - jitter), 1 + jitter, n))
    if settings.lighting:
        for index in range(3):
            put(f"light_{index}", rng.normal(0, settings.lighting, n))
    if settings.erasing:
        # Zhong et al. 2020: with probability p, a box of area fraction ~ U(area) and height/width
        # ~ exp(U(log ratio)) at a uniform position, filled with random pixels.
        put("erase", rng.uniform(0, 1, n) < settings.erasing)
        area = rng.uniform(settings.erasing_area[0], settings.erasing_area[1], n)
        aspect = np.exp(rng.uniform(math.log(settings.erasing_ratio[0]), math.log(settings.erasing_ratio[1]), n))
        height, width = np.minimum(np.sqrt(area * aspect), 1.0), np.minimum(np.sqrt(area / aspect), 1.0)
        put("erase_width", width)
        put("erase_height", height)
        put("erase_left", rng.uniform(0, 1, n) * (1 - width))
        put("erase_top", rng.uniform(0, 1, n) * (1 - height))
    if settings.mixing:
        mixup_alpha, cutmix_alpha = settings.mixup_alpha, settings.cutmix_alpha
        if mixup_alpha and cutmix_alpha:
            cutmix = rng.uniform(0, 1, n) < settings.cutmix_probability
        else:
            cutmix = np.full(n, bool(cutmix_alpha))
        mixup_weight = rng.beta(mixup_alpha, mixup_alpha, n) if mixup_alpha else np.ones(n)
        cutmix_weight = rng.beta(cutmix_alpha, cutmix_alpha, n) if cutmix_alpha else np.ones(n)
        put("cutmix", cutmix)
        put("mix_weight", np.where(cutmix, cutmix_weight, mixup_weight))
        put("cut_center_x", rng.uniform(0, 1, n))
        put("cut_center_y", rng.uniform(0, 1, n))
    return table


# -------------------------------------------------------------------------------------------
# Operations on a batch (N, C, H, W) of float pixels in [0, 255]

def padded_crop_flip(images: torch.Tensor, padding: int, shift_y: torch.Tensor, shift_x: torch.Tensor,
                     flip: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-pad ``padding`` pixels on each side, then take the ``H x W`` window whose top-left corner
    is at (``shift_y``, ``shift_x``) in the padded image (each in ``[0, 2 * padding]``), mirrored left
    to right where ``flip``; one gather for the whole batch. A shift of ``padding`` keeps the image
    in place; 0 moves its content ``padding`` pixels down (or right)."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    device = images.device
    rows = shift_y.long().view(n, 1) + torch.arange(h, device=device)
    columns = torch.arange(w, device=device).expand(n, w)
    if flip is not None:
        columns = torch.where(flip.view(n, 1).bool(), w - 1 - columns, columns)
    columns = shift_x.long().view(n, 1) + columns
    batch_index = torch.arange(n, device=device).view(n, 1, 1, 1)
    channel_index = torch.arange(c, device=device).view(1, c, 1, 1)
    return padded[batch_index, channel_index, rows.view(n, 1, h, 1), columns.view(n, 1, 1, w)]


def resized_crop_flip(images: torch.Tensor, left: torch.Tensor, top: torch.Tensor, width: torch.Tensor,
                      height: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Each image's box (left, top, width, height as fractions of the side) resized bilinearly to
    the full ``H x W``, mirrored where ``flip``: one ``affine_grid`` + ``grid_sample`` for the batch.
    The full box (0, 0, 1, 1) without flip returns the image (samples fall on pixel centres)."""
    n, _, h, w = images.shape
    scale_x = width * (1 - 2 * flip.to(width.dtype)) if flip is not None else width
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    # normalised coordinates (align_corners=False: -1 and 1 are the image's outer edges):
    # output x in [-1, 1] reads input x = scale * x + centre, centre = 2 * (left + width / 2) - 1
    theta[:, 0, 0] = scale_x
    theta[:, 0, 2] = 2 * left + width - 1
    theta[:, 1, 1] = height
    theta[:, 1, 2] = 2 * top + height - 1
    grid = F.affine_grid(theta, [n, images.shape[1], h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _grey(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, as PIL's convert("L"): (N, 1, H, W)."""
    return (0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3])


def color_jitter(images: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                 saturation: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance's three operations, batched, in a fixed order (the per-image path shuffles
    it): brightness blends with black, contrast with the image's mean grey, saturation with the
    pixel's grey; factor 1 keeps the image. RGB in [0, 255]."""
    view = lambda factor: factor.to(images.dtype).view(-1, 1, 1, 1)  # noqa: E731
    out = (images * view(brightness)).clamp_(0, 255)
    mean = _grey(out).mean(dim=(2, 3), keepdim=True)
    out = ((out - mean) * view(contrast) + mean).clamp_(0, 255)
    grey = _grey(out)
    return ((out - grey) * view(saturation) + grey).clamp_(0, 255)


def pca_lighting(images: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """AlexNet lighting noise (Krizhevsky et al. 2012): add ``V (alpha * lambda) * 255`` to each
    pixel's RGB, ``alpha`` (N, 3) per image."""
    vectors = torch.tensor(PCA_EIGENVECTORS, dtype=images.dtype, device=images.device)
    values = torch.tensor(PCA_EIGENVALUES, dtype=images.dtype, device=images.device)
    shift = (alpha.to(images.dtype) * values) @ vectors.T * 255.0  # (N, 3)
    return (images + shift.view(-1, 3, 1, 1)).clamp_(0, 255)


def _box_mask(h: int, w: int, left: torch.Tensor, top: torch.Tensor, right: torch.Tensor,
              bottom: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) bool: pixel (y, x) with top <= y < bottom and left <= x < right (integer pixels)."""
    device = left.device
    ys = torch.arange(h, device=device).view(1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, w)
    view = lambda v: v.long().view(-1, 1, 1)  # noqa: E731
    inside = (ys >= view(top)) & (ys < view(bottom)) & (xs >= view(left)) & (xs < view(right))
    return inside.unsqueeze(1)


def hash_uniform(keys: torch.Tensor) -> torch.Tensor:
    """A float in [0, 1) for each int64 key: two multiply-xorshift rounds on its low 32 bits
    (after Wellons' lowbias32). Deterministic on every device, so erased boxes get the same
    noise pixels however the batch is split."""
    x = keys & 0xFFFFFFFF
    x = x ^ (x >> 16)
    x = (x * _HASH_MULTIPLIERS[0]) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * _HASH_MULTIPLIERS[1]) & 0xFFFFFFFF
    x = x ^ (x >> 16)
    return x.to(torch.float32) / 4294967296.0


def random_erasing(images: torch.Tensor, erase: torch.Tensor | np.ndarray, left: torch.Tensor, top: torch.Tensor,
                   width: torch.Tensor, height: torch.Tensor, noise_keys: torch.Tensor) -> torch.Tensor:
    """Zhong et al. 2020: where ``erase``, replace the box (fractions of the side) by uniform random
    pixels in [0, 255]; ``noise_keys`` (N,) int64 seed each image's noise. Only the erased images
    get noise computed (a quarter of them at the strong level); ``erase`` may be a host array,
    which spares a GPU the synchronisation of finding them."""
    n, c, h, w = images.shape
    if isinstance(erase, np.ndarray):
        chosen = torch.from_numpy(np.flatnonzero(erase)).to(images.device)
    else:
        chosen = torch.nonzero(erase.bool()).flatten()
    if not len(chosen):
        return images
    x0, y0 = (left[chosen] * w).floor(), (top[chosen] * h).floor()
    x1 = (x0 + (width[chosen] * w).round().clamp(min=1)).clamp(max=w)
    y1 = (y0 + (height[chosen] * h).round().clamp(min=1)).clamp(max=h)
    mask = _box_mask(h, w, x0, y0, x1, y1)
    pixel = torch.arange(c * h * w, device=images.device).view(1, c, h, w)
    noise = hash_uniform(noise_keys[chosen].view(-1, 1, 1, 1) * (c * h * w) + pixel).to(images.dtype) * 255.0
    out = images.clone()
    out[chosen] = torch.where(mask, noise, images[chosen])
    return out


def mix(images: torch.Tensor, labels: torch.Tensor, num_classes: int, cutmix: torch.Tensor,
        weight: torch.Tensor, center_x: torch.Tensor, center_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each image with its partner, the image at the mirrored place of the batch (i <-> N-1-i).

    mixup (Zhang et al. 2018): ``lam * x + (1 - lam) * x_partner``; cutmix (Yun et al. 2019): the
    partner's pixels in a box of side ``sqrt(1 - lam)`` times the image's, centred at
    (``center_x``, ``center_y``) and clipped to the image, with ``lam`` recomputed as the kept area.
    Targets: ``lam * onehot(y) + (1 - lam) * onehot(y_partner)``, (N, num_classes), rows summing to 1."""
    n, _, h, w = images.shape
    partner = images.flip(0)
    side = torch.sqrt((1 - weight).clamp(min=0))
    x0 = ((center_x - side / 2).clamp(0, 1) * w).round()
    x1 = ((center_x + side / 2).clamp(0, 1) * w).round()
    y0 = ((center_y - side / 2).clamp(0, 1) * h).round()
    y1 = ((center_y + side / 2).clamp(0, 1) * h).round()
    cutmix = cutmix.bool()
    kept = torch.where(cutmix, 1 - (x1 - x0) * (y1 - y0) / (h * w), weight).to(images.dtype)
    inside = _box_mask(h, w, x0, y0, x1, y1)
    keep_map = torch.where(cutmix.view(n, 1, 1, 1), (~inside).to(images.dtype), kept.view(n, 1, 1, 1))
    out = torch.lerp(partner, images, keep_map)  # partner + keep * (image - partner)
    # scatter, not F.one_hot: no range check, so no device-to-host synchronisation on a GPU
    one_hot = torch.zeros(n, num_classes, dtype=images.dtype, device=images.device).scatter_(1, labels.view(n, 1), 1.0)
    kept = kept.view(n, 1)
    return out, kept * one_hot + (1 - kept) * one_hot.flip(0)


# -------------------------------------------------------------------------------------------

class BatchAugmenter:
    """The augmentation of one run, applied to each micro-batch on the training device.

    ``augmenter(images, labels, step, offset) -> (images, targets)``: ``images`` (N, C, H, W) uint8
    or float pixels in [0, 255] (before normalisation), on the training device; ``labels`` int64
    (N,); ``step`` the optimizer step; ``offset`` the place of the micro-batch's first image in the
    global batch (``rank * per_process_batch`` + the images of this rank's earlier micro-batches).
    Returns float pixels (the input's float dtype, else float32; uint8 unchanged at ``none``) and
    targets: the int64 labels, or soft labels (N, num_classes) summing to 1 when mixup/cutmix is
    on. Pass the targets to :func:`batch_loss` with ``augmenter.label_smoothing``."""

    def __init__(self, level: str, num_classes: int, image_size: int, seed: int, global_batch: int, *,
                 channels: int = 1, in_workers: bool = False, color_jitter: float = 0.4, lighting: float = 0.1,
                 label_smoothing: float = -1.0):
        self.settings = level_settings(level, image_size, channels, in_workers, color_jitter, lighting,
                                       label_smoothing)
        self.num_classes = num_classes
        self.seed = seed
        self.global_batch = global_batch
        self._cached_step: int | None = None
        self._table: np.ndarray | None = None

    @property
    def label_smoothing(self) -> float:
        return self.settings.label_smoothing

    @property
    def active(self) -> bool:
        return self.settings.active

    def describe(self) -> str:
        return self.settings.describe()

    def parameters(self, step: int, offset: int, count: int, device: torch.device) -> dict[str, torch.Tensor]:
        """The random choices of images ``offset .. offset + count - 1`` of ``step``'s global batch."""
        rows = torch.from_numpy(self._host_rows(step, offset, count)).to(device, non_blocking=True)
        return {name: rows[:, index] for index, name in enumerate(_COLUMNS)}

    def _host_rows(self, step: int, offset: int, count: int) -> np.ndarray:
        if offset < 0 or offset + count > self.global_batch:
            raise ValueError(f"images {offset}..{offset + count - 1} are outside the global batch of "
                             f"{self.global_batch}")
        if step != self._cached_step:  # drawn once per step, for the whole global batch
            self._table = draw_parameters(self.settings, self.global_batch, self.seed, step)
            self._cached_step = step
        return self._table[offset:offset + count]

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, step: int,
                 offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.settings.active:
            return images, labels
        out, p = self._per_image(images, step, offset)
        if self.settings.mixing:
            return mix(out, labels, self.num_classes, p["cutmix"], p["mix_weight"], p["cut_center_x"],
                       p["cut_center_y"])
        return out, labels

    def augment_images(self, images: torch.Tensor, step: int, offset: int = 0) -> torch.Tensor:
        """The per-image part alone (crop, flip, colour, erasing; no mixing): the same for an image
        whatever the micro-batch split."""
        return self._per_image(images, step, offset)[0] if self.settings.active else images

    def _per_image(self, images: torch.Tensor, step: int, offset: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.settings
        n = len(images)
        dtype = images.dtype if images.is_floating_point() else torch.float32
        p = {k: v.to(dtype) for k, v in self.parameters(step, offset, n, images.device).items()}
        out = images.to(dtype)
        flip = p["flip"] if s.flip else None
        if s.padding:
            out = padded_crop_flip(out, s.padding, p["shift_y"], p["shift_x"], flip)
        elif s.resized_crop:
            out = resized_crop_flip(out, p["crop_left"], p["crop_top"], p["crop_width"], p["crop_height"], flip)
        elif flip is not None:
            out = torch.where(flip.bool().view(n, 1, 1, 1), out.flip(3), out)
        if s.color_jitter and out.shape[1] == 3:
            out = color_jitter(out, p["brightness"], p["contrast"], p["saturation"])
        if s.lighting and out.shape[1] == 3:
            out = pca_lighting(out, torch.stack([p["light_0"], p["light_1"], p["light_2"]], dim=1))
        if s.erasing:
            positions = torch.arange(offset, offset + n, device=images.device, dtype=torch.int64)
            keys = (self.seed * 1_000_003 + step) * self.global_batch + positions
            erase = self._host_rows(step, offset, n)[:, _COLUMN["erase"]] > 0
            out = random_erasing(out, erase, p["erase_left"], p["erase_top"], p["erase_width"],
                                 p["erase_height"], hash_uniform(keys).mul(2 ** 31).long())
        return out, p


def batch_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy summed over the batch, for int64 labels or soft labels (N, C) summing to 1;
    a drop-in for ``F.cross_entropy(logits, labels, reduction="sum")``.

    With label smoothing epsilon (Szegedy et al. 2016) the target is ``(1 - eps) * t + eps / C``:
    ``loss = -sum_i sum_c target_ic * log softmax(logits_i)_c``."""
    if targets.dtype == torch.int64:
        return F.cross_entropy(logits, targets, reduction="sum", label_smoothing=label_smoothing)
    return F.cross_entropy(logits, targets.to(logits.dtype), reduction="sum", label_smoothing=label_smoothing)
