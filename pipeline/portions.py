"""A long run in portions (DirectRunner, Flink): the work the join leaves is spooled to local
disk, then labelled as a sequence of jobs of about --portion_seconds each; each job commits
its rows when it ends, so a crash loses only the portion in flight and the same command
resumes from the rows committed (transforms/done.py)."""

from __future__ import annotations

import array
import dataclasses
import io
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Iterator

import apache_beam as beam

from pipeline.config import Config
from transforms import metrics
from transforms.done import JoinCounts, existing, join
from transforms.inputs import list_inputs
from transforms.storage.listing import Work

# Work units of the first portion, before any rate is measured, and of the smallest: a
# portion's fixed cost (its job's start and end, about a second on DirectRunner) stays small
# beside its work however short --portion_seconds is.
FIRST_PORTION = 64
# At most this many work units a portion, whatever the rate: what DirectRunner holds between
# a job's stages grows with its portion, never with the run's input.
MAX_PORTION = 100_000
# A portion's work units travel inside its job's graph (beam.Create): a job submitted to a
# job service (Flink) keeps that message to a few MB.
MAX_SUBMITTED_PORTION = 20_000


def next_portion_size(
    works: int, seconds: float, target_seconds: float, most: int = MAX_PORTION
) -> int:
    """Work units for the next portion: what the last one's rate (`works` in `seconds`,
    its fixed costs included) does in target_seconds, from FIRST_PORTION to `most`."""
    if works <= 0 or seconds <= 0:
        return FIRST_PORTION
    return max(FIRST_PORTION, min(most, round(works / seconds * target_seconds)))


def portions_needed(to_read: int, seconds_per_read: float, target_seconds: float) -> int:
    """How many portions a run of to_read work units at seconds_per_read has (--plan): the
    first of FIRST_PORTION, then portions of target_seconds, each at most MAX_PORTION."""
    if to_read <= 0:
        return 0
    rest = max(0, to_read - FIRST_PORTION)
    size = next_portion_size(1, seconds_per_read, target_seconds)
    return 1 + -(-rest // size)


@dataclasses.dataclass(frozen=True)
class SpoolSlice:
    """`count` work units, `size` bytes of a spool's file from byte `offset`: a portion, read
    where it runs (this process: `fd` is the spool's open, already unlinked file)."""

    fd: int
    offset: int
    size: int
    count: int

    def __len__(self) -> int:
        return self.count

    def read(self) -> Iterator[Work]:
        data = io.BytesIO(os.pread(self.fd, self.size, self.offset))
        for _ in range(self.count):
            yield pickle.load(data)


class Spool:
    """Work units on local disk, written once and read back in order, portion by portion: the
    run's memory holds one portion, not the whole input. The file has no name (a crash, even
    SIGKILL, leaves nothing behind) and goes with close()."""

    def __init__(self):
        self._file = tempfile.TemporaryFile(prefix="labeler-work-")  # noqa: SIM115 - close()
        self._offsets = array.array("q")  # where each work unit starts: 8 bytes each
        self.count = 0
        self.taken = 0

    def add(self, work: Work) -> None:
        self._offsets.append(self._file.tell())
        pickle.dump(work, self._file, protocol=pickle.HIGHEST_PROTOCOL)
        self.count += 1

    def seal(self) -> None:
        """Written: from here on it is read."""
        self._file.flush()
        self._offsets.append(self._file.tell())  # where the last one ends

    def take(self, n: int) -> SpoolSlice:
        """The next n work units (fewer at the end)."""
        n = min(n, self.count - self.taken)
        start, end = self._offsets[self.taken], self._offsets[self.taken + n]
        self.taken += n
        return SpoolSlice(self._file.fileno(), start, end - start, n)

    def close(self) -> None:
        self._file.close()


class ReadSlice(beam.PTransform):
    """A portion's work units, read from the spool by the job itself: nothing of them travels
    in the graph, and each one flows straight into the next stage (a job in this process,
    where the spool file is)."""

    def __init__(self, portion: SpoolSlice):
        super().__init__()
        self._portion = portion

    def expand(self, pipeline):
        return pipeline | beam.Create([self._portion]) | beam.FlatMap(SpoolSlice.read)


def work_source(portion: SpoolSlice, in_process: bool) -> beam.PTransform:
    """How a portion's job gets its work: from the spool in this process (ReadSlice), or,
    for a job submitted to a job service (Flink), inside its graph, spread over workers."""
    if in_process:
        return ReadSlice(portion)
    return beam.Create(list(portion.read()))


def select_work(config: Config, emit: Callable[[Work], None]) -> JoinCounts:
    """Lists the inputs in this process and joins them with what the output holds (the
    skip): each work unit left is given to `emit` (the run's spool, --plan's list)."""
    listed = list_inputs(
        config.inputs,
        config.manifest,
        config.output,
        config.storage_options,
        config.manifest_stream,
    )
    # One listing names each URI once; a second pattern or a manifest may repeat one.
    unique = len(config.inputs) == 1 and not config.manifest
    done = existing(config.output, config.skip)
    return join(
        listed,
        done,
        config.model_version,
        emit,
        unique=unique,
        labelling=config.labelling,
        max_attempts=config.max_attempts,
    )


def spool_work(config: Config) -> tuple[JoinCounts, Spool]:
    """The work left to label (select_work), spooled; the counts are the join's."""
    spool = Spool()
    try:
        counts = select_work(config, spool.add)
    except BaseException:
        spool.close()
        raise
    spool.seal()
    return counts, spool


def join_counters(counts: JoinCounts) -> dict[str, int]:
    """The join's counts under the counter names the single job's KeepNew reports them as
    (inputs served by an identical image are counted by the portions' jobs, as labelled)."""
    return {
        metrics.IMAGES_SKIPPED: counts.done,
        metrics.IMAGES_OTHERWISE: counts.otherwise,
        metrics.IMAGES_CHANGED: counts.changed,
        metrics.IMAGES_QUEUED: counts.to_label,
        metrics.IMAGES_RETRIED: counts.retried,
        metrics.IMAGES_FINAL: counts.final,
        metrics.ROWS_SUPERSEDED: counts.superseded,
    }


def portions(
    spool: Spool, target_seconds: float, most: int = MAX_PORTION, clock=time.monotonic
) -> Iterator[SpoolSlice]:
    """The spool's work, portion by portion, each sized from the rate of the one before
    (the generator is resumed when a portion has been committed), at most `most`."""
    size = FIRST_PORTION
    while spool.taken < spool.count:
        left = spool.count - spool.taken
        if left - size < FIRST_PORTION:  # a last portion this small would be mostly fixed cost
            size = left
        started = clock()
        portion = spool.take(size)
        yield portion
        size = next_portion_size(len(portion), clock() - started, target_seconds, most)
