"""A user's map-style data set, seen through the engine's batch interface.

``MapDataset(dataset)`` wraps anything with ``len(dataset)`` and ``dataset[i] -> (image, label)``
(a ``torch.utils.data.Dataset``, a list of pairs ...). Images may be

- uint8 tensors ``(C, H, W)`` or ``(H, W)``, as largebatch's own data sets and torchvision's
  ``decode_image`` give;
- float tensors ``(C, H, W)`` with values in [0, 1], as torchvision's ``ToTensor`` gives (scaled
  to 0..255 and rounded);
- numpy uint8 arrays ``(H, W)`` or ``(H, W, C)``, and PIL images (converted with ``numpy.asarray``).

Every image must have the shape of the first one (fixed-size inputs: resize in the data set).
Labels are integers in ``[0, num_classes)``. Images are read in the training process; the
normalisation statistics are measured on up to 512 images spread evenly over the training set.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from largebatch.errors import DataError

STATISTICS_IMAGES = 512


def to_uint8_chw(image: Any, where: str) -> torch.Tensor:
    """One image as a uint8 ``(C, H, W)`` tensor, or a DataError naming ``where``."""
    if hasattr(image, "mode") and hasattr(image, "size") and not isinstance(image, (torch.Tensor, np.ndarray)):
        image = np.asarray(image)  # a PIL image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise DataError(f"{where}: expected a uint8 array (H, W) or (H, W, C), got {image.dtype} {image.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(image))
        return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()
    if not isinstance(image, torch.Tensor):
        raise DataError(f"{where}: expected an image tensor, array or PIL image, got {type(image).__name__}")
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim != 3:
        raise DataError(f"{where}: expected an image of shape (C, H, W) or (H, W), got {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image
    if image.is_floating_point():
        return (image.clamp(0, 1) * 255).round().to(torch.uint8)
    raise DataError(f"{where}: expected uint8 or float pixels, got {image.dtype}")


class MapDataset:
    """``dataset[i] -> (image, label)`` as ``batch(indices) -> (uint8 images, int64 labels)``."""

    def __init__(self, dataset: Any, name: str = "dataset"):
        try:
            size = len(dataset)
        except TypeError:
            raise DataError(f"{name}: needs len() and indexing (a map-style data set)") from None
        if size == 0:
            raise DataError(f"{name}: has no images")
        self.dataset, self.name, self.size = dataset, name, size
        self.num_classes = 0  # known once info() ran: labels are then checked against it
        first, _ = self._item(0)
        self.shape = tuple(first.shape)

    def __len__(self) -> int:
        return self.size

    def _item(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise DataError(f"{self.name}[{index}]: expected an (image, label) pair")
        image, label = item
        label = int(label.item() if isinstance(label, torch.Tensor) else label)
        return to_uint8_chw(image, f"{self.name}[{index}]"), label

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for index in indices.tolist():
            image, label = self._item(index)
            if tuple(image.shape) != self.shape:
                raise DataError(f"{self.name}[{index}]: image shape {tuple(image.shape)} differs from the first "
                                f"image's {self.shape}; resize in the data set")
            if label < 0 or (self.num_classes and label >= self.num_classes):
                raise DataError(f"{self.name}[{index}]: label {label} is outside [0, {self.num_classes or 'classes'})")
            images.append(image)
            labels.append(label)
        return torch.stack(images), torch.tensor(labels, dtype=torch.int64)

    def info(self, num_classes: int, test: MapDataset, model: torch.nn.Module | None = None):
        """The :class:`largebatch.data.DataInfo` of this training set and ``test``."""
        from largebatch.data import DataInfo
        channels, height, width = self.shape
        if height != width:
            raise DataError(f"{self.name}: images are {height}x{width}; square images are expected (resize or crop "
                            "in the data set)")
        if test.shape != self.shape:
            raise DataError(f"test set images are {test.shape}, training images {self.shape}")
        if not num_classes and model is not None:
            with torch.no_grad():
                was_training = model.training
                model.eval()
                num_classes = int(model(torch.zeros(1, *self.shape)).shape[-1])
                model.train(was_training)
        if not num_classes:
            raise DataError("num_classes: give it (the model's output size)")
        self.num_classes = test.num_classes = num_classes
        sample = torch.linspace(0, self.size - 1, min(self.size, STATISTICS_IMAGES)).round().long()
        pixels = self.batch(sample.unique())[0].to(torch.float64) / 255.0
        mean = tuple(pixels.mean(dim=(0, 2, 3)).tolist())
        std = tuple(max(value, 1e-3) for value in pixels.std(dim=(0, 2, 3)).tolist())
        return DataInfo("custom", num_classes, channels, height, mean, std, self.size, len(test),
                        tuple(str(label) for label in range(num_classes)))
