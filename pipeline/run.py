"""Entry point: parse and validate options, build the pipeline, run it, print a summary.

python -m pipeline.run --input 'photos/**.jpg' --output out/ [beam options]
"""

from __future__ import annotations

import argparse
import logging
import os
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
from apache_beam.runners.runner import PipelineResult

from pipeline.config import Config, ConfigError, validate
from pipeline.graph import build_pipeline
from pipeline.options import LabelerOptions
from pipeline.progress import ProgressPrinter
from pipeline.summary import summarize
from transforms import sink


def prog_name() -> str:
    """How the user called us: the label-images console script or the module."""
    called = os.path.basename(sys.argv[0]) if sys.argv else ""
    return "label-images" if called == "label-images" else "python -m pipeline.run"


def parse_options(argv: Sequence[str] | None) -> PipelineOptions:
    """--help lists the labeller's flags; every other flag is left to Beam."""
    parser = argparse.ArgumentParser(
        prog=prog_name(),
        description="Label images with EfficientNet-B3 on Apache Beam; predictions and "
        "errors are written as date-partitioned Parquet.",
        epilog="Any other flag is a Beam pipeline option (--runner, --project, ...); the "
        "runner defaults to DirectRunner.",
    )
    LabelerOptions._add_argparse_args(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser.parse_known_args(argv)  # exits on --help and on malformed values
    options = PipelineOptions(argv)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = "DirectRunner"  # never the network-fetched default runner
    return options


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


def run(argv: Sequence[str] | None = None) -> PipelineResult:
    """Runs the job (to completion unless it is only staged or submitted); raises ConfigError
    on a bad option before any work."""
    options = parse_options(argv)
    config: Config = validate(options.view_as(LabelerOptions))
    started = time.monotonic()
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, config)
    if not waits(options):
        result = pipeline.run()
        staged = options.view_as(GoogleCloudOptions).template_location
        print(f"job {'staged at ' + staged if staged else 'submitted'}", file=sys.stderr)
        return result
    printer = None
    if not config.quiet and runs_in_this_process(options):
        printer = ProgressPrinter(sys.stderr, config.progress_interval).start()
    try:
        result = pipeline.run()
        result.wait_until_finish()
    finally:
        if printer:
            printer.stop()
    sink.remove_temp(config.output, config.run_id)
    print(summarize(result, config, time.monotonic() - started), file=sys.stderr)
    return result


def main() -> None:
    logging.getLogger().setLevel(logging.WARNING)
    try:
        run()
    except ConfigError as e:
        print(f"{prog_name()}: error: {e}", file=sys.stderr)
        sys.exit(2)
    # The job is finished and its files are closed. Tearing down the interpreter with a
    # SavedModel loaded took 3.4 s on the benchmark machine (destructors, no work left), so
    # the command ends here once its output streams are flushed.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
