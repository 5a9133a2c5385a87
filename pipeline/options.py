"""Every flag of the labelling job, declared once, with its help line."""

from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.labels import DEFAULT_LABELS
from transforms.model import DEFAULT_MODEL


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def add_switch(parser, flag: str, default: bool, help: str) -> None:
    """--flag means true; --flag=false also works (as Flex Template parameters are passed)."""
    parser.add_argument(
        flag, nargs="?", const=True, default=default, type=parse_bool, metavar="BOOL", help=help
    )


class LabelerOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        # Beam's Dataflow options also declare --labels (job labels). Ours, the class-names
        # file of the interface, takes the flag over ("resolve"), under its own dest so the
        # Dataflow runner never mistakes a path for job labels.
        parser = parser.add_argument_group("image labeller", conflict_handler="resolve")
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
            default=DEFAULT_MODEL,
            metavar="HANDLE",
            help="TF Hub handle/URL, gs:// or local SavedModel directory (default: "
            "EfficientNet-B3 from TF Hub).",
        )
        parser.add_argument(
            "--labels",
            dest="labels_file",
            default=DEFAULT_LABELS,
            metavar="PATH",
            help="Class names, one a line, in model output order (default: bundled "
            "ImageNet-1k names).",
        )
        parser.add_argument(
            "--top_k", type=int, default=5, help="Labels kept per image (default 5)."
        )
        parser.add_argument(
            "--image_size",
            type=int,
            default=300,
            help="Square input size the images are resized to (default 300, B3's size).",
        )
        parser.add_argument(
            "--batch_size",
            type=int,
            default=None,
            help="Images per model call (default 32 on CPU, 64 with --require_gpu: a GPU "
            "wants larger batches).",
        )
        add_switch(
            parser,
            "--require_gpu",
            default=False,
            help="Fail at worker start-up when TensorFlow sees no GPU, instead of labelling "
            "on CPU (run_dataflow.sh sets it on GPU workers).",
        )
        add_switch(
            parser,
            "--skip_existing",
            default=True,
            help="Label only URIs not yet in this date's predictions or errors, so re-running "
            "a command resumes it (default true; =false labels every input again and repeats "
            "URIs already there).",
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
            help="Seconds between progress lines when stderr is not a terminal (default 10); "
            "on a terminal the line is refreshed in place.",
        )
        parser.add_argument(
            "--date",
            default=None,
            metavar="YYYY-MM-DD",
            help="Output partition date (default: the run's UTC date).",
        )
