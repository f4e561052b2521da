"""Time to a target accuracy: the hardware model times the steps a batch size needs.

The hardware model (``estimate.plan_time``) gives the time of one iteration at global batch B on p
processors. How many iterations reach the target comes from McCandlish, Kaplan, Amodei et al. 2018
("An Empirical Model of Large-Batch Training", section 2):

    S(B)  = S_min (1 + B_noise / B)          steps to the target at batch B
    E(B)  = S(B) B = E_min (1 + B / B_noise)   examples, E_min = S_min B_noise
    time(B, p)            = S(B) x iteration(B, p)
    processor-hours(B, p) = time(B, p) x p / 3600

Below B_noise, doubling the batch nearly halves the steps; above it, steps approach S_min and the
extra examples are wasted work. On a grid of batch sizes and processor counts (p <= B) this module
names the configuration with the least wall time, the one with the fewest processor-hours, and the
fastest within twice the fewest processor-hours (in practice near B = B_noise, the paper's
trade-off point). Pure arithmetic, no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from largebatch.errors import ConfigError
from largebatch.plan.estimate import Setup, duration, plan_time

BALANCED_COST_FACTOR = 2.0  # "balanced": the fastest within this factor of the fewest processor-hours
NEAR_FASTEST = 1.05         # the fastest's reason names the cheapest configuration within 5% of its time


@dataclass(frozen=True)
class StepsModel:
    """S(B) = S_min (1 + B_noise / B), and where its two numbers came from."""

    min_steps: float
    noise_scale: float
    source: str = ""

    def __post_init__(self):
        if not self.min_steps > 0:
            raise ConfigError(f"--min-steps: expected a number > 0, got {self.min_steps}")
        if not self.noise_scale > 0:
            raise ConfigError(f"--noise-scale: expected a number > 0, got {self.noise_scale}")

    def steps(self, batch: float) -> float:
        return self.min_steps * (1.0 + self.noise_scale / batch)

    def examples(self, batch: float) -> float:
        return self.steps(batch) * batch

    @property
    def min_examples(self) -> float:
        return self.min_steps * self.noise_scale


@dataclass(frozen=True)
class Option:
    """One (batch, processors) configuration and its predicted time to the target."""

    batch_size: int
    processors: int
    steps: float
    iter_s: float
    time_s: float
    processor_hours: float
    efficiency: float
    bound: str
    explanation: str
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


def time_to_target(setup: Setup, model: StepsModel, batch_size: int, processors: int) -> Option:
    plan = plan_time(setup, batch_size, processors)
    steps = model.steps(batch_size)
    time_s = steps * plan.iter_s
    return Option(batch_size, processors, steps, plan.iter_s, time_s, time_s * processors / 3600,
                  plan.efficiency, plan.bound, plan.explanation, tuple(plan.notes))


def default_min_per_processor(setup: Setup) -> float:
    """The smallest per-processor batch on the grid by default: a quarter of the batch the device's
    rate was measured at (further below, the rate rests on the curve's smallest points or on a
    borrowed b_half, and without a curve ``plan_time`` warns that it is optimistic), else one image."""
    reference = setup.device.reference_batch
    if reference and not setup.images_per_second:
        return reference / 4
    return 1.0


@dataclass(frozen=True)
class Grid:
    """The configurations evaluated, and the grid they came from."""

    options: list[Option]
    batch_sizes: list[int]
    processor_counts: list[int]
    min_per_processor: float


def plan_grid(setup: Setup, model: StepsModel, batch_sizes: list[int], processor_counts: list[int],
              min_per_processor: float = 1.0) -> Grid:
    """Every (batch, processors) of the grid with at least ``min_per_processor`` images per processor."""
    minimum = max(1.0, min_per_processor)
    batch_sizes, processor_counts = sorted(set(batch_sizes)), sorted(set(processor_counts))
    options = [time_to_target(setup, model, batch, processors)
               for batch in batch_sizes for processors in processor_counts if batch >= processors * minimum]
    if not options:
        raise ConfigError(f"no configuration of the grid has at least {minimum:g} images per processor: give "
                          "larger batch sizes, fewer processors or a smaller --min-per-processor")
    return Grid(options, batch_sizes, processor_counts, minimum)


def fastest_per_batch(options: list[Option]) -> list[Option]:
    best: dict[int, Option] = {}
    for option in options:
        current = best.get(option.batch_size)
        if current is None or (option.time_s, option.processors) < (current.time_s, current.processors):
            best[option.batch_size] = option
    return [best[b] for b in sorted(best)]


@dataclass(frozen=True)
class Recommendation:
    label: str
    option: Option
    reason: str


def _hours(value: float) -> str:
    return f"{value:,.3g}" if value < 100 else f"{value:,.0f}"


def _fastest_reason(fastest: Option, grid: Grid, model: StepsModel) -> str:
    """Why the fastest configuration is not faster: what its neighbours on the grid would do."""
    options = grid.options
    by_key = {(o.batch_size, o.processors): o for o in options}
    why = [f"B = {fastest.batch_size / model.noise_scale:.2g} x B_noise"]
    larger_batches = [b for b in grid.batch_sizes if b > fastest.batch_size]
    if not larger_batches:
        why.append("the largest batch of the grid (widen --sweep batch=... to look further)")
    else:
        bigger = min((o for o in options if o.batch_size == larger_batches[0]), key=lambda o: o.time_s)
        limit = " (the most processors of the grid)" if bigger.processors == grid.processor_counts[-1] else ""
        why.append(f"batch {bigger.batch_size:,} would cut steps by {1 - bigger.steps / fastest.steps:.0%} but its "
                   f"fastest iteration takes {duration(bigger.iter_s)} on {bigger.processors:,} processors{limit}, "
                   f"against {duration(fastest.iter_s)}")
    more_counts = [p for p in grid.processor_counts if p > fastest.processors]
    if not more_counts:
        why.append("it uses the most processors of the grid (widen --sweep processors=...)")
    elif (fastest.batch_size, more_counts[0]) not in by_key:
        why.append(f"{more_counts[0]:,} processors would get fewer than {grid.min_per_processor:g} images each "
                   "(--min-per-processor)")
    else:
        more = by_key[(fastest.batch_size, more_counts[0])]
        why.append(f"{more.processors:,} processors would take {duration(more.iter_s)} per iteration "
                   f"({more.bound}-bound, {more.efficiency:.0%} efficiency)")
    near = min((o for o in options if o.time_s <= NEAR_FASTEST * fastest.time_s),
               key=lambda o: (o.processor_hours, o.time_s))
    if near != fastest:
        why.append(f"within {NEAR_FASTEST - 1:.0%} of this time, batch {near.batch_size:,} on {near.processors:,} "
                   f"processors takes {duration(near.time_s)} for {_hours(near.processor_hours)} processor-hours")
    return "; ".join(why)


def recommend(grid: Grid, model: StepsModel) -> list[Recommendation]:
    """The fastest configuration, the one with the fewest processor-hours (ties: the faster), and
    the fastest within ``BALANCED_COST_FACTOR`` x the fewest processor-hours; each with a reason."""
    options = grid.options
    fastest = min(options, key=lambda o: (o.time_s, o.processor_hours))
    least_hours = min(o.processor_hours for o in options)
    tolerance = 1 + 1e-9  # equal up to rounding
    cheapest = min((o for o in options if o.processor_hours <= least_hours * tolerance),
                   key=lambda o: (o.time_s, o.processors))
    balanced = min((o for o in options if o.processor_hours <= BALANCED_COST_FACTOR * least_hours * tolerance),
                   key=lambda o: (o.time_s, o.processor_hours))

    def relative(batch: int) -> str:
        return f"B = {batch / model.noise_scale:.2g} x B_noise"

    cheapest_why = (f"examples to the target, E(B) = E_min (1 + B / B_noise), grow with the batch "
                    f"({relative(cheapest.batch_size)}: {cheapest.steps * cheapest.batch_size / model.min_examples:.2f} "
                    "x E_min), "
                    + ("and one processor has no all-reduce" if cheapest.processors == 1 else
                       f"and at {cheapest.efficiency:.0%} efficiency few processor-hours go to communication"))
    balanced_why = (f"{relative(balanced.batch_size)}: {balanced.steps / model.min_steps:.2f} x S_min steps for "
                    f"{balanced.steps * balanced.batch_size / model.min_examples:.2f} x E_min examples "
                    f"(the paper's trade-off point is B = B_noise: 2 x S_min, 2 x E_min); "
                    f"{balanced.efficiency:.0%} scaling efficiency")
    return [Recommendation("fastest", fastest, _fastest_reason(fastest, grid, model)),
            Recommendation("fewest processor-hours", cheapest, cheapest_why),
            Recommendation(f"balanced (fastest within {BALANCED_COST_FACTOR:g}x the fewest processor-hours)",
                           balanced, balanced_why)]


def format_recommendation(item: Recommendation) -> str:
    o = item.option
    return (f"{item.label}: batch {o.batch_size:,} on {o.processors:,} processor{'s' if o.processors > 1 else ''}, "
            f"{duration(o.time_s)} ({o.steps:,.0f} steps of {duration(o.iter_s)}; "
            f"{_hours(o.processor_hours)} processor-hours). Why: {item.reason}.")


def format_report(setup: Setup, model: StepsModel, grid: Grid) -> str:
    options = grid.options
    lines = [f"time to target: {setup.model.name} on {setup.device.name}, {setup.network.name}; "
             f"S(B) = {model.min_steps:,.0f} x (1 + {model.noise_scale:,.0f} / B) steps ({model.source})",
             f"grid: batch {min(o.batch_size for o in options):,} to {grid.batch_sizes[-1]:,}, {grid.processor_counts[0]:,} to "
             f"{grid.processor_counts[-1]:,} processors, at least {grid.min_per_processor:g} images per processor "
             f"(--min-per-processor)",
             f"{'batch':>7} {'steps':>9} {'epochs':>8} {'processors':>10} {'iteration':>10} {'time':>9} "
             f"{'proc-hours':>10} {'effic.':>6}  bound"]
    for o in fastest_per_batch(options):
        epochs = o.steps * o.batch_size / setup.images
        lines.append(f"{o.batch_size:>7,} {o.steps:>9,.0f} {epochs:>8,.1f} {o.processors:>10,} {duration(o.iter_s):>10} "
                     f"{duration(o.time_s):>9} {_hours(o.processor_hours):>10} {o.efficiency:>6.0%}  {o.bound}")
    lines.append("(each row: the processor count that reaches the target soonest at that batch)")
    lines.append("")
    recommendations = recommend(grid, model)
    lines += [format_recommendation(r) for r in recommendations]
    notes = sorted({note for r in recommendations for note in r.option.notes})
    lines += [f"note: {note}" for note in notes]
    return "\n".join(lines)


def report_dict(setup: Setup, model: StepsModel, grid: Grid) -> dict:
    return {"model": setup.model.name, "device": setup.device.name, "network": setup.network.name,
            "steps_model": {**asdict(model), "min_examples": model.min_examples},
            "min_per_processor": grid.min_per_processor,
            "fastest_per_batch": [o.to_dict() for o in fastest_per_batch(grid.options)],
            "recommendations": [{"label": r.label, "reason": r.reason, **r.option.to_dict()}
                                for r in recommend(grid, model)],
            "grid": [o.to_dict() for o in grid.options]}


def steps_model_from_sources(noise_scale: float | None = None, min_steps: float | None = None,
                             from_run: str | None = None, from_study: str | None = None,
                             target_top1: float | None = None, variant: str = "lars") -> StepsModel:
    """S_min and B_noise from the command line, a run, or a study. Numbers given explicitly win; a
    run trained with ``--noise-scale`` gives B_noise (at the target when ``target_top1`` is given) and,
    when it reached the target in S steps at batch B, S_min = S / (1 + B_noise / B); a study gives
    S_min and B_crit (used as B_noise) from the fit of ``largebatch critical-batch``."""
    from pathlib import Path

    from largebatch import critical_batch

    if target_top1 is not None and not 0 < target_top1 <= 1:
        raise ConfigError(f"--target-top1: expected a fraction in (0, 1], got {target_top1}")
    sources = []
    fit = None
    if from_study:
        if target_top1 is None:
            raise ConfigError("--from-study: give --target-top1 X, the accuracy the steps are counted to")
        points = critical_batch.study_points(Path(from_study), target_top1, variant)
        by_batch = critical_batch.steps_by_batch(points)
        fit = critical_batch.fit_tradeoff(list(by_batch), list(by_batch.values()))
    reading = None
    if from_run:
        reading = critical_batch.noise_scale_from_run(from_run, target_top1)
    chosen_noise, chosen_steps = noise_scale, min_steps
    if chosen_noise is not None:
        sources.append("B_noise given")
    elif reading is not None:
        chosen_noise = reading.value
        sources.append(f"B_noise measured in {from_run} ({reading.note})")
    elif fit is not None:
        chosen_noise = fit.critical_batch
        sources.append(f"B_noise = B_crit fitted from {from_study} to top-1 {target_top1:g}")
    if chosen_steps is not None:
        sources.append("S_min given")
    elif fit is not None:
        chosen_steps = fit.min_steps
        sources.append(f"S_min fitted from {from_study}")
    elif from_run and target_top1 is not None and chosen_noise is not None:
        import tomllib
        crossing = critical_batch.steps_to_target(critical_batch.read_records(Path(from_run) / "metrics.jsonl"),
                                                  target_top1)
        if crossing is None:
            raise ConfigError(f"--from-run {from_run}: the run never reached top-1 {target_top1:g}, so its steps "
                              "cannot give S_min; give --min-steps S or a lower --target-top1")
        config_path = Path(from_run) / "config.toml"
        if not config_path.is_file():
            raise ConfigError(f"--from-run {from_run}: no config.toml, so the run's batch size is unknown; "
                              "give --min-steps S")
        batch = tomllib.loads(config_path.read_text(encoding="utf-8"))["run"]["batch_size"]
        chosen_steps = crossing.steps / (1.0 + chosen_noise / batch)
        sources.append(f"S_min = {crossing.steps:,.0f} steps at batch {batch} / (1 + B_noise / {batch})")
    if chosen_noise is None or chosen_steps is None:
        missing = " and ".join(name for name, value in (("--noise-scale N", chosen_noise), ("--min-steps S", chosen_steps))
                               if value is None)
        raise ConfigError(f"time to target needs {missing} (or --from-run DIR --target-top1 X, "
                          "or --from-study DIR --target-top1 X)")
    return StepsModel(chosen_steps, chosen_noise, "; ".join(sources))
