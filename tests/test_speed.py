"""Speed settings that must not change results: the device prefetcher, input settings,
channels_last and torch.compile of the training step, and the throughput benchmark's plumbing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from largebatch import models
from largebatch.data import Normalizer
from largebatch.data.prefetch import DevicePrefetcher, InputSettings, choose_input_settings, prefetch_to_device
from largebatch.errors import ConfigError, DataError
from largebatch.precision import Precision
from largebatch.train import forward_backward

ROOT = Path(__file__).resolve().parents[1]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def numbered_steps(count: int, accumulation: int = 2, pin: bool = False):
    """Steps whose micro-batches carry their own (step, micro-batch) number in every pixel and label."""
    for step in range(count):
        micro_batches = []
        for micro in range(accumulation):
            images = torch.full((3, 1, 4, 4), (step * accumulation + micro) % 256, dtype=torch.uint8)
            labels = torch.full((3,), step * accumulation + micro, dtype=torch.int64)
            if pin:
                images, labels = images.pin_memory(), labels.pin_memory()
            micro_batches.append((images, labels))
        yield micro_batches


def counting(steps, counter: list[int]):
    for step in steps:
        counter[0] += 1
        yield step


# --- the prefetcher ------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("depth", [1, 3])
def test_prefetcher_yields_every_step_once_in_order(device, depth):
    total, accumulation = 7, 2
    prefetcher = DevicePrefetcher(numbered_steps(total, accumulation, pin=device == "cuda"), torch.device(device),
                                  depth)
    seen = []
    for step in prefetcher:
        assert len(step) == accumulation
        for images, labels in step:
            assert images.device.type == device and labels.device.type == device
            assert images.dtype == torch.uint8 and images.shape == (3, 1, 4, 4)
            # work on the training stream between steps, as the training loop does
            (images.float() * 2).sum().item()
            assert torch.all(images.cpu() == labels[0].item() % 256)
            seen.append(int(labels[0]))
    assert seen == list(range(total * accumulation))
    with pytest.raises(StopIteration):
        next(prefetcher)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_prefetcher_reads_exactly_depth_steps_ahead(depth):
    total, produced = 6, [0]
    prefetcher = DevicePrefetcher(counting(numbered_steps(total), produced), torch.device("cpu"), depth)
    assert produced[0] == depth  # staged at construction
    for consumed in range(1, total + 1):
        next(prefetcher)
        assert produced[0] == min(total, consumed + depth)


def test_prefetcher_raises_a_source_error_at_its_own_step():
    def failing():
        yield from numbered_steps(3)
        raise DataError("bad batch")

    prefetcher = DevicePrefetcher(failing(), torch.device("cpu"), depth=2)
    assert len([next(prefetcher) for _ in range(3)]) == 3  # all steps before the error arrive
    with pytest.raises(DataError, match="bad batch"):
        next(prefetcher)
    with pytest.raises(StopIteration):
        next(prefetcher)


def test_prefetch_to_device_passes_through_on_cpu():
    steps = numbered_steps(2)
    assert prefetch_to_device(steps, torch.device("cpu"), depth=1) is steps
    assert prefetch_to_device(steps, torch.device("cuda"), depth=0) is steps


def test_prefetcher_refuses_depth_zero():
    with pytest.raises(ConfigError, match="data.prefetch"):
        DevicePrefetcher(numbered_steps(1), torch.device("cpu"), depth=0)


@CUDA
def test_cuda_prefetcher_copies_on_a_side_stream_and_frees_safely():
    """The tensors handed out live on the device; reusing their memory for later copies never
    corrupts a step still being read (record_stream): checked by value after a long kernel."""
    device = torch.device("cuda")
    prefetcher = DevicePrefetcher(numbered_steps(20, 1, pin=True), device, depth=2)
    big = torch.randn(2048, 2048, device=device)
    for index, step in enumerate(prefetcher):
        images, labels = step[0]
        for _ in range(5):
            big = big @ big / 2048  # keeps the training stream busy while later copies are issued
        assert int(labels[0]) == index and torch.all(images == index % 256).item()


class FakeStream:
    def __init__(self, name: str, log: list):
        self.name, self.log, self.waited = name, log, []

    def wait_event(self, event) -> None:
        self.waited.append(event)
        self.log.append(("wait", self.name, event.number))


class FakeTensor:
    """Stands in for a host tensor (``to``) and its device copy (``record_stream``)."""

    def __init__(self, name: str, log: list, current: list):
        self.name, self.log, self.current, self.recorded = name, log, current, []

    def to(self, device, non_blocking: bool = False):
        self.log.append(("copy", self.name, self.current[-1].name, non_blocking, str(device)))
        return FakeTensor(self.name + "@cuda", self.log, self.current)

    def record_stream(self, stream) -> None:
        self.recorded.append(stream)


def test_cuda_protocol_copies_on_the_side_stream_and_waits_only_for_its_own_step(monkeypatch):
    """The CUDA path with torch.cuda's stream, event and tensor calls replaced by recorders: runs
    on a CPU-only build, and checks the order of operations that makes the overlap safe."""
    log: list = []
    training = FakeStream("training", log)
    current = [training]  # the stream that torch.cuda.stream() makes current
    events = []

    class FakeEvent:
        def __init__(self):
            self.number = len(events)
            events.append(self)

        def record(self, stream):
            log.append(("event", stream.name, self.number))

    class stream_context:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            current.append(self.stream)

        def __exit__(self, *exc):
            current.pop()

    monkeypatch.setattr(torch.cuda, "Stream", lambda device: FakeStream("side", log))
    monkeypatch.setattr(torch.cuda, "stream", stream_context)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: training)

    total = 4
    steps = [[(FakeTensor(f"images{k}.{m}", log, current), FakeTensor(f"labels{k}.{m}", log, current))
              for m in range(2)] for k in range(total)]
    prefetcher = DevicePrefetcher(iter(steps), torch.device("cuda"), depth=1)
    for k in range(total):
        log.append(("handed", k))
        step = next(prefetcher)
        # step k waited for event k only, after which nothing is waited for until step k+1
        assert [event.number for event in training.waited] == list(range(k + 1))
        for images, labels in step:
            assert images.name.startswith(f"images{k}.") and images.name.endswith("@cuda")
            assert images.recorded == [training] and labels.recorded == [training]
    with pytest.raises(StopIteration):
        next(prefetcher)

    copies = [entry for entry in log if entry[0] == "copy"]
    assert len(copies) == total * 4
    assert all(stream == "side" and non_blocking and device == "cuda" for _, _, stream, non_blocking, device in copies)
    for k in range(total):
        # each step's event is recorded on the side stream right after its four copies
        position = log.index(("event", "side", k))
        assert [entry[1].split(".")[0][-1] for entry in log[position - 4:position]] == [str(k)] * 4
        # the copies of step k+1 are issued before step k's wait, i.e. before step k's kernels are queued
        if k + 1 < total:
            assert log.index(("copy", f"images{k + 1}.0", "side", True, "cuda")) < log.index(("wait", "training", k))


# --- input settings ------------------------------------------------------------------------------

@pytest.mark.parametrize("cores, processes, device, expected", [
    (2, 1, "cpu", InputSettings(1, 4, 0)),  # this VM: one worker, four ready batches
    (16, 1, "cuda", InputSettings(15, 2, 1)),  # one H100 machine of the issue
    (96, 8, "cuda", InputSettings(11, 2, 1)),  # an 8-GPU node: 12 cores per process, one for itself
    (256, 1, "cuda", InputSettings(32, 2, 1)),  # capped at 32 workers
    (4, 4, "cuda", InputSettings(1, 4, 1)),  # one core per process still gets a worker
    (3, 1, "cpu", InputSettings(2, 2, 0)),
])
def test_input_settings_from_the_cpu_count(cores, processes, device, expected):
    assert choose_input_settings(cores, processes, device) == expected


def test_input_settings_overrides():
    assert choose_input_settings(16, 1, "cuda", workers=0) == InputSettings(0, 4, 1)
    assert choose_input_settings(16, 1, "cuda", workers=3, loader_prefetch=6, device_prefetch=3) == \
        InputSettings(3, 6, 3)
    assert choose_input_settings(16, 1, "cuda", device_prefetch=0).device_prefetch == 0
    assert choose_input_settings(16, 1, "cpu", device_prefetch=3).device_prefetch == 0  # nothing to copy


@pytest.mark.parametrize("arguments", [dict(cores=0), dict(workers=-2), dict(device_prefetch=-2),
                                       dict(loader_prefetch=-1)])
def test_input_settings_reject_bad_values(arguments):
    values = dict(cores=8, local_processes=1, device_type="cuda") | arguments
    with pytest.raises(ConfigError):
        choose_input_settings(**values)


# --- same loss with channels_last and with torch.compile -----------------------------------------

def fast_resnet_step(model, images, labels, channels_last: bool, precision: Precision | None = None):
    """One training step's summed loss and gradients through train.forward_backward."""
    precision = precision or Precision.build("fp32", torch.device("cpu"))
    normalizer = Normalizer((0.286,), (0.353,), torch.device("cpu"), channels_last=channels_last)
    micro_batches = [(images[:8], labels[:8]), (images[8:], labels[8:])]  # two accumulated micro-batches
    model.zero_grad(set_to_none=True)
    loss = forward_backward(model, micro_batches, normalizer, precision, len(labels), ddp=False)
    return loss, [p.grad.clone() for p in model.parameters()]


def random_batch(count: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (count, 1, 28, 28), dtype=torch.uint8, generator=generator),
            torch.randint(0, 10, (count,), generator=generator))


def fresh_fast_resnet(channels_last: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = models.build("fast_resnet", num_classes=10, in_channels=1).train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def test_channels_last_gives_the_loss_and_gradients_of_contiguous():
    images, labels = random_batch()
    contiguous, channels_last = fresh_fast_resnet(False), fresh_fast_resnet(True)
    assert next(channels_last.parameters()).is_contiguous(memory_format=torch.channels_last)
    for step in range(2):  # the second step also compares the BN running statistics' effect and the update
        loss_a, grads_a = fast_resnet_step(contiguous, images, labels, channels_last=False)
        loss_b, grads_b = fast_resnet_step(channels_last, images, labels, channels_last=True)
        torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-5)
        for a, b in zip(grads_a, grads_b):
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)
        for model, grads in ((contiguous, grads_a), (channels_last, grads_b)):
            with torch.no_grad():
                for p, g in zip(model.parameters(), grads):
                    p -= 0.1 * g


def compiled_matches_eager(backend: str) -> None:
    images, labels = random_batch()
    eager, compiled_base = fresh_fast_resnet(True), fresh_fast_resnet(True)
    compiled = torch.compile(compiled_base, backend=backend)
    loss_eager, grads_eager = fast_resnet_step(eager, images, labels, channels_last=True)
    loss_compiled, grads_compiled = fast_resnet_step(compiled, images, labels, channels_last=True)
    assert loss_compiled.item() > 0
    torch.testing.assert_close(loss_compiled, loss_eager, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads_eager, grads_compiled):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)
    # BN running statistics were updated the same way through the compiled module
    for a, b in zip(eager.buffers(), compiled_base.buffers()):
        torch.testing.assert_close(b.float(), a.float(), rtol=1e-4, atol=1e-5)


def test_compiled_step_gives_the_loss_of_eager_traced_graph():
    """Dynamo capture and AOT autograd of the training step (no code generation: seconds)."""
    compiled_matches_eager("aot_eager")


@pytest.mark.slow  # about 40 s of C++ code generation on 2 CPU cores
def test_compiled_step_gives_the_loss_of_eager_inductor():
    """The default backend, what run.compile uses."""
    compiled_matches_eager("inductor")


# --- the throughput benchmark --------------------------------------------------------------------

def load_benchmark():
    """benchmarks/throughput.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("throughput_benchmark", ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_benchmark(arguments: list[str], tmp_path: Path, capsys) -> dict:
    out = tmp_path / "throughput.json"
    threads = torch.get_num_threads()
    try:
        assert load_benchmark().main([*arguments, "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "| reference" in printed and "| ours" in printed
    return json.loads(out.read_text())


def test_throughput_benchmark_runs_and_writes_its_json(tmp_path, capsys):
    report = run_benchmark(["--model", "fast_resnet", "--batch-size", "16", "--micro-batch-size", "8",
                            "--steps", "2", "--warmup", "1", "--repeats", "1", "--device", "cpu"], tmp_path, capsys)
    assert report["model"] == "fast_resnet" and report["batch_size"] == 16 and report["device_type"] == "cpu"
    assert report["reference_images_per_s"] > 0 and report["ours_images_per_s"] > 0
    assert report["ratio"] == pytest.approx(report["ours_images_per_s"] / report["reference_images_per_s"],
                                            rel=1e-2)
    assert report["ours"]["accumulation_steps"] == 2 and report["ours"]["precision"] == "fp32"
    assert report["ours"]["optimizer"] == "LARS" and report["reference"]["precision"] == "fp32"
    assert report["loader"] is None  # in-memory data: no decoding to measure


def test_throughput_benchmark_measures_the_loader_on_jpegs(tmp_path, capsys):
    report = run_benchmark(["--model", "resnet18", "--batch-size", "2", "--steps", "1", "--warmup", "0",
                            "--repeats", "1", "--device", "cpu", "--loader-images", "8", "--loader-workers", "1",
                            "--image-size", "64"], tmp_path, capsys)
    loader = report["loader"]
    assert loader["images"] == 8 and loader["workers"] == 1 and loader["images_per_s"] > 0
    assert loader["timed_images"] == 16  # two passes over the 8 files (8 batches of 2 for the one worker)
    assert loader["bound"] == ("input" if loader["images_per_s"] < report["ours_images_per_s"] else "compute")


def test_throughput_benchmark_rejects_a_micro_batch_that_does_not_divide(capsys):
    assert load_benchmark().main(["--model", "fast_resnet", "--batch-size", "10", "--micro-batch-size", "4",
                                  "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert "--micro-batch-size" in error and error.count("\n") == 1
