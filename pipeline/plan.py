"""--plan: what a run would do, from the same listing and join as the run (the first stage's
functions, here in this process), and what it would cost, timed on a sample on this machine.
Reads a sample of images and nothing else; writes nothing."""

from __future__ import annotations

import dataclasses
import queue
import random
import time

import numpy as np

from pipeline.config import Config, ConfigError
from pipeline.graph import classifier
from pipeline.numbers import duration
from pipeline.portions import portions_needed, select_work
from transforms.done import JoinCounts, labelled_otherwise, not_tried_again
from transforms.feed import Failure, Feeder
from transforms.images import DEFAULT_MAX_PIXELS
from transforms.models.catalog import ModelError
from transforms.storage.listing import Work

MODEL_BATCHES = 3  # timed model calls, after one that traces and warms it


@dataclasses.dataclass
class Plan:
    counts: JoinCounts = dataclasses.field(default_factory=JoinCounts)
    bytes_to_read: int = 0  # the listed sizes of the reads (unknown sizes not counted)
    unknown_sizes: int = 0
    sampled: int = 0
    decode_wall_s: float = 0.0  # per read, this machine, the run's concurrency
    decode_cpu_s: float = 0.0  # per read, CPU of this process
    model_s: float = 0.0  # per image, one model call on a full batch
    listing_s: float = 0.0  # listing the inputs and joining them with the output, here
    load_s: float = 0.0  # loading the model and its first (tracing) call, here
    job_s: float = 0.0  # a Beam job's own cost here, before and after its work
    jobs: int = 1  # the run's jobs: one, or one per portion

    def work_s(self) -> float:
        """The reads and decodes overlap with the model: the slower of the two."""
        reads = self.counts.to_read
        return max(reads * self.decode_wall_s, reads * self.model_s)

    def projected_s(self) -> float:
        """Time here, as the run's summary counts it: the listing and the join, the model's
        load, the work, and each job's own cost (a run in portions makes one a portion)."""
        if not self.counts.to_read:
            return self.listing_s
        return self.listing_s + self.load_s + self.work_s() + self.jobs * self.job_s


def make_plan(config: Config) -> tuple[Plan, list[Work]]:
    """The counts the run would report, and its work units (identical content together):
    the run's own join (transforms/done.py) on the same listing."""
    plan = Plan()
    works: list[Work] = []
    started = time.monotonic()
    plan.counts = select_work(config, works.append)
    plan.listing_s = time.monotonic() - started
    plan.bytes_to_read = sum(max(work[0].size, 0) for work in works)
    plan.unknown_sizes = sum(work[0].size < 0 for work in works)
    return plan, works


def time_decoding(config: Config, sample: list[Work]) -> tuple[float, float, list[np.ndarray]]:
    """Reads and decodes the sample as the run's feeder would: (wall s, CPU s) per read,
    and the decoded images."""
    feeder = Feeder(
        config.read_concurrency,
        config.max_inflight_bytes,
        config.max_object_bytes,
        config.storage_options,
    )
    done: queue.SimpleQueue = queue.SimpleQueue()
    wall, cpu = time.monotonic(), time.process_time()
    for work in sample:
        feeder.submit(work, config.image_size, DEFAULT_MAX_PIXELS, done)
    results = [done.get() for _ in sample]
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    images = [image for out in results if not isinstance(out, Failure) for _, image in [out]]
    return wall / len(sample), cpu / len(sample), images


def time_model(config: Config, images: list[np.ndarray]) -> tuple[float, float]:
    """(seconds to load the model and make its first, tracing call; seconds per image of
    the run's model call on full batches (grey images where the sample gave too few))."""
    started = time.monotonic()
    handler = classifier(config)
    model = handler.load_model()
    size = config.image_size
    grey = np.full((size, size, 3), 128, np.uint8)
    batch = (images + [grey] * config.batch_size)[: config.batch_size]
    handler.run_inference(batch, model)  # traces and warms
    loaded = time.monotonic() - started
    started = time.monotonic()
    for _ in range(MODEL_BATCHES):
        handler.run_inference(batch, model)
    return loaded, (time.monotonic() - started) / (MODEL_BATCHES * len(batch))


def estimate(config: Config) -> Plan:
    plan, works = make_plan(config)
    if works:
        sample = random.Random(0).sample(works, min(config.plan_sample, len(works)))
        plan.sampled = len(sample)
        plan.decode_wall_s, plan.decode_cpu_s, images = time_decoding(config, sample)
        try:
            plan.load_s, plan.model_s = time_model(config, images)
        except ModelError as e:  # an output saved_model.pb left open, found on loading
            raise ConfigError(str(e)) from None
        plan.job_s = time_job()
        plan.jobs = jobs_needed(plan, config)
    return plan


def time_job() -> float:
    """Seconds an empty Beam job of one element takes here on DirectRunner: what each of a
    run's jobs costs besides its work (building, starting and ending it)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    started = time.monotonic()
    with beam.Pipeline(options=PipelineOptions(runner="DirectRunner")) as pipeline:
        _ = pipeline | beam.Create([0]) | beam.Map(abs)
    return time.monotonic() - started


def jobs_needed(plan: Plan, config: Config) -> int:
    """The run's jobs: one per portion (pipeline/portions.py), or one (--portion_seconds 0)."""
    reads = plan.counts.to_read
    if config.portion_seconds <= 0 or not reads:
        return 1
    return portions_needed(reads, plan.work_s() / reads, config.portion_seconds)


def committed_as(plan: Plan, config: Config) -> str:
    """How a run here commits its work: in portions (pipeline/portions.py), or at its end."""
    if config.portion_seconds <= 0:
        return "committed as one job at its end (--portion_seconds 0)"
    n = plan.jobs
    return (
        f"committed in about {n:,} portion{'s' * (n != 1)} of --portion_seconds "
        f"{config.portion_seconds:g} on DirectRunner or Flink (one job on Dataflow)"
    )


def format_plan(plan: Plan, config: Config) -> str:
    counts = plan.counts
    lines = [
        f"inputs listed: {counts.listed:,} ({counts.distinct:,} distinct URIs)",
        f"already labelled (same source and model version): {counts.done:,}"
        + (f", {labelled_otherwise(counts.otherwise)}" if counts.otherwise else ""),
        f"changed since labelled: {counts.changed:,}",
        f"failed before, tried again (a reason that may pass): {counts.retried:,}"
        + (f"; {not_tried_again(counts.final, config.max_attempts)}" if counts.final else ""),
        f"to label: {counts.to_label:,}, of which {counts.identical:,} served by an identical "
        "image",
        f"to read: {counts.to_read:,} images, {plan.bytes_to_read / 2**20:,.1f} MiB"
        + (f" (+{plan.unknown_sizes:,} of unknown size)" if plan.unknown_sizes else ""),
    ]
    if plan.sampled:
        lines += [
            f"timed on this machine: {plan.sampled:,} images read and decoded "
            f"({1000 * plan.decode_wall_s:,.1f} ms each at --read_concurrency "
            f"{config.read_concurrency:,}, {1000 * plan.decode_cpu_s:,.1f} ms of CPU), the "
            f"model {1000 * plan.model_s:,.1f} ms per image in batches of {config.batch_size:,}",
            f"projected here: {duration(plan.projected_s())}; for the whole set: decode "
            f"{duration(counts.to_read * plan.decode_cpu_s)} of vCPU, model "
            f"{duration(counts.to_read * plan.model_s)} on this machine",
            committed_as(plan, config),
        ]
    lines.append(f"model version {config.model_version}; nothing was written")
    return "\n".join(f"plan: {line}" for line in lines)
