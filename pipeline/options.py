"""Every flag of the labelling job, declared once, with its help line."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.labels import DEFAULT_LABELS
from transforms.model import DEFAULT_MODEL


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
            default=32,
            help="Images per model call, the largest inference batch (default 32).",
        )
        parser.add_argument(
            "--no_skip_existing",
            dest="skip_existing",
            action="store_false",
            default=True,
            help="Label every input again, even URIs already in this date's predictions or "
            "errors (they then appear twice). By default a run labels only the URIs not yet "
            "there, so re-running a command resumes it.",
        )
        parser.add_argument(
            "--date",
            default=None,
            metavar="YYYY-MM-DD",
            help="Output partition date (default: the run's UTC date).",
        )
