"""Decode backends for training batches of JPEG files: CPU workers, or the GPU.

- ``cpu``: loader workers decode with Pillow (libjpeg-turbo, DCT-reduced where the crop allows)
  and crop, resize and flip there (:meth:`ImageFileDataset.load_batch`).
- ``cuda``: workers only read bytes and make the decisions (:func:`load_encoded`, no decode);
  the training process decodes the micro-batch in one batched call of
  ``torchvision.io.decode_jpeg(list, device="cuda")`` (nvJPEG; batched since pytorch/vision#8496)
  and crops, resizes (bilinear, antialiased) and flips each image on the GPU (:func:`render`).
- ``dali``: the same bytes and decisions into NVIDIA DALI (:mod:`largebatch.data.dali`), which
  decodes only the crop (``fn.decoders.image_slice``, hardware nvJPEG where present).
- ``auto``: ``cuda`` when the training device is a CUDA GPU and torchvision can decode there,
  else ``dali`` when installed, else ``cpu``.

Every backend gets the same decisions (:mod:`largebatch.data.decisions`): image, crop box,
flip, side and colour factors come from (seed, stream position) and the stored image size, so
switching backend changes pixels only by the decoders' and resamplers' rounding, never which
image or which crop. Images a GPU JPEG decoder does not take (PNG, CMYK, progressive files it
rejects) are decoded by the CPU path and joined in the same batch; a file that fails on the GPU
goes through the CPU path too, which replaces it if it is unreadable.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from largebatch.data.files import MAX_REPLACEMENTS, READ_ERRORS, Batch, Decision, ImageFileDataset, _reason
from largebatch.data.transforms import PCA_EIGENVALUES, PCA_EIGENVECTORS, Params, image_rng
from largebatch.errors import ConfigError, DataError

BACKENDS = ("auto", "cpu", "cuda", "dali")
MIN_TORCHVISION = (0, 19)  # batched decode_jpeg on CUDA (pytorch/vision#8496)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("+")[0].split(".")[:2] if part.isdigit())


def cuda_unavailable(device: torch.device | None) -> str | None:
    """Why the ``cuda`` backend cannot run on ``device`` (None when it can)."""
    if device is None or torch.device(device).type != "cuda":
        return "the training device is not a CUDA GPU"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    try:
        import torchvision
        import torchvision.io
    except Exception as error:  # ImportError, or a torchvision built for another torch
        return f"torchvision does not import ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
    if _version(torchvision.__version__) < MIN_TORCHVISION:
        return f"torchvision {torchvision.__version__} decodes one image at a time; batched GPU decode needs 0.19+"
    return None


def dali_unavailable(device: torch.device | None) -> str | None:
    """Why the ``dali`` backend cannot run on ``device`` (None when it can)."""
    if device is None or torch.device(device).type != "cuda":
        return "the training device is not a CUDA GPU"
    try:
        import nvidia.dali
        import nvidia.dali.plugin.pytorch  # noqa: F401 (the import is the check)
    except Exception as error:
        return f"NVIDIA DALI does not import ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
    return None


def choose_backend(requested: str, device: torch.device | None) -> str:
    """The backend to use: ``requested`` if it can run, ``auto`` resolved; an explicit backend that
    cannot run is a one-line :class:`ConfigError` saying why."""
    if requested not in BACKENDS:
        raise ConfigError(f"data.decode must be one of {', '.join(BACKENDS)}, got '{requested}'")
    if requested == "auto":
        if cuda_unavailable(device) is None:
            return "cuda"
        if dali_unavailable(device) is None:
            return "dali"
        return "cpu"
    reason = {"cuda": cuda_unavailable, "dali": dali_unavailable}.get(requested, lambda _: None)(device)
    if reason:
        raise ConfigError(f"data.decode {requested}: {reason}; use --decode cpu or auto")
    return requested


# -------------------------------------------------------------------------------------------
# Workers: bytes and decisions, no decode

class EncodedBatch(NamedTuple):
    """A micro-batch as stored bytes plus every decision, for a GPU decoder."""
    data: torch.Tensor  # uint8 (total bytes,): the encoded images back to back
    offsets: list[int]  # image k is data[offsets[k]:offsets[k + 1]]
    params: tuple[Params, ...]  # box, flip, colour factors and side of each image
    decisions: tuple[Decision, ...]
    labels: torch.Tensor  # int64 (N,)
    decoded: dict[int, torch.Tensor]  # slot -> uint8 (side, side, 3) for images decoded on the CPU
    size: int
    skipped: list[tuple[str, str]]
    error: str | None = None


def load_encoded(dataset: ImageFileDataset, indices: Sequence[int], positions: Sequence[int] | None,
                 size: int = 0) -> EncodedBatch:
    """What a worker does for a GPU backend: read each image's bytes, make its decisions from its
    stored size (:meth:`ImageFileDataset.encoded_header`), decode nothing, except images a GPU
    JPEG decoder does not take. An image whose header does not read is replaced (training) or
    left out (evaluation) as in :meth:`ImageFileDataset.load_batch`."""
    size = size or dataset.transform.size
    pieces: list[bytes] = []
    params: list[Params] = []
    decisions: list[Decision] = []
    labels: list[int] = []
    decoded: dict[int, torch.Tensor] = {}
    skipped: list[tuple[str, str]] = []
    for slot, index in enumerate(int(i) for i in indices):
        candidates = [index] if positions is None else \
            [(index + k) % len(dataset) for k in range(min(MAX_REPLACEMENTS, len(dataset)))]
        position = int(positions[slot]) if positions is not None else -1
        for candidate in candidates:
            rng = image_rng(dataset.seed, position) if positions is not None else None
            try:
                data = dataset.read_bytes(candidate)
                width, height, gpu = dataset.encoded_header(candidate, data)
                choice = dataset.transform.sample(width, height, rng, size)
                if not gpu:
                    with Image.open(io.BytesIO(data)) as image:
                        decoded[len(labels)] = torch.from_numpy(dataset.transform.render(image, choice).copy())
            except DataError as error:
                return EncodedBatch(torch.zeros(0, dtype=torch.uint8), [0], (), (), torch.zeros(0, dtype=torch.int64),
                                    {}, size, skipped, str(error))
            except READ_ERRORS as error:
                skipped.append((dataset.path(candidate), _reason(error)))
                continue
            pieces.append(b"" if not gpu else data)
            params.append(choice)
            decisions.append(Decision(candidate, position, choice.box, choice.flip, size))
            labels.append(int(dataset.labels[candidate]))
            break
        else:
            if positions is not None:
                return EncodedBatch(torch.zeros(0, dtype=torch.uint8), [0], (), (), torch.zeros(0, dtype=torch.int64),
                                    {}, size, skipped, f"{dataset.path(index)}: it and the {len(candidates) - 1} "
                                    "images after it are all unreadable; check the data set")
    offsets = [0]
    for piece in pieces:
        offsets.append(offsets[-1] + len(piece))
    data = torch.frombuffer(bytearray(b"".join(pieces)), dtype=torch.uint8) if offsets[-1] else \
        torch.zeros(0, dtype=torch.uint8)
    if torch.utils.data.get_worker_info() is not None:
        data.share_memory_()
    return EncodedBatch(data, offsets, tuple(params), tuple(decisions), torch.tensor(labels, dtype=torch.int64),
                        decoded, size, skipped)


class EncodedReader(Dataset):
    """A loader worker's task for GPU backends (``file_batches(..., reader=EncodedReader)``)."""

    def __init__(self, dataset: ImageFileDataset):
        self.dataset = dataset

    def __getitems__(self, request) -> EncodedBatch:
        indices, positions, size = request
        return load_encoded(self.dataset, indices, positions, size)

    def __getitem__(self, index: int):
        raise NotImplementedError


# -------------------------------------------------------------------------------------------
# Crop, resize, flip and colour of a decoded image, on whatever device it is on

def round_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """The whole-pixel box :func:`render` crops (left, top, right, bottom), inside the image."""
    left, top = min(max(0, round(box[0])), width - 1), min(max(0, round(box[1])), height - 1)
    return left, top, max(left + 1, min(width, round(box[2]))), max(top + 1, min(height, round(box[3])))


def _blend(degenerate: torch.Tensor, image: torch.Tensor, factor: float) -> torch.Tensor:
    """Pillow's ``Image.blend`` on uint8 values held as float: clipped, then truncated."""
    return (degenerate + factor * (image - degenerate)).clamp(0, 255).floor()


def _luma(image: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB -> L (ITU-R 601-2, fixed point: (19595 R + 38470 G + 7471 B + 2^15) >> 16)."""
    return torch.floor((19595 * image[0] + 38470 * image[1] + 7471 * image[2] + 32768) / 65536)


def color_jitter(image: torch.Tensor, factors: Sequence[tuple[str, float]]) -> torch.Tensor:
    """Brightness, contrast, saturation as Pillow's ImageEnhance does them, on a float (3, H, W)
    image of uint8 values: blends towards black, the mean grey, or the grey image."""
    for name, factor in factors:
        if name == "brightness":
            image = _blend(torch.zeros_like(image), image, factor)
        elif name == "contrast":
            mean = torch.floor(_luma(image).mean() + 0.5)
            image = _blend(torch.full_like(image, float(mean)), image, factor)
        else:
            image = _blend(_luma(image).expand_as(image), image, factor)
    return image


def pca_lighting(image: torch.Tensor, alpha: Sequence[float]) -> torch.Tensor:
    """AlexNet PCA lighting (as :func:`largebatch.data.transforms.pca_lighting`) on (3, H, W)."""
    shift = PCA_EIGENVECTORS @ (np.asarray(alpha) * PCA_EIGENVALUES) * 255.0
    shift = torch.tensor(shift, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return torch.round(image + shift).clamp(0, 255)


def render(image: torch.Tensor, params: Params, size: int) -> torch.Tensor:
    """A decoded uint8 (3, H, W) image, on any device -> the uint8 (size, size, 3) training image:
    the crop box (rounded to whole pixels), one antialiased bilinear resize, flip, colour."""
    left, top, right, bottom = round_box(params.box, image.shape[2], image.shape[1])
    crop = image[:, top:bottom, left:right].unsqueeze(0).float()
    out = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    out = out.round().clamp(0, 255)
    if params.flip:
        out = out.flip(-1)
    if params.jitter:
        out = color_jitter(out, params.jitter)
    if params.lighting is not None:
        out = pca_lighting(out, params.lighting)
    return out.to(torch.uint8).permute(1, 2, 0)


def assemble(encoded: EncodedBatch, images: list[torch.Tensor | None], dataset: ImageFileDataset,
             device: torch.device) -> Batch:
    """The training batch from GPU-decoded images (None: the GPU decoder refused it) plus the
    CPU-decoded ones: uint8 (N, 3, side, side) channels-last on ``device``. A refused image goes
    through the CPU path (:meth:`ImageFileDataset.load_batch`), which replaces it if unreadable."""
    count, size = len(encoded.params), encoded.size
    out = torch.empty((count, size, size, 3), dtype=torch.uint8, device=device)
    labels = encoded.labels.clone()
    decisions = list(encoded.decisions)
    skipped = list(encoded.skipped)
    gpu_slots = [slot for slot in range(count) if slot not in encoded.decoded]
    for slot, image in zip(gpu_slots, images):
        if image is not None:
            out[slot] = render(image, encoded.params[slot], size)
            continue
        decision = decisions[slot]
        positions = [decision.position] if decision.position >= 0 else None
        fallback = dataset.load_batch([decision.index], positions, size)
        skipped += fallback.skipped
        if fallback.error:
            raise DataError(fallback.error)
        if not len(fallback.labels):  # evaluation: unreadable, left out below
            labels[slot] = -1
            continue
        out[slot] = fallback.images[0].permute(1, 2, 0).to(device)
        labels[slot] = fallback.labels[0]
        decisions[slot] = fallback.decisions[0]
    for slot, pixels in encoded.decoded.items():
        out[slot] = pixels.to(device, non_blocking=True)
    keep = labels >= 0
    if not bool(keep.all()):
        out, labels = out[keep.to(device)], labels[keep]
        decisions = [d for d, k in zip(decisions, keep.tolist()) if k]
    return Batch(out.permute(0, 3, 1, 2), labels, skipped, None, tuple(decisions))


class TorchvisionDecoder:
    """Batched nvJPEG decode through ``torchvision.io.decode_jpeg(list, device=...)``.

    The device is synchronised before and after the call: the hardware decoder has written into
    memory still in use on the caller's stream (meta-pytorch/torchcodec#1634, fixed only there)."""

    def __init__(self, device: torch.device):
        import torchvision.io
        self.io = torchvision.io
        self.device = torch.device(device)

    def decode(self, jpegs: list[torch.Tensor]) -> list[torch.Tensor | None]:
        if not jpegs:
            return []
        torch.cuda.synchronize(self.device)
        try:
            images = list(self.io.decode_jpeg(jpegs, mode=self.io.ImageReadMode.RGB, device=self.device))
        except RuntimeError:  # one bad file fails the batch: decode one by one to find it
            images = []
            for jpeg in jpegs:
                try:
                    images.append(self.io.decode_jpeg(jpeg, mode=self.io.ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    images.append(None)
        torch.cuda.synchronize(self.device)
        return images

    def __call__(self, encoded: EncodedBatch, dataset: ImageFileDataset) -> Batch:
        if encoded.error:
            return Batch(torch.zeros(0, 3, encoded.size, encoded.size, dtype=torch.uint8), encoded.labels,
                         encoded.skipped, encoded.error)
        jpegs = [encoded.data[encoded.offsets[slot]:encoded.offsets[slot + 1]]
                 for slot in range(len(encoded.params)) if slot not in encoded.decoded]
        return assemble(encoded, self.decode(jpegs), dataset, self.device)


def gpu_batches(encoded: Iterator[EncodedBatch], dataset: ImageFileDataset, backend: str,
                device: torch.device) -> Iterator[Batch]:
    """Decode a stream of :class:`EncodedBatch` on ``device`` with ``backend`` (cuda or dali)."""
    if backend == "cuda":
        decoder = TorchvisionDecoder(device)
    elif backend == "dali":
        from largebatch.data.dali import DaliDecoder
        decoder = DaliDecoder(device)
    else:
        raise ValueError(f"not a GPU backend: {backend}")
    for batch in encoded:
        yield decoder(batch, dataset)


__all__ = ["BACKENDS", "choose_backend", "cuda_unavailable", "dali_unavailable", "EncodedBatch", "load_encoded",
           "EncodedReader", "render", "assemble", "TorchvisionDecoder", "gpu_batches", "color_jitter", "pca_lighting",
           "round_box"]
