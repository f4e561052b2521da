"""NVIDIA DALI as a decoder only: our indices and decisions in, uint8 batches out (optional).

DALI's own readers restart at epoch 0 after a restart and keep their shuffle and augmentation
state per rank (NVIDIA/DALI#2849); ``fn.decoders.image_random_crop`` draws its crop from a
per-pipeline RNG. So DALI gets neither: the loader workers read the bytes of the images the
step-indexed sampler chose and make every decision (:func:`largebatch.data.decode.load_encoded`),
and the pipeline is fed them through ``fn.external_source`` (DALI docs, "parallel external
source"): ``fn.decoders.image_slice(device="mixed")`` decodes only the crop box (nvJPEG, the
A100/H100 hardware decoder where present), ``fn.resize`` makes it ``side x side``
(antialiased linear) and ``fn.flip`` flips it. Colour jitter and PCA lighting, when the level
asks for them, run afterwards on the GPU (:mod:`largebatch.data.decode`).

Import-guarded: this module imports DALI only when a :class:`DaliDecoder` is made, and
``data.decode auto`` chooses DALI only when it imports (:func:`largebatch.data.decode.dali_unavailable`).
"""

from __future__ import annotations

import numpy as np
import torch

from largebatch.data.decode import EncodedBatch, assemble, color_jitter, pca_lighting
from largebatch.data.files import Batch, ImageFileDataset

MAX_BATCH = 1024  # the most images one call decodes (a micro-batch)


class DaliDecoder:
    """Decode :class:`EncodedBatch` micro-batches on ``device`` with one DALI pipeline."""

    def __init__(self, device: torch.device, threads: int = 4, max_batch: int = MAX_BATCH):
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import feed_ndarray

        self.device = torch.device(device)
        self.feed_ndarray = feed_ndarray

        @pipeline_def(batch_size=max_batch, num_threads=threads, device_id=self.device.index or 0,
                      exec_async=False, exec_pipelined=False, prefetch_queue_depth=1)
        def pipeline():
            jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1)
            anchors = fn.external_source(name="anchors", dtype=types.FLOAT, ndim=1)  # (left, top), pixels
            shapes = fn.external_source(name="shapes", dtype=types.FLOAT, ndim=1)  # (width, height), pixels
            sizes = fn.external_source(name="sizes", dtype=types.FLOAT, ndim=1)  # (side, side)
            flips = fn.external_source(name="flips", dtype=types.INT32, ndim=0)
            images = fn.decoders.image_slice(jpegs, anchors, shapes, device="mixed", output_type=types.RGB,
                                             normalized_anchor=False, normalized_shape=False)
            images = fn.resize(images, size=sizes, antialias=True, interp_type=types.INTERP_LINEAR)
            return fn.flip(images, horizontal=flips)

        self.pipeline = pipeline()
        self.pipeline.build()

    def __call__(self, encoded: EncodedBatch, dataset: ImageFileDataset) -> Batch:
        if encoded.error:
            return Batch(torch.zeros(0, 3, encoded.size, encoded.size, dtype=torch.uint8), encoded.labels,
                         encoded.skipped, encoded.error)
        slots = [slot for slot in range(len(encoded.params)) if slot not in encoded.decoded]
        if not slots:
            return assemble(encoded, [], dataset, self.device)
        data = encoded.data.numpy()
        jpegs = [data[encoded.offsets[s]:encoded.offsets[s + 1]] for s in slots]
        boxes = [encoded.params[s].box for s in slots]
        self.pipeline.feed_input("jpegs", jpegs)
        self.pipeline.feed_input("anchors", [np.array(b[:2], np.float32) for b in boxes])
        self.pipeline.feed_input("shapes", [np.array((b[2] - b[0], b[3] - b[1]), np.float32) for b in boxes])
        self.pipeline.feed_input("sizes", [np.array((encoded.size, encoded.size), np.float32)] * len(slots))
        self.pipeline.feed_input("flips", [np.array(int(encoded.params[s].flip), np.int32) for s in slots])
        try:
            (images,) = self.pipeline.run()
        except RuntimeError:  # a file DALI cannot decode fails the batch: decode this one on the CPU
            return _on_cpu(encoded, dataset, self.device)
        out = torch.empty((len(slots), encoded.size, encoded.size, 3), dtype=torch.uint8, device=self.device)
        self.feed_ndarray(images.as_tensor(), out, cuda_stream=torch.cuda.current_stream(self.device))
        decoded = []
        for slot, image in zip(slots, out):
            params = encoded.params[slot]
            if params.jitter or params.lighting is not None:
                chw = image.permute(2, 0, 1).float()
                if params.jitter:
                    chw = color_jitter(chw, params.jitter)
                if params.lighting is not None:
                    chw = pca_lighting(chw, params.lighting)
                image = chw.to(torch.uint8).permute(1, 2, 0)
            decoded.append(image)
        return _assemble_rendered(encoded, slots, decoded, dataset, self.device)


def _on_cpu(encoded: EncodedBatch, dataset: ImageFileDataset, device: torch.device) -> Batch:
    """The micro-batch decoded by the CPU path from the same decisions (unreadable files replaced
    or left out there), on ``device``."""
    positions = [d.position for d in encoded.decisions]
    batch = dataset.load_batch([d.index for d in encoded.decisions],
                               positions if all(p >= 0 for p in positions) else None, encoded.size)
    return batch._replace(images=batch.images.to(device), skipped=list(encoded.skipped) + batch.skipped)


def _assemble_rendered(encoded: EncodedBatch, slots: list[int], images: list[torch.Tensor],
                       dataset: ImageFileDataset, device: torch.device) -> Batch:
    """Like :func:`assemble`, for images DALI already cropped, resized and flipped (HWC)."""
    size = encoded.size
    out = torch.empty((len(encoded.params), size, size, 3), dtype=torch.uint8, device=device)
    for slot, image in zip(slots, images):
        out[slot] = image
    for slot, pixels in encoded.decoded.items():
        out[slot] = pixels.to(device, non_blocking=True)
    return Batch(out.permute(0, 3, 1, 2), encoded.labels, list(encoded.skipped), None, encoded.decisions)
