"""Entry point: parse and validate options, build the pipeline, run it, print a summary, and
exit with a status that says whether everything was written (README "Exit status").

python -m pipeline.run --input 'photos/**.jpg' --output out/ [beam options]
"""

from __future__ import annotations

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
from pipeline.options import LabelerOptions, parse_options
from pipeline.progress import ProgressPrinter
from transforms.output import committed_rows, remove_temp
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
    printer = None
    if not config.quiet and in_process:
        printer = ProgressPrinter(sys.stderr, config.progress_interval).start()
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
    except RuntimeError as e:
        # A portable runner's job that failed there (Flink: a task out of restarts, too few
        # slots or network buffers): its root cause in one line, not the launcher's stack.
        if in_process or "failed in state" not in str(e):
            raise
        print(f"{prog_name()}: error: the job failed: {one_line(str(e))}", file=sys.stderr)
        return exit_status.OUTPUT_LOST, in_process
    finally:
        if printer:
            printer.stop()
    counts = summary.counters(result)
    written = committed(config)
    status, why = summary.outcome(counts, written, config.max_error_ratio)
    if status != exit_status.OUTPUT_LOST:
        remove_temp(config.output, config.run_id)
    print(summary.summarize(counts, written, config, time.monotonic() - started), file=sys.stderr)
    if why:
        print(f"{prog_name()}: error: {why}", file=sys.stderr)
    return status, in_process


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


def main() -> None:
    logging.getLogger().setLevel(logging.WARNING)
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
