"""Entry point: parse and validate options, build the pipeline, run it, print a summary, and
exit with a status that says whether everything was written (README "Exit status").

python -m pipeline.run --input 'photos/**.jpg' --output out/ [beam options]
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)

from pipeline import exit_status, plan, portions, summary
from pipeline.config import Config, ConfigError, prepare
from pipeline.failures import (
    failed_job,
    job_state,
    one_line,
    portable_job_failed,
    quiet_beam_logs,
)
from pipeline.graph import Portion, build_pipeline
from pipeline.options import LabelerOptions, parse_options
from pipeline.progress import ProgressPrinter
from transforms import metrics
from transforms.done import ALL_DATES as EVERY_DATE
from transforms.output import committed_rows, remove_temp
from transforms.printable import error_line, printable
from transforms.storage.lease import ALL_DATES, Lease, LeaseHeld
from transforms.supersede import remove_replaced
from transforms.vocabulary import ERRORS, KINDS, PREDICTIONS


class Stopped(BaseException):
    """Ctrl-C or SIGTERM arrived while the job ran (a BaseException, as KeyboardInterrupt is,
    so no `except Exception` on the way swallows it)."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        # Beam re-raises it as Stopped("SIGINT [while running 'Step']"): the name comes first.
        self.signal_name = signal_name.split(" ", 1)[0]


def prog_name() -> str:
    """How the user called us: the label-images console script or the module."""
    called = os.path.basename(sys.argv[0]) if sys.argv else ""
    return "label-images" if called == "label-images" else "python -m pipeline.run"


def waits(options: PipelineOptions) -> bool:
    """False when the job is only staged (--template_location) or only submitted
    (--no_wait_until_finish, or in the Flex Template launcher, whose image sets
    FLEX_TEMPLATE_PYTHON_PY_FILE and which must return once the job is submitted)."""
    staged_only = options.view_as(GoogleCloudOptions).template_location
    no_wait = options.view_as(StandardOptions).no_wait_until_finish
    return not (staged_only or no_wait or "FLEX_TEMPLATE_PYTHON_PY_FILE" in os.environ)


def runs_in_this_process(options: PipelineOptions) -> bool:
    """DirectRunner's default modes run every stage here, so live counts can be shown."""
    runner = options.view_as(StandardOptions).runner
    mode = options.view_as(DirectOptions).direct_running_mode
    return runner in ("DirectRunner", "direct") and mode != "multi_processing"


def committed(config: Config) -> dict[str, int]:
    return {k: committed_rows(config.output, k, config.date, config.run_id) for k in KINDS}


def take_lease(lease: Lease) -> None:
    """Takes the output's lease for the date (storage/lease.py), or ConfigError naming the
    run that holds it (exit status 2: refused before any work, nothing written)."""
    try:
        lease.acquire()
    except LeaseHeld as e:
        raise ConfigError(str(e)) from None
    except Exception as e:  # the lease cannot be written: as the start-up probe would say
        raise ConfigError(f"--output {lease.uri} cannot be written ({e})") from e


def in_portions(options: PipelineOptions, config: Config) -> bool:
    """Whether the run is labelled in portions that commit as they go (pipeline/portions.py):
    on DirectRunner and the portable runners (Flink) that this process waits on; a Dataflow
    job (a worker pool started per job) or a job only submitted is one job."""
    runner = (options.view_as(StandardOptions).runner or "").removesuffix("Runner").lower()
    return config.portion_seconds > 0 and waits(options) and runner in PORTION_RUNNERS


PORTION_RUNNERS = ("direct", "portable", "flink")


def run(argv: Sequence[str] | None = None) -> tuple[int, bool]:
    """Runs the job (to completion unless it is only staged or submitted); returns the exit
    status and whether the job ran in this process. Raises ConfigError on a bad option, and
    Stopped on a signal, before any work."""
    argv = list(sys.argv[1:] if argv is None else argv)
    options = parse_options(argv, prog_name())
    config: Config = prepare(options.view_as(LabelerOptions))
    if config.plan:
        print(plan.format_plan(plan.estimate(config), config))
        return exit_status.OK, True
    started = time.monotonic()
    if in_portions(options, config):
        execute = functools.partial(run_in_portions, options, config)
    else:
        pipeline = beam.Pipeline(options=options)
        build_pipeline(pipeline, config)
        if not waits(options):
            pipeline.run()
            staged = options.view_as(GoogleCloudOptions).template_location
            print(f"job {'staged at ' + staged if staged else 'submitted'}", file=sys.stderr)
            return exit_status.OK, False
        execute = functools.partial(one_job, pipeline)
    in_process = runs_in_this_process(options)
    # Written as the output is: on gs://, with the job's credentials and options.
    lease = Lease(config.output, config.lease_scope, config.run_id, config.storage_options)
    try:
        # One run per output and date: held from before the date's partitions are read
        # (to skip what is done) until after the run's files are counted.
        take_lease(lease)
        printer = None
        if not config.quiet and in_process:
            printer = ProgressPrinter(sys.stderr, config.progress_interval).start(started)
        return finish(execute, config, started, in_process, printer)
    finally:
        lease.release()


class Jobs:
    """The Beam jobs of a run (one, or one per portion): the one in flight, for a stop or a
    failure, and the counters of those that finished, summed."""

    def __init__(self):
        self.current = None
        self.counts: dict[str, int] = {}
        self.finished = 0
        self.in_portions = False  # a run in portions: the summary counts them

    def add(self, counts: dict[str, int]) -> None:
        for name, n in counts.items():
            self.counts[name] = self.counts.get(name, 0) + n

    def run(self, pipeline: beam.Pipeline) -> None:
        self.current = pipeline.run()
        self.current.wait_until_finish()
        self.add(summary.counters(self.current))
        self.finished += 1


def one_job(pipeline: beam.Pipeline, jobs: Jobs) -> None:
    jobs.run(pipeline)


def run_in_portions(options: PipelineOptions, config: Config, jobs: Jobs) -> None:
    """Lists and joins here, then runs one job per portion, each committing its rows as it
    ends, until the work is done or a stop is asked for (STOP: raised as Stopped)."""
    counts, spool = portions.spool_work(config)
    in_process = runs_in_this_process(options)
    most = portions.MAX_PORTION if in_process else portions.MAX_SUBMITTED_PORTION
    jobs.add(portions.join_counters(counts))
    jobs.in_portions = True
    metrics.LIVE.add(metrics.QUEUED, counts.to_label)
    STOP.graceful = True  # from here a stop keeps what the portion in flight finishes
    try:
        for index, work in enumerate(portions.portions(spool, config.portion_seconds, most)):
            if STOP.requested:
                break
            source = portions.work_source(work, in_process)
            portion = Portion(source, f"{config.run_id}-{index:05d}")
            pipeline = beam.Pipeline(options=options)
            build_pipeline(pipeline, config, portion)
            jobs.run(pipeline)
            with contextlib.suppress(Exception):  # debris in _temp/ harms nothing (README)
                remove_temp(config.output, portion.run_id)
            if not config.quiet and not in_process:  # no live progress line here
                done = jobs.counts.get(metrics.IMAGES_LABELLED, 0) + metrics.failed_total(
                    jobs.counts
                )
                print(
                    f"{prog_name()}: portion {index + 1:,} committed: {done:,} of "
                    f"{counts.to_label:,} images done",
                    file=sys.stderr,
                )
    finally:
        spool.close()
    if STOP.requested:  # the portion in flight committed; none after it started
        raise Stopped(STOP.requested)


def finish(execute, config: Config, started: float, in_process: bool, printer) -> tuple[int, bool]:
    """Runs the job, or the portions' jobs, to the end: the exit status and whether the work
    ran in this process."""
    jobs = Jobs()
    try:
        execute(jobs)
    except Stopped as stop:
        if printer:
            printer.stop()
            printer = None
        return stopped(jobs, config, stop.signal_name, in_process), in_process
    except Exception as e:
        if printer:
            printer.stop()
            printer = None
        if STOP.requested:  # a job cancelled for the stop (run_flink.sh cancels it first)
            return stopped(jobs, config, STOP.requested, in_process), in_process
        known = failed_job(e, config.output, lambda: committed(config))
        if known is None and not in_process and portable_job_failed(e, job_state(jobs.current)):
            # A portable runner's job that failed there (Flink: a task out of restarts, too
            # few slots or network buffers): its root cause in one line, not the launcher's
            # stack.
            known = exit_status.OUTPUT_LOST, f"the job failed: {one_line(str(e))}"
        if known is None:
            raise  # a bug: Beam's traceback, exit status 1
        status, line = known
        print(f"{prog_name()}: error: {line}", file=sys.stderr)
        return status, in_process
    finally:
        STOP.settled()
        if printer:
            printer.stop()
    counts = jobs.counts
    written = committed(config)
    status, why = summary.outcome(counts, written, config.max_error_ratio)
    unremoved = None
    if status != exit_status.OUTPUT_LOST:
        unremoved = remove_replaced_rows(config, counts)
        with contextlib.suppress(Exception):  # debris in _temp/ harms nothing (README)
            remove_temp(config.output, config.run_id)
    seconds = time.monotonic() - started
    portions_run = jobs.finished if jobs.in_portions else None
    print(summary.summarize(counts, written, config, seconds, portions_run), file=sys.stderr)
    if unremoved:
        print(f"{prog_name()}: {unremoved}", file=sys.stderr)
    if why:
        print(f"{prog_name()}: error: {why}", file=sys.stderr)
    return status, in_process


def remove_replaced_rows(config: Config, counts: dict[str, int]) -> str | None:
    """Once the run's rows are committed, and where it tried a failure again or found error
    rows a prediction had replaced: those rows leave the error partitions of the dates its
    lease covers (every date's with --skip_existing=true, else its date's), so each (URI,
    source version, model version) has one current row (transforms/supersede.py). None, or
    a line saying it could not be done; the next run that finds them finishes it."""
    if not (counts.get(metrics.IMAGES_RETRIED) or counts.get(metrics.ROWS_SUPERSEDED)):
        return None
    dates = EVERY_DATE if config.lease_scope == ALL_DATES else config.date
    try:
        remove_replaced(config.output, dates, config.run_id)
    except Exception as e:  # noqa: BLE001 - storage faults: the rows stay, and are found again
        return (
            f"error rows that predictions replaced could not all be removed ({error_line(e)}); "
            "the next run removes them"
        )
    return None


def stopped(jobs: Jobs, config: Config, signal_name: str, in_process: bool) -> int:
    """A stopped run's line (what it keeps) and exit status; a job running elsewhere (Flink,
    a job service) is cancelled there too."""
    if jobs.current is not None and not in_process:
        cancel(jobs.current)
    kept = committed(config)
    portions_kept = f" ({jobs.finished} portions)" if jobs.finished > 1 else ""
    print(
        f"{prog_name()}: stopped; {kept[PREDICTIONS]:,} predictions and {kept[ERRORS]:,} error "
        f"rows of this run are kept in {config.output}{portions_kept}. Run the same command "
        "again to resume: what is kept is not labelled twice.",
        file=sys.stderr,
    )
    return exit_status.INTERRUPTED[signal_name]


def cancel(result) -> None:
    """Cancels a job that runs out of this process (unless it has ended: run_flink.sh may
    have cancelled it already); one line if that fails."""
    from apache_beam.runners.runner import PipelineState

    try:
        if not PipelineState.is_terminal(result.state):
            result.cancel()
    except Exception as e:  # noqa: BLE001 - already ended, or the job service is gone
        print(f"{prog_name()}: could not cancel the job: {one_line(str(e))}", file=sys.stderr)


GRACE_SECONDS = 25  # a stop's wait for the portion in flight (schedulers give about 30 s)


class StopSignals:
    """Ctrl-C and SIGTERM. In a run in portions (graceful) the first one asks the run to
    stop after the portion in flight, which has GRACE_SECONDS to commit; a second one, or the
    grace running out, stops at once (Stopped), as any signal does outside portions."""

    def __init__(self):
        self.graceful = False
        self.requested: str | None = None  # the first signal's name, once one came

    def __call__(self, signum, _frame):
        name = signal.Signals(signum).name
        if self.graceful and self.requested is None:
            self.requested = name
            signal.signal(signal.SIGALRM, self._grace_over)
            signal.setitimer(signal.ITIMER_REAL, GRACE_SECONDS)
            print(
                f"{prog_name()}: stopping after the portion in flight (at most "
                f"{GRACE_SECONDS} s); {'Ctrl-C' if name == 'SIGINT' else name} again stops now",
                file=sys.stderr,
            )
            return
        self._stop_now(self.requested or name)

    def _grace_over(self, _signum, _frame):
        self._stop_now(self.requested or "SIGTERM")

    @staticmethod
    def _stop_now(name: str):
        # Beam logs the exception with its traceback as it unwinds each stage: the user asked
        # for the stop, so from here on only our own line is printed.
        logging.disable(logging.CRITICAL)
        raise Stopped(name)

    def settled(self) -> None:
        """The run has ended: no grace timer goes off after it."""
        signal.setitimer(signal.ITIMER_REAL, 0)


STOP = StopSignals()


class _Unbreakable:
    """A text stream whose write and flush never raise: a full or closed stderr (2>/dev/full,
    a reader that went away) loses the text, never the exit status."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        with contextlib.suppress(OSError, ValueError):
            self._stream.write(text)
            if self._stream.line_buffering and "\n" in text:
                self._stream.flush()
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def guard_std_streams() -> None:
    """File descriptors 0-2 are open (a closed one gets /dev/null, so no file the job opens
    takes its number and receives its text) and sys.stdout and sys.stderr never raise."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if stream is None:  # closed when Python started: text to /dev/null (fd reopened)
            stream = open(fd, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
            stream.reconfigure(line_buffering=True)
        setattr(sys, name, _Unbreakable(stream))


def log_library_warnings() -> None:
    """Python warnings raised while the job runs here (Pillow's on odd TIFF metadata, for
    one) are logged at INFO to the "py.warnings" logger, not printed beside the summary:
    they describe an input that was labelled, or the libraries, not the run."""
    logger = logging.getLogger("py.warnings")

    def log(message, category, filename, lineno, file=None, line=None):
        logger.info("%s:%s: %s: %s", filename, lineno, category.__name__, message)

    warnings.showwarning = log


def scratch_folder() -> str:
    """A temporary folder for this process, inside the system's, made the default one: what
    the libraries leave there (TensorFlow's generated code for each model loaded, Beam's
    staging folders), which their exit hooks would remove, goes with it when the command
    ends (main ends without those hooks when the job ran here)."""
    folder = tempfile.mkdtemp(prefix="image-labeler-")
    tempfile.tempdir = folder
    atexit.register(shutil.rmtree, folder, True)  # first registered: the last hook to run
    return folder


def main() -> None:
    scratch = scratch_folder()
    guard_std_streams()
    logging.getLogger().setLevel(logging.WARNING)
    quiet_beam_logs()  # Beam's records that repeat (or contradict) our last line
    log_library_warnings()
    signal.signal(signal.SIGINT, STOP)
    signal.signal(signal.SIGTERM, STOP)
    in_process = True
    try:
        status, in_process = run()
    except ConfigError as e:
        print(f"{prog_name()}: error: {printable(str(e))}", file=sys.stderr)  # one line
        status = exit_status.BAD_OPTION
    except Stopped as e:
        print(f"{prog_name()}: stopped before any work; nothing was written", file=sys.stderr)
        status = exit_status.INTERRUPTED[e.signal_name]
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if not in_process:
        # A runner in other processes (Flink, Spark, a portable job service): Beam stops the
        # job server it started in an exit hook, so the interpreter ends the usual way.
        sys.exit(status)
    # The job ran here and its files are closed. Tearing down the interpreter with a
    # SavedModel loaded took 3.4 s on the benchmark machine (destructors, no work left), and
    # Beam's worker threads would keep a stopped run alive, so the command ends here.
    shutil.rmtree(scratch, ignore_errors=True)
    os._exit(status)


if __name__ == "__main__":
    main()
