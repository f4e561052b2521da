"""Decode backends: the choice, the GPU path's crop/resize/flip/colour (run here on CPU tensors),
its worker side (bytes and decisions, no decode), and the GPU and DALI paths where they exist."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from largebatch.data import ImageFileDataset, training_batches
from largebatch.data import decode as D
from largebatch.data.files import Batch
from largebatch.data.sampler import StreamSampler
from largebatch.data.transforms import Params, eval_transform, image_rng, train_transform
from largebatch.errors import ConfigError

CUDA_DECODE = D.cuda_unavailable(torch.device("cuda")) is None
DALI = D.dali_unavailable(torch.device("cuda")) is None


def test_backend_choice():
    cpu = torch.device("cpu")
    assert D.choose_backend("auto", cpu) == "cpu" and D.choose_backend("auto", None) == "cpu"
    assert D.choose_backend("cpu", torch.device("cuda")) == "cpu"
    for backend in ("cuda", "dali"):
        with pytest.raises(ConfigError, match=f"data.decode {backend}: the training device is not a CUDA GPU") as error:
            D.choose_backend(backend, cpu)
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="data.decode must be one of"):
        D.choose_backend("nvjpeg", cpu)


def test_a_missing_torchvision_is_named(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_torchvision(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise ImportError("No module named 'torchvision'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert "torchvision does not import" in D.cuda_unavailable(torch.device("cuda"))


def decoded(image: Image.Image) -> torch.Tensor:
    """What a GPU JPEG decoder returns: uint8 (3, H, W), RGB, full size."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


@pytest.mark.parametrize("level", ["minimal", "extended"])
def test_render_on_tensors_matches_the_cpu_pipeline(helpers, level):
    jpeg = helpers.jpeg_bytes(helpers.natural_image(160, 120, seed=4))
    transform = train_transform(level, 48, fast=False)
    differences = []
    for position in range(12):
        with Image.open(io.BytesIO(jpeg)) as image:
            params = transform.sample(image.width, image.height, image_rng(1, position))
            if level == "extended":  # whole-pixel boxes, as random-resized crops are
                assert all(float(v).is_integer() for v in params.box)
            expected = transform.render(image, params).astype(np.int16)
            got = D.render(decoded(image), params, 48).numpy().astype(np.int16)
        assert got.shape == (48, 48, 3)
        differences.append(np.abs(got - expected))
    difference = np.stack(differences)
    # torch's antialiased bilinear follows Pillow's; boxes of the minimal level are rounded to whole pixels
    assert difference.mean() < (0.6 if level == "extended" else 2.5), difference.mean()
    flipped = D.render(decoded(Image.open(io.BytesIO(jpeg))), Params((0, 0, 160, 120), flip=True), 32)
    plain = D.render(decoded(Image.open(io.BytesIO(jpeg))), Params((0, 0, 160, 120), flip=False), 32)
    assert torch.equal(flipped, plain.flip(1)) and not torch.equal(flipped, plain)


def test_colour_on_tensors_matches_pillow(helpers):
    from largebatch.data.transforms import color_jitter, pca_lighting
    image = helpers.natural_image(40, 30, seed=2)
    tensor = decoded(image).float()
    for factors in ([("brightness", 1.3)], [("contrast", 0.6)], [("saturation", 1.4)],
                    [("saturation", 0.7), ("brightness", 0.8), ("contrast", 1.2)]):
        expected = np.asarray(color_jitter(image, factors)).astype(np.int16)
        got = D.color_jitter(tensor, factors).permute(1, 2, 0).numpy().astype(np.int16)
        assert np.abs(got - expected).max() <= 1, factors
    alpha = (0.05, -0.1, 0.02)
    expected = pca_lighting(np.asarray(image), alpha).astype(np.int16)
    got = D.pca_lighting(tensor, alpha).permute(1, 2, 0).numpy().astype(np.int16)
    assert np.abs(got - expected).max() <= 1


def folder_dataset(root, helpers, transform, count=10):
    paths = helpers.write_tree(root, {"n01": count // 2, "n02": count - count // 2}, size=(64, 48))
    names = [str(p.relative_to(root)) for p in paths]
    return ImageFileDataset(root, names, [0] * (count // 2) + [1] * (count - count // 2), transform, seed=5), paths


class PillowGPU:
    """A stand-in for the nvJPEG decoder: decodes each JPEG with Pillow (full size, RGB)."""

    def decode(self, jpegs):
        return [decoded(Image.open(io.BytesIO(j.numpy().tobytes()))) for j in jpegs]


def test_the_gpu_path_gets_the_decisions_of_the_cpu_path(tmp_path, helpers):
    transform = train_transform("extended", 32, color_jitter=0.0, lighting=0.0, fast=False)
    dataset, paths = folder_dataset(tmp_path, helpers, transform)
    # a PNG named .JPEG: no GPU JPEG decoder takes it, so the worker decodes it on the CPU
    Image.open(paths[3]).save(paths[3], "PNG")
    helpers.corrupt(paths[6])
    indices, positions = [1, 3, 6, 9], [40, 41, 42, 43]
    encoded = D.load_encoded(dataset, indices, positions, 32)
    assert list(encoded.decoded) == [1] and encoded.decoded[1].shape == (32, 32, 3)
    assert [p for p, _ in encoded.skipped] == [str(paths[6])]  # slot 2 took image 7 instead
    jpegs = [encoded.data[encoded.offsets[s]:encoded.offsets[s + 1]] for s in (0, 2, 3)]
    batch = D.assemble(encoded, PillowGPU().decode(jpegs), dataset, torch.device("cpu"))
    reference = dataset.load_batch(indices, positions, 32)
    assert batch.decisions == reference.decisions and [d.index for d in batch.decisions] == [1, 3, 7, 9]
    assert torch.equal(batch.labels, reference.labels)
    assert batch.images.shape == reference.images.shape == (4, 3, 32, 32)
    assert batch.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch.images[1], reference.images[1])  # decoded by the CPU path in the worker
    assert (batch.images.float() - reference.images.float()).abs().mean() < 1.0


def test_an_image_the_gpu_refuses_goes_through_the_cpu_path(tmp_path, helpers):
    dataset, paths = folder_dataset(tmp_path, helpers, eval_transform(24))
    helpers.truncate(paths[2])  # the header reads, the data does not
    encoded = D.load_encoded(dataset, [1, 2, 3], None, 24)
    assert len(encoded.params) == 3 and not encoded.skipped
    images = PillowGPU().decode([encoded.data[encoded.offsets[0]:encoded.offsets[1]]])
    batch = D.assemble(encoded, [images[0], None, decoded(Image.open(paths[3]))], dataset, torch.device("cpu"))
    assert [d.index for d in batch.decisions] == [1, 3] and [p for p, _ in batch.skipped] == [str(paths[2])]


def test_the_stream_takes_a_decode_flag(tmp_path, helpers):
    dataset, _ = folder_dataset(tmp_path, helpers, train_transform("minimal", 16))
    dataset.decode = "auto"
    stream = training_batches(dataset, StreamSampler(10, 4), 0, 2, 0, 1, 1, decode=None, device=torch.device("cpu"))
    assert stream.backend == "cpu" and len(list(stream)) == 2
    with pytest.raises(ConfigError, match="data.decode cuda"):
        training_batches(dataset, StreamSampler(10, 4), 0, 2, 0, 1, 1, decode="cuda", device=torch.device("cpu"))


@pytest.mark.skipif(not CUDA_DECODE, reason="needs a CUDA GPU and torchvision 0.19+")
def test_cuda_decode_matches_the_cpu_path(tmp_path, helpers):  # pragma: no cover - GPU machines only
    transform = train_transform("extended", 32, color_jitter=0.4, lighting=0.1, fast=False)
    dataset, _ = folder_dataset(tmp_path, helpers, transform)
    sampler = StreamSampler(10, 8, seed=1)
    device = torch.device("cuda")
    gpu = list(training_batches(dataset, sampler, 0, 3, 0, 1, 2, decode="cuda", device=device))
    cpu = list(training_batches(dataset, sampler, 0, 3, 0, 1, 2, decode="cpu", device=device))
    for gpu_step, cpu_step in zip(gpu, cpu):
        for (gpu_images, gpu_labels), (cpu_images, cpu_labels) in zip(gpu_step, cpu_step):
            assert gpu_images.device.type == "cuda" and torch.equal(gpu_labels, cpu_labels)
            assert (gpu_images.cpu().float() - cpu_images.float()).abs().mean() < 2.0


@pytest.mark.skipif(not DALI, reason="needs a CUDA GPU and NVIDIA DALI")
def test_dali_decode_matches_the_cpu_path(tmp_path, helpers):  # pragma: no cover - GPU machines only
    transform = train_transform("extended", 32, color_jitter=0.0, lighting=0.0, fast=False)
    dataset, _ = folder_dataset(tmp_path, helpers, transform)
    sampler = StreamSampler(10, 8, seed=1)
    device = torch.device("cuda")
    dali = list(training_batches(dataset, sampler, 0, 2, 0, 1, 1, decode="dali", device=device))
    cpu = list(training_batches(dataset, sampler, 0, 2, 0, 1, 1, decode="cpu", device=device))
    for dali_step, cpu_step in zip(dali, cpu):
        (dali_images, dali_labels), (cpu_images, cpu_labels) = dali_step[0], cpu_step[0]
        assert torch.equal(dali_labels.cpu(), cpu_labels)
        assert (dali_images.cpu().float() - cpu_images.float()).abs().mean() < 4.0


def test_gpu_batches_refuses_a_cpu_backend():
    with pytest.raises(ValueError, match="not a GPU backend"):
        next(D.gpu_batches(iter([]), None, "cpu", torch.device("cpu")))


def test_an_error_batch_passes_through(tmp_path, helpers):
    encoded = D.EncodedBatch(torch.zeros(0, dtype=torch.uint8), [0], (), (), torch.zeros(0, dtype=torch.int64), {},
                             16, [], "shard X: damaged shard")
    decoder = D.TorchvisionDecoder.__new__(D.TorchvisionDecoder)
    batch = decoder(encoded, None)
    assert isinstance(batch, Batch) and batch.error == "shard X: damaged shard"
