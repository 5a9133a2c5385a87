"""Entry point: parse and validate options, build the pipeline, run it, print a summary, and
exit with a status that says whether everything was written (README "Exit status").

python -m pipeline.run --input 'photos/**.jpg' --output out/ [beam options]
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)

from pipeline import exit_status, plan, summary
from pipeline.config import Config, ConfigError, prepare
from pipeline.graph import build_pipeline
from pipeline.options import SKIP_ALL, LabelerOptions, parse_options
from pipeline.progress import ProgressPrinter
from transforms.models.catalog import ModelOutputError
from transforms.output import committed_rows, remove_temp, write_fault
from transforms.storage import gcs
from transforms.storage.lease import ALL_DATES, Lease, LeaseHeld
from transforms.storage.uris import is_gcs
from transforms.vocabulary import ERRORS, KINDS, PREDICTIONS, exception_chain


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


def lease_client(config: Config):
    """For a gs:// output, the storage client the lease is written with: the job's own
    credentials and options (transforms.storage.gcs.access), as the output is written."""
    if not is_gcs(config.output):
        return None
    return gcs.access(config.storage_options).client


def take_lease(lease: Lease) -> None:
    """Takes the output's lease for the date (storage/lease.py), or ConfigError naming the
    run that holds it (exit status 2: refused before any work, nothing written)."""
    try:
        lease.acquire()
    except LeaseHeld as e:
        raise ConfigError(str(e)) from None
    except Exception as e:  # the lease cannot be written: as the start-up probe would say
        raise ConfigError(f"--output {lease.uri} cannot be written ({e})") from e


def model_output_error(exc: BaseException) -> str | None:
    """The one line of a ModelOutputError that failed the job (raised when the worker loaded
    a model whose output saved_model.pb did not declare), else None. A runner in another
    process passes only its text."""
    for link in exception_chain(exc):
        if isinstance(link, ModelOutputError):
            return str(link).split(" [while running", 1)[0]
    return None


def failed_job(exc: Exception, config: Config) -> tuple[int, str] | None:
    """(exit status, one line) for a job that failed for a reason the user can fix: a model
    whose output is wrong (2: nothing was written) or output that could not be written (4);
    None for anything else, a bug (Beam's traceback, exit status 1)."""
    if (line := model_output_error(exc)) is not None:
        return exit_status.BAD_OPTION, f"{line}; nothing was written"
    fault = write_fault(exc)
    if fault is None:
        return None
    try:
        kept = committed(config)
        what = f"{kept[PREDICTIONS]} predictions and {kept[ERRORS]} error rows of this run are in"
    except Exception:  # the output cannot be read back either
        what = "what this run wrote is in"
    return exit_status.OUTPUT_LOST, (
        f"the output could not be written ({fault}); {what} {config.output}: fix that and "
        "run the same command again: what is kept is not labelled twice"
    )


def run(argv: Sequence[str] | None = None) -> tuple[int, bool]:
    """Runs the job (to completion unless it is only staged or submitted); returns the exit
    status and whether the job ran in this process. Raises ConfigError on a bad option, and
    Stopped on a signal, before any work."""
    argv = list(sys.argv[1:] if argv is None else argv)
    options = parse_options(argv, prog_name())
    import_tensorflow_quietly()
    config: Config = prepare(options.view_as(LabelerOptions))
    if config.plan:
        print(plan.format_plan(plan.estimate(config), config))
        return exit_status.OK, True
    started = time.monotonic()
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, config)
    if not waits(options):
        pipeline.run()
        staged = options.view_as(GoogleCloudOptions).template_location
        print(f"job {'staged at ' + staged if staged else 'submitted'}", file=sys.stderr)
        return exit_status.OK, False
    in_process = runs_in_this_process(options)
    # A run that skips what any date holds reads every date's rows: it holds the whole output.
    scope = ALL_DATES if config.skip_existing == SKIP_ALL else config.date
    lease = Lease(config.output, scope, config.run_id, client=lease_client(config))
    try:
        # One run per output and date: held from before the date's partitions are read
        # (to skip what is done) until after the run's files are counted.
        take_lease(lease)
        printer = None
        if not config.quiet and in_process:
            printer = ProgressPrinter(sys.stderr, config.progress_interval).start()
        return finish(pipeline, config, started, in_process, printer)
    finally:
        lease.release()


def finish(pipeline, config: Config, started: float, in_process: bool, printer) -> tuple[int, bool]:
    """Runs the job to its end; the exit status and whether it ran in this process."""
    result = None
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Stopped as stop:
        if printer:
            printer.stop()
            printer = None
        if result is not None and not in_process:
            cancel(result)  # the job runs elsewhere (Flink, a job service): stop it there too
        kept = committed(config)
        print(
            f"{prog_name()}: stopped; {kept[PREDICTIONS]} predictions and "
            f"{kept[ERRORS]} error rows of this run are kept in {config.output}. Run "
            "the same command again to resume: what is kept is not labelled twice.",
            file=sys.stderr,
        )
        return exit_status.INTERRUPTED[stop.signal_name], in_process
    except Exception as e:
        if printer:
            printer.stop()
            printer = None
        known = failed_job(e, config)
        if known is None and portable_job_failed(e, in_process):
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
        if printer:
            printer.stop()
    counts = summary.counters(result)
    written = committed(config)
    status, why = summary.outcome(counts, written, config.max_error_ratio)
    if status != exit_status.OUTPUT_LOST:
        with contextlib.suppress(Exception):  # debris in _temp/ harms nothing (README)
            remove_temp(config.output, config.run_id)
    print(summary.summarize(counts, written, config, time.monotonic() - started), file=sys.stderr)
    if why:
        print(f"{prog_name()}: error: {why}", file=sys.stderr)
    return status, in_process


def portable_job_failed(exc: Exception, in_process: bool) -> bool:
    """A job run out of this process (Flink, a job service) that failed there."""
    return not in_process and isinstance(exc, RuntimeError) and "failed in state" in str(exc)


def cancel(result) -> None:
    """Cancels a job that runs out of this process (unless it has ended: run_flink.sh may
    have cancelled it already); one line if that fails."""
    from apache_beam.runners.runner import PipelineState

    try:
        if not PipelineState.is_terminal(result.state):
            result.cancel()
    except Exception as e:  # noqa: BLE001 - already ended, or the job service is gone
        print(f"{prog_name()}: could not cancel the job: {one_line(str(e))}", file=sys.stderr)


def one_line(message: str, limit: int = 400) -> str:
    """The last line that says something (a Java root cause comes last), shortened."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    causes = [line for line in lines if "Exception:" in line and not line.startswith("at ")]
    text = (causes[-1] if causes else lines[0] if lines else message).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def import_tensorflow_quietly() -> None:
    """TensorFlow prints a dozen C++ lines as it loads (oneDNN, CUDA drivers, a cuInit error
    on machines without a GPU), before its own log level applies: unless the user set
    TF_CPP_MIN_LOG_LEVEL, it is imported here with file descriptor 2 pointed at /dev/null."""
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        import tensorflow  # noqa: F401 - loaded now, silently; later imports reuse it
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def stop_on(signum, _frame):
    # Beam logs the exception with its traceback as it unwinds each stage: the user asked
    # for the stop, so from here on only our own line is printed.
    logging.disable(logging.CRITICAL)
    raise Stopped(signal.Signals(signum).name)


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


def main() -> None:
    guard_std_streams()
    logging.getLogger().setLevel(logging.WARNING)
    # Beam logs a failing step's exception with its traceback before raising it: the raise
    # either becomes our one line (a write fault, a wrong model) or, for a bug, the traceback.
    logging.getLogger("apache_beam.runners.common").addFilter(
        lambda r: "[while running '" not in str(r.msg)
    )
    # A finished file that cannot be renamed into its partition stays in _temp/ and is
    # counted as missing (exit status 4, last line); Beam's warning about it is not ours.
    logging.getLogger("apache_beam.io.fileio").addFilter(
        lambda r: "left orphaned in the temporary folder" not in str(r.msg)
    )
    # Beam 2.77's RunInference imports `resource` in one try with a torch-only module, so
    # without torch it warns "Resource module is not available" on every run: not ours.
    logging.getLogger().addFilter(lambda r: "Resource module is not available" not in str(r.msg))
    signal.signal(signal.SIGINT, stop_on)
    signal.signal(signal.SIGTERM, stop_on)
    in_process = True
    try:
        status, in_process = run()
    except ConfigError as e:
        print(f"{prog_name()}: error: {e}", file=sys.stderr)
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
    os._exit(status)


if __name__ == "__main__":
    main()
