"""plan_time: hand-computed iterations, scaling with processors, overlap, bound, rates by MACs."""

import dataclasses

import pytest

from largebatch.errors import ConfigError
from largebatch.plan import DEVICES, NETWORKS, Device, ModelCost, Network, Setup, plan_time
from largebatch.plan.presets import TRAINING_FLOPS_PER_MAC, check_device_curve

MODEL = ModelCost("toy", macs=1e9, params=10_000_000)  # 40 MB of FP32 gradients
DEVICE = Device(name="toy-gpu", description="test", peak_flops=100e12, precision="fp16", memory_bytes=16e9,
                devices_per_node=1, intra_bandwidth=100e9, intra_latency=1e-6, network="toy-net",
                links_per_node=1, reference_model="toy", reference_images_per_second=1000.0, reference_macs=1e9)
NETWORK = Network("toy-net", "test", bandwidth=10e9, latency=1e-5)


def setup(**changes) -> Setup:
    return dataclasses.replace(Setup(model=MODEL, device=DEVICE, network=NETWORK, epochs=2, images=64_000), **changes)


def test_one_processor_takes_images_over_rate():
    plan = plan_time(setup(), batch_size=256, processors=1)
    assert plan.comm_s_per_iter == 0
    assert plan.total_s == pytest.approx(2 * 64_000 / 1000)
    assert plan.efficiency == 1
    assert plan.bound == "compute"
    # Also with a preset device: ResNet-50 on one V100 for 90 epochs of ImageNet.
    from largebatch.plan import model_cost
    v100 = Setup(model=model_cost("resnet50"), device=DEVICES["v100"], network=NETWORKS["ib-edr"])
    plan = plan_time(v100, 256, 1)
    assert plan.total_s == pytest.approx(90 * 1_281_167 / v100.rate())


def test_iteration_by_hand():
    # 4 processes, one per node, batch 400: 100 images at 1000/s = 0.1 s of compute; the ring
    # all-reduce of 40 MB at 10 GB/s: 2*3/4 * 4e7/1e10 = 6 ms + 6 * 10 us.
    plan = plan_time(setup(allreduce="ring"), batch_size=400, processors=4)
    assert plan.compute_s_per_iter == pytest.approx(0.1)
    assert plan.comm_s_per_iter == pytest.approx(0.006 + 6e-5)
    assert plan.iter_s == pytest.approx(0.10606)
    assert plan.epoch_s == pytest.approx(64_000 / 400 * 0.10606)
    assert plan.total_s == pytest.approx(2 * plan.epoch_s)
    assert plan.efficiency == pytest.approx(0.1 / 0.10606)


def test_doubling_processors_at_fixed_per_processor_batch():
    # A free network: doubling processors and batch halves the time exactly.
    free = setup(network=Network("free", "", bandwidth=1e30, latency=0.0))
    one, two = plan_time(free, 512, 4), plan_time(free, 1024, 8)
    assert two.compute_s_per_iter == pytest.approx(one.compute_s_per_iter)
    assert two.total_s == pytest.approx(one.total_s / 2)
    # A real network: compute per iteration unchanged, all-reduce no cheaper, so the time
    # falls, but by at most half, and efficiency does not rise.
    for p in (2, 4, 8, 64, 512):
        small, large = plan_time(setup(), 64 * p, p), plan_time(setup(), 128 * p, 2 * p)
        assert large.compute_s_per_iter == pytest.approx(small.compute_s_per_iter)
        assert large.comm_s_per_iter >= small.comm_s_per_iter
        assert small.total_s / 2 <= large.total_s < small.total_s
        assert large.efficiency <= small.efficiency


def test_efficiency_is_one_processor_time_over_processor_time():
    p = 16
    many, single = plan_time(setup(), 16 * p, p), plan_time(setup(), 16, 1)
    assert many.efficiency == pytest.approx(single.total_s / (p * many.total_s))


def test_overlap_hides_the_bucketed_all_reduce_as_ddp_does():
    base = setup(allreduce="ring", network=Network("slow", "", bandwidth=1e9, latency=0.0))
    # 2 processes: the all-reduce of 40 MB at 1 GB/s takes n * beta = 40 ms; compute 0.1 s, so
    # the backward pass takes 2/3 of it, 66.7 ms.
    plain = plan_time(base, 200, 2)
    assert plain.comm_s_per_iter == pytest.approx(0.04)
    assert plain.iter_s == pytest.approx(0.14)
    # One bucket holding the whole gradient: ready only when the backward pass ends, nothing hidden.
    one = plan_time(dataclasses.replace(base, overlap=True, bucket_bytes=40e6), 200, 2)
    assert one.exposed_comm_s_per_iter == pytest.approx(0.04)
    # Four 10 MB buckets, ready at 1/4, 2/4, 3/4 and all of 66.7 ms; each takes 10 ms, so each is
    # done before the next is ready and only the last one (10 ms) runs past the backward pass.
    four = plan_time(dataclasses.replace(base, overlap=True, bucket_bytes=10e6), 200, 2)
    assert four.exposed_comm_s_per_iter == pytest.approx(0.01)
    assert four.iter_s == pytest.approx(0.11)
    # Compute 0.03 s (backward 20 ms): the four buckets queue behind each other from 5 ms on and
    # end at 5 + 40 = 45 ms, 25 ms after the backward pass.
    short = plan_time(dataclasses.replace(base, overlap=True, bucket_bytes=10e6), 60, 2)
    assert short.exposed_comm_s_per_iter == pytest.approx(0.025)
    assert short.iter_s == pytest.approx(0.055)


def test_bound_names_the_limiting_resource():
    assert plan_time(setup(), 6400, 64).bound == "compute"
    slow = setup(allreduce="ring", network=Network("slow", "", bandwidth=1e8, latency=1e-6))
    plan = plan_time(slow, 64, 64)
    assert plan.bound == "bandwidth" and "bandwidth" in plan.explanation
    laggy = setup(allreduce="ring", network=Network("laggy", "", bandwidth=1e12, latency=1e-3))
    plan = plan_time(laggy, 64, 64)
    assert plan.bound == "latency" and "latency" in plan.explanation
    assert "\n" not in plan.explanation


def test_best_picks_the_fastest_algorithm():
    plan = plan_time(setup(), 64 * 64, 64)
    assert plan.comm_s_per_iter == pytest.approx(min(plan.allreduce_s.values()))
    assert plan.allreduce == min(plan.allreduce_s, key=plan.allreduce_s.get)


def test_rate_scales_with_macs_and_overrides():
    twice_as_big = ModelCost("big", macs=2e9, params=1)
    assert setup(model=twice_as_big).rate() == pytest.approx(500)
    # Efficiency factor: achieved FLOP/s = efficiency x peak.
    assumed = dataclasses.replace(DEVICE, reference_images_per_second=None, efficiency=0.3)
    assert setup(device=assumed).rate() == pytest.approx(0.3 * 100e12 / (TRAINING_FLOPS_PER_MAC * 1e9))
    assert setup(efficiency=0.6).rate() == pytest.approx(2 * 0.3 * 100e12 / (TRAINING_FLOPS_PER_MAC * 1e9))
    assert setup(images_per_second=42.0).rate() == 42.0


def test_16_bit_gradients_halve_the_bandwidth_term():
    slow = setup(allreduce="ring", network=Network("slow", "", bandwidth=1e9, latency=0.0))
    fp32, fp16 = plan_time(slow, 64, 8), plan_time(dataclasses.replace(slow, gradient_bytes=2), 64, 8)
    assert fp16.comm_s_per_iter == pytest.approx(fp32.comm_s_per_iter / 2)


def test_small_per_processor_batch_is_flagged_without_a_curve():
    device = dataclasses.replace(DEVICE, reference_batch=256)
    assert any("optimistic" in note for note in plan_time(setup(device=device), 16 * 8, 8).notes)
    assert not plan_time(setup(device=device), 256 * 8, 8).notes
    # With a curve the rate at 16 is modelled, not flagged.
    curved = dataclasses.replace(device, half_batch=10.0)
    assert not plan_time(setup(device=curved), 16 * 8, 8).notes


def test_bad_configurations_raise_config_errors():
    with pytest.raises(ConfigError, match="at least one image per processor"):
        plan_time(setup(), 8, 16)
    with pytest.raises(ConfigError, match="--processors"):
        plan_time(setup(), 8, 0)
    with pytest.raises(ConfigError, match="--allreduce"):
        plan_time(setup(allreduce="butterfly"), 8, 2)


def test_presets_cover_the_issue_names_and_are_sane():
    for name in ("knl", "skylake-8160", "p100", "p40", "v100", "a100", "h100", "tpu-v3", "cpu-local"):
        device = DEVICES[name]
        assert device.network in NETWORKS, name
        assert device.peak_flops > 0 and device.memory_bytes > 0 and device.source
        assert bool(device.reference_images_per_second) != bool(device.efficiency), name  # exactly one
        # Every curve and input pipeline is sourced and usable; GPUs and CPUs decode where stated.
        assert device.curve_source and device.input_source, name
        check_device_curve(device, name)
        assert device.decoder == ("same-cores" if name in ("knl", "skylake-8160", "cpu-local") else "other-cores")
        assert device.reference_batch and device.cores_per_node and device.decode_images_per_second, name
    assert DEVICES["v100"].curve_batches and not DEVICES["v100"].half_batch  # NVIDIA's table
    assert DEVICES["knl"].half_batch == pytest.approx(11.65, abs=0.01)       # the FP32 fit, borrowed
    assert DEVICES["tpu-v3"].half_batch == pytest.approx(58.4, abs=0.1)      # the mixed-precision fit
    for name in ("ethernet-10g", "ethernet-25g", "ethernet-50g", "ethernet-100g", "ib-fdr", "ib-edr",
                 "ib-hdr", "ib-ndr", "omnipath-100g", "tpu-ici"):
        assert NETWORKS[name].bandwidth > 0 and NETWORKS[name].latency > 0
    # Faster links are faster.
    rates = [NETWORKS[n].bandwidth for n in ("ethernet-10g", "ethernet-25g", "ethernet-50g", "ethernet-100g")]
    assert rates == sorted(rates)
    assert NETWORKS["ib-fdr"].bandwidth < NETWORKS["ib-edr"].bandwidth < NETWORKS["ib-hdr"].bandwidth < NETWORKS["ib-ndr"].bandwidth


# --- the rate curve and the input pipeline ---------------------------------------------------

TABLE = dataclasses.replace(DEVICE, reference_batch=64, curve_batches=(8, 16, 32, 64),
                            curve_images_per_second=(200.0, 320.0, 400.0, 500.0))


def test_one_processor_takes_images_over_the_rate_at_its_batch():
    # R(b) = 1000 x table(b) / table(64): 1000 at 64, 640 at 16, 400 at 8 images per iteration.
    for batch, rate in ((64, 1000.0), (16, 640.0), (8, 400.0)):
        plan = plan_time(setup(device=TABLE), batch_size=batch, processors=1)
        assert plan.images_per_second == pytest.approx(rate)
        assert plan.total_s == pytest.approx(2 * 64_000 / rate)
        assert plan.total_s == pytest.approx(2 * 64_000 / setup(device=TABLE).rate(batch))
    # The saturating form: R(b) = R(64) (b / (b + 16)) / (64 / 80).
    curved = dataclasses.replace(DEVICE, reference_batch=64, half_batch=16.0)
    plan = plan_time(setup(device=curved), batch_size=16, processors=1)
    assert plan.images_per_second == pytest.approx(1000 * 0.5 / 0.8)
    assert plan.total_s == pytest.approx(2 * 64_000 / (1000 * 0.5 / 0.8))


def test_overrides_of_the_curve():
    assert setup(device=TABLE, half_batch=0.0).rate(8) == pytest.approx(1000)       # constant
    assert setup(device=TABLE, half_batch=8.0).rate(8) == pytest.approx(1000 * 0.5 / (64 / 72))
    assert setup(device=TABLE, images_per_second=42.0).rate(8) == 42.0              # any batch


def test_v100_rate_falls_at_small_per_gpu_batch():
    from largebatch.plan import model_cost
    v100 = Setup(model=model_cost("resnet50"), device=DEVICES["v100"], network=NETWORKS["ib-edr"])
    at_32, at_256 = plan_time(v100, 32 * 1024, 1024), plan_time(v100, 256 * 1024, 1024)
    assert at_256.images_per_second == pytest.approx(1200)
    # NVIDIA's table: 2,146 / 3,382 images/s at 32 / 256, so 1,200 x 0.635 at 32.
    assert at_32.images_per_second == pytest.approx(1200 * 2146 / 3382)
    assert "DeepLearningExamples" in at_32.curve_source


PIPELINE = dataclasses.replace(DEVICE, devices_per_node=4, cores_per_node=8, decode_images_per_second=100.0,
                               intra_bandwidth=1e30, intra_latency=0.0)  # communication free in the node


def test_input_pipeline_on_other_cores_bounds_the_iteration():
    free = Network("free", "", bandwidth=1e30, latency=0.0)
    # 8 cores x 100 images/s shared by 4 processors: 200 images/s each; compute 1000 images/s.
    plan = plan_time(setup(device=PIPELINE, network=free), batch_size=400, processors=4)
    assert plan.input_images_per_second == pytest.approx(200)
    assert plan.compute_s_per_iter == pytest.approx(0.1)
    assert plan.input_s_per_iter == pytest.approx(0.5)
    assert plan.iter_s == pytest.approx(0.5)            # the slower of the two, in parallel
    assert plan.bound == "input" and "input-bound" in plan.explanation
    # Enough cores: compute-bound again, the pipeline hidden.
    plan = plan_time(setup(device=PIPELINE, network=free, cores_per_node=80), batch_size=400, processors=4)
    assert plan.iter_s == pytest.approx(0.1) and plan.bound == "compute"


def test_input_pipeline_on_the_same_cores_adds_to_the_iteration():
    free = Network("free", "", bandwidth=1e30, latency=0.0)
    same = dataclasses.replace(PIPELINE, decoder="same-cores", cores_per_node=80)
    plan = plan_time(setup(device=same, network=free), batch_size=400, processors=4)
    # 80 cores x 100 / 4 = 2,000 images/s: 50 ms of decoding added to 100 ms of compute.
    assert plan.input_s_per_iter == pytest.approx(0.05)
    assert plan.iter_s == pytest.approx(0.15)
    assert plan.bound == "compute"
    # One processor, no communication: images x epochs x (1/R + 1/R_in).
    single = plan_time(setup(device=same, network=free), batch_size=100, processors=1)
    assert single.total_s == pytest.approx(2 * 64_000 * (1 / 1000 + 1 / 8000))


def test_gpu_decoding_and_in_memory_data_add_nothing():
    free = Network("free", "", bandwidth=1e30, latency=0.0)
    for decoder in ("gpu", "none"):
        plan = plan_time(setup(device=PIPELINE, network=free, decoder=decoder), batch_size=400, processors=4)
        assert plan.input_s_per_iter == 0 and plan.iter_s == pytest.approx(0.1)
    # Small inputs (MNIST/CIFAR-sized) are held in memory: no decoding by default.
    small = ModelCost("tiny", macs=1e9, params=10_000_000, input_size=28)
    plan = plan_time(setup(device=PIPELINE, network=free, model=small), batch_size=400, processors=4)
    assert plan.decoder == "none" and plan.input_s_per_iter == 0
    with pytest.raises(ConfigError, match="--decoder"):
        plan_time(setup(device=PIPELINE, decoder="carrier-pigeon"), batch_size=400, processors=4)
