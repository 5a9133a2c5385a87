"""--plan: what a run would do, from the same listing and join as the run (the first stage's
functions, here in this process), and what it would cost, timed on a sample on this machine:
read and decoded, given to the model, and taken through the run's own graph (pipeline/graph.py)
on DirectRunner, which times Beam's own work for each image and each job too. Reads a sample
of images and nothing else; writes nothing to the output (the graph writes to a temporary
folder, removed)."""

from __future__ import annotations

import dataclasses
import itertools
import queue
import random
import shutil
import tempfile
import time

import numpy as np

from pipeline.config import Config, ConfigError
from pipeline.graph import Portion, build_pipeline, classifier
from pipeline.numbers import duration
from pipeline.portions import ReadSlice, Spool, portions_needed, select_work
from transforms.done import JoinCounts, labelled_otherwise, not_tried_again
from transforms.feed import Failure, Feeder
from transforms.images import DEFAULT_MAX_PIXELS
from transforms.models.catalog import ModelError
from transforms.storage.listing import Work

MODEL_BATCHES = 3  # timed model calls at most, after one that traces and warms it
# ... and none after those that took this long: a costly model's one batch (4.7 s for the
# B3-sized one here) is timed well enough, and the graph takes a batch of its own.
MODEL_S = 2.0
# Images taken through the graph, at most: the sample again where it has fewer, and never
# more than the run reads. A job's own cost varies by a tenth of a second or two from one
# job to the next here; over 600 images that moves each image's time by a fraction of a
# millisecond (over 200 it moved a 1,000-image projection by a fifth).
GRAPH_IMAGES = 600
# And at most what decoding or the model (the slower) takes in about this many seconds (a
# batch at least): a costly model or large images keep --plan quick, and the graph's time
# per image is then theirs.
GRAPH_S = 2.0
PLAN_RUN_ID = "plan"  # the files of the graph's jobs, in their temporary folder
TEMP_PREFIX = "labeler-plan-"  # that folder's name, in the system's temporary folder


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
    graph_s: float = 0.0  # per read, the sample through the run's graph, its job's cost apart
    graphed: int = 0  # the images taken through the graph (the sample, again where too few)
    job_s: float = 0.0  # a job of the run's graph here, besides its images
    start_s: float = 0.0  # what the process's first such job takes more (paid once)
    jobs: int = 1  # the run's jobs: one, or one per portion

    def work_s(self) -> float:
        """The reads through the run's graph: decoding, the model and Beam's own work for
        each image, overlapping as they do in the run (graph_s); never less than the slower
        of decoding and the model, each timed on more images than the graph may be."""
        reads = self.counts.to_read
        return reads * max(self.decode_wall_s, self.model_s, self.graph_s)

    def projected_s(self) -> float:
        """Time here, as the run's summary counts it: the listing and the join, the model's
        load, the work, and each job's own cost (a run in portions makes one a portion),
        the first's more than the others'."""
        if not self.counts.to_read:
            return self.listing_s
        jobs_s = self.start_s + self.jobs * self.job_s
        return self.listing_s + self.load_s + self.work_s() + jobs_s


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
    calls, started = 0, time.monotonic()
    while calls < MODEL_BATCHES and (not calls or time.monotonic() - started < MODEL_S):
        handler.run_inference(batch, model)
        calls += 1
    return loaded, (time.monotonic() - started) / (calls * len(batch))


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
        # One image, twice, then the sample: what the process's first job pays once (its
        # first job, its first rows written: as the run's first portion does) is counted
        # once, and what a job that writes rows pays besides its images, once a job;
        # neither is spread over the images.
        slower = max(plan.decode_wall_s, plan.model_s)
        size = graph_sample_size(len(works), slower, config.batch_size)
        graphed = list(itertools.islice(itertools.cycle(sample), size))
        first = time_graph(config, graphed[:1])
        one = time_graph(config, graphed[:1])
        whole = time_graph(config, graphed) if len(graphed) > 1 else one
        plan.graphed = len(graphed)
        plan.start_s, plan.job_s, plan.graph_s = job_costs(first, one, whole, len(graphed))
        plan.jobs = jobs_needed(plan, config)
    return plan


def graph_sample_size(reads: int, per_image_s: float, batch_size: int) -> int:
    """Images to take through the graph, for a run of `reads` whose decoding or model (the
    slower) takes per_image_s an image: GRAPH_IMAGES, or what that does in about GRAPH_S (a
    batch at least); never more than the run reads."""
    size = GRAPH_IMAGES
    if per_image_s > 0:
        size = min(size, max(batch_size, int(GRAPH_S / per_image_s)))
    return min(size, reads)


def job_costs(first: float, one: float, whole: float, images: int) -> tuple[float, float, float]:
    """(what the process's first job takes more, a job's own cost, seconds per image) from
    the seconds of jobs of the graph: the first on one image, another on one, and one on
    `images` (one on a single image: the images' time is not told apart, 0)."""
    per_image = max(0.0, whole - one) / (images - 1) if images > 1 else 0.0
    return max(0.0, first - one), max(0.0, one - per_image), per_image


def time_graph(config: Config, sample: list[Work]) -> float:
    """Seconds a job of the run's graph (pipeline/graph.py) takes here on DirectRunner on
    `sample`, read from a spool as a portion is (pipeline/portions.py), the model loaded as
    a run's later portions find it; its rows go to a temporary folder, removed."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    output = tempfile.mkdtemp(prefix=TEMP_PREFIX)
    spool = Spool()
    try:
        for work in sample:
            spool.add(work)
        spool.seal()
        portion = Portion(ReadSlice(spool.take(len(sample))), PLAN_RUN_ID)
        started = time.monotonic()
        # flags=[]: not this command's arguments (Beam reads sys.argv by default).
        options = PipelineOptions(flags=[], runner="DirectRunner")
        with beam.Pipeline(options=options) as pipeline:
            build_pipeline(pipeline, dataclasses.replace(config, output=output), portion)
        return time.monotonic() - started
    finally:
        spool.close()
        shutil.rmtree(output, ignore_errors=True)


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


def graph_timing(plan: Plan) -> str:
    """What the run's graph was timed on and what it took ("" when not taken through it)."""
    if not plan.graphed:
        return ""
    repeated = f" (the {plan.sampled:,} repeated)" if plan.graphed > plan.sampled else ""
    return (
        f"; the run's graph on {plan.graphed:,} images{repeated}, {1000 * plan.graph_s:,.1f} ms "
        f"each, and {plan.job_s:,.1f}s a job (the first {plan.start_s:,.1f}s more)"
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
            f"model {1000 * plan.model_s:,.1f} ms per image in batches of {config.batch_size:,}"
            + graph_timing(plan),
            f"projected here: {duration(plan.projected_s())}; for the whole set: decode "
            f"{duration(counts.to_read * plan.decode_cpu_s)} of vCPU, model "
            f"{duration(counts.to_read * plan.model_s)} on this machine",
            committed_as(plan, config),
        ]
    lines.append(f"model version {config.model_version}; nothing was written")
    return "\n".join(f"plan: {line}" for line in lines)
