"""Start-up validation: LabelerOptions -> a checked Config, or ConfigError before any work."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import uuid
from collections.abc import Iterable

from apache_beam.io.filesystems import FileSystems

from pipeline.options import CPU_BATCH, FLAGS, GPU_BATCH, LabelerOptions, declared
from transforms.done import ALL_DATES as EVERY_DATE
from transforms.done import PartFileError, SkipPolicy, check_partitions, skip_policy
from transforms.images import preprocess_id
from transforms.inputs import check_pattern
from transforms.manifests import InputError, check_manifest
from transforms.models.catalog import (
    ModelError,
    choose_model,
    is_builtin_model,
    locate,
    model_version,
    native_size,
)
from transforms.models.labels import load_labels
from transforms.output import probe_writable
from transforms.postprocess import labelling_id
from transforms.printable import printable
from transforms.storage import gcs
from transforms.storage.bounded import MB
from transforms.storage.layout import TEMP_DIR, layout_fault, output_prefixes, part_files
from transforms.storage.lease import ALL_DATES, lease_uri
from transforms.storage.uris import glob_escape, normalize_uri
from transforms.vocabulary import KINDS


class ConfigError(ValueError):
    """A bad option: the message says what is wrong and what to do."""


@dataclasses.dataclass(frozen=True)
class Config:
    inputs: tuple[str, ...]
    manifest: str | None
    output: str
    model: str | None  # None until check_storage_and_model has chosen it
    labels: tuple[str, ...]
    top_k: int
    image_size: int | None  # None: the model's own, settled with the model
    batch_size: int
    date: str
    run_id: str
    skip_existing: str  # SKIP_ALL, SKIP_DATE or SKIP_NONE
    plan: bool
    plan_sample: int
    require_gpu: bool
    quiet: bool
    progress_interval: float
    portion_seconds: float  # 0: one job, committed at its end
    read_concurrency: int
    max_inflight_bytes: int
    max_object_bytes: int
    max_error_ratio: float
    max_attempts: int  # error rows of a failure that may pass, before it is final (done.py)
    model_version: str = ""  # a digest of the model's content, settled with the model
    preprocess: str = ""  # what changes pixels (images.preprocess_id), settled with the size
    # The job's PipelineOptions that were set (gcs.job_options): gs:// is checked and read
    # as the job, on Beam's credentials path, at start-up and on the workers.
    storage_options: dict = dataclasses.field(default_factory=dict)
    # A manifest that is a pipe, FIFO or terminal, as start-up read it (it cannot be read
    # twice): the run lists from this copy.
    manifest_stream: bytes | None = None

    @property
    def skip(self) -> SkipPolicy:
        """What the run counts as done (--skip_existing, transforms/done.py)."""
        return skip_policy(self.skip_existing, self.date)

    @property
    def labelling(self) -> str:
        """Which labels the run's predictions keep (--top_k, the class names): their
        `labelling` column, compared with the done rows' (transforms/done.py)."""
        return labelling_id(self.labels, self.top_k)

    @property
    def lease_scope(self) -> str:
        """The lease the run holds (storage/lease.py): a run that skips what any date holds
        reads every date's rows, so it holds the whole output; else its date's."""
        return ALL_DATES if self.skip.dates == EVERY_DATE else self.date


def check_buckets(uris: Iterable[str | None], storage_options: dict) -> None:
    """Every gs:// bucket the job names can be listed, with the credentials the reads use
    (transforms.storage.gcs), else one line that names it."""
    try:
        gcs.check_buckets(uris, storage_options)
    except gcs.BucketError as e:
        raise ConfigError(str(e)) from None


def check_inputs(
    patterns: list[str], manifest: str | None, output: str, skip: SkipPolicy
) -> bytes | None:
    """Everything the run reads besides the model, before any work: each pattern matches files
    (not a folder) outside the run's own output, the manifest is whole and lists URIs, and the
    existing partition files the run reads to skip what is done are readable Parquet. The
    checks themselves live beside the readers (transforms.inputs, manifests, done). Returns
    the manifest's bytes where it is a pipe (manifests.check_manifest)."""
    if not patterns and not manifest:
        raise ConfigError("no input: pass --input PATTERN and/or --input_manifest PATH")
    try:
        for pattern in patterns:
            check_pattern(pattern, exclude=output_prefixes(output))
        streamed = check_manifest(manifest) if manifest else None
        check_partitions(output, skip.dates)
    except (InputError, PartFileError) as e:
        raise ConfigError(str(e)) from None
    return streamed


OUTPUT_FOLDERS = (*KINDS, TEMP_DIR)


def output_roots_above(output: str) -> list[str]:
    """The folders R that `output` lies in as R/predictions/..., R/errors/... or
    R/_temp/... (a name alone: whether R is an output, enclosing_output asks storage)."""
    parts = output.rstrip("/").split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts)) if parts[i] in OUTPUT_FOLDERS]


def enclosing_output(output: str) -> str | None:
    """Another run's output that `output` lies inside (under its predictions/, errors/ or
    _temp/), where this run's files would be read as that output's rows; None if there is
    none. An output is a folder with a finished part file of either kind, any date."""
    for root in output_roots_above(output):
        for kind in KINDS:
            if FileSystems.match([part_files(root, kind, "*")], limits=[1])[0].metadata_list:
                return root
    return None


# A finished part file of an output: its root is what precedes /<kind>/date=D/part-...
_OUTPUT_FILE = re.compile(rf"^(?P<root>.*)/(?:{'|'.join(KINDS)})/date=[^/]*/part-[^/]*\.parquet$")


def nested_output(output: str) -> str | None:
    """An output inside this one's predictions/, errors/ or _temp/ (made before this one was
    an output, or written there by hand), whose files readers of this output's folders
    would take for its rows; None if there is none. One listing of each of the three."""
    base = output.rstrip("/")
    for folder in OUTPUT_FOLDERS:
        pattern = FileSystems.join(glob_escape(base), folder, "**", "date=*", "part-*.parquet")
        for meta in FileSystems.match([pattern])[0].metadata_list:
            found = _OUTPUT_FILE.match(meta.path)
            if found:
                return found["root"]
    return None


def check_output(config: Config) -> None:
    """The output's layout, before any work and for --plan too: nothing in the way of a folder
    or file the run writes (storage/layout.py), and no output inside another's folders,
    whichever was made first."""
    output = config.output
    fault = layout_fault(output, config.date, (lease_uri(output, config.lease_scope),))
    if fault is not None:
        raise ConfigError(f"--output {printable(output)}: {fault}; move it away or pass another")
    inside = enclosing_output(output)
    if inside is not None:
        raise ConfigError(
            f"--output {printable(output)} is inside the output {printable(inside)}, where "
            "its files would be read as that output's rows; pass a folder outside it"
        )
    nested = nested_output(output)
    if nested is not None:
        raise ConfigError(
            f"--output {printable(output)} holds another output, {printable(nested)}, whose "
            "files would be read as this output's rows; move it out or pass another --output"
        )


def check_writable(output: str, run_id: str) -> None:
    try:
        probe_writable(output, run_id)
    except Exception as e:  # permissions, a file in the way, no space
        raise ConfigError(f"--output {output} cannot be written to ({e})") from e


def check_date(date: str | None) -> str:
    if date is None:
        return dt.datetime.now(dt.UTC).date().isoformat()
    try:
        return dt.date.fromisoformat(date).isoformat()
    except ValueError:
        raise ConfigError(f"--date {date} is not a date; use YYYY-MM-DD") from None


def prepare(opts: LabelerOptions) -> Config:
    """The checked Config a run uses: flags first, then storage and the model."""
    return check_storage_and_model(check_flags(opts))


def check_storage_and_model(config: Config) -> Config:
    """What touches storage or the network, before any work: buckets reachable, inputs
    present, the output's layout sound, the model chosen and ready (downloaded or converted)
    and its outputs matching the labels, then --top_k, the output writable (a probe file,
    last, so a run that stops earlier writes nothing). Returns the Config with
    the model and its image size settled."""
    check_buckets(
        [*config.inputs, config.manifest, config.output, config.model], config.storage_options
    )
    streamed = check_inputs(list(config.inputs), config.manifest, config.output, config.skip)
    check_output(config)
    try:
        model = choose_model(config.model, len(config.labels))
        version = model_version(locate(model))
    except ModelError as e:
        raise ConfigError(str(e)) from None
    except OSError as e:  # the model's files went away or cannot be read
        raise ConfigError(f"--model {model}: cannot read it ({e})") from None
    # After the labels are checked against the model: a labels file of the wrong length is
    # the cause, --top_k past its end the symptom.
    check_number("top_k", config.top_k, declared("top_k").low, len(config.labels), "")
    if not config.plan:
        check_writable(config.output, config.run_id)
    image_size = config.image_size or native_size(model)
    return dataclasses.replace(
        config,
        model=model,
        image_size=image_size,
        model_version=version,
        preprocess=preprocess_id(image_size),
        manifest_stream=streamed,
    )


def check_number(flag: str, value: float | None, low: float, high: float, unit: str) -> float:
    """A numeric option's value, if it is a finite number from `low` to `high`; else
    ConfigError (inf, nan and 1e400 are out of every range)."""
    # The range first: an int too large for a float (10**400) is out of it, not an error.
    if value is None or not (low <= value <= high and math.isfinite(value)):
        unit = f" {unit}" if unit else ""
        raise ConfigError(f"--{flag} must be between {low:g} and {high:g}{unit}, not {value}")
    return value


def check_flags(opts: LabelerOptions) -> Config:
    """Every flag's value checked, cheapest first, touching nothing but the labels file; the
    model (None: the default choice) and image size (None: the model's own) stay open."""
    if not opts.output:
        raise ConfigError("--output is required: the folder or gs:// prefix to write to")
    for flag in FLAGS:  # every declared range (pipeline/options.py)
        value = getattr(opts, flag.name)
        if flag.high is None or (value is None and flag.default is None):
            continue  # no range, one known later (top_k), or unset: the model's or hardware's
        check_number(flag.name, value, flag.low, flag.high, flag.unit)
    batch_size = opts.batch_size or (GPU_BATCH if opts.require_gpu else CPU_BATCH)
    date = check_date(opts.date)
    try:
        labels = load_labels(opts.labels_file)
    except Exception as e:  # missing, unreadable, not UTF-8
        raise ConfigError(f"--labels_file {opts.labels_file} cannot be read ({e})") from e
    if not labels:
        raise ConfigError(
            f"--labels_file {opts.labels_file} is empty; it needs one class name a line"
        )
    if opts.top_k < declared("top_k").low:  # past the labels' end: checked with the model
        check_number("top_k", opts.top_k, declared("top_k").low, len(labels), "")
    patterns = [normalize_uri(p) for p in opts.input or []]
    manifest = normalize_uri(opts.input_manifest) if opts.input_manifest else None
    given_model = opts.model
    if given_model and not is_builtin_model(given_model):
        given_model = normalize_uri(given_model)  # local paths absolute; URLs, gs:// as given
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    return Config(
        inputs=tuple(patterns),
        manifest=manifest,
        output=normalize_uri(opts.output),
        model=given_model,
        labels=tuple(labels),
        top_k=opts.top_k,
        image_size=opts.image_size,
        batch_size=batch_size,
        date=date,
        run_id=run_id,
        skip_existing=opts.skip_existing,
        plan=opts.plan,
        plan_sample=opts.plan_sample,
        require_gpu=opts.require_gpu,
        quiet=opts.quiet,
        progress_interval=opts.progress_interval,
        portion_seconds=opts.portion_seconds,
        read_concurrency=opts.read_concurrency,
        max_inflight_bytes=int(opts.max_inflight_mb * MB),
        max_object_bytes=int(opts.max_object_mb * MB),
        max_error_ratio=opts.max_error_ratio,
        max_attempts=opts.max_attempts,
        storage_options=gcs.job_options(opts),
    )
