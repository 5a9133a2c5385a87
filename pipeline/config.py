"""Start-up validation: LabelerOptions -> a checked Config, or ConfigError before any work."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import uuid
from collections.abc import Iterable

from pipeline.options import CPU_BATCH, GPU_BATCH, LabelerOptions
from transforms.images import MAX_IMAGE_SIZE
from transforms.inputs import InputError, check_manifest, check_pattern
from transforms.models.catalog import ModelError, choose_model, is_builtin_model, native_size
from transforms.models.labels import load_labels
from transforms.output import PartFileError, check_partitions, output_prefixes, probe_writable
from transforms.storage.bounded import MB
from transforms.storage.uris import gcs_buckets, normalize_uri


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
    skip_existing: bool
    require_gpu: bool
    quiet: bool
    progress_interval: float
    read_concurrency: int
    max_inflight_bytes: int
    max_object_bytes: int
    max_error_ratio: float


GCS_CHECK_SECONDS = 10.0  # transient faults are retried this long before we give up


def gcs_client():
    """A storage client with the credentials Beam's GCS IO will use: Application Default
    Credentials (checked by fetching a token), else anonymous, as Beam falls back to."""
    import google.auth
    import google.auth.transport.requests
    from google.cloud import storage

    try:
        credentials, project = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
    except google.auth.exceptions.DefaultCredentialsError:
        if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
            raise  # named explicitly but unusable: say so rather than go anonymous
        return storage.Client.create_anonymous_client()
    credentials.refresh(google.auth.transport.requests.Request())
    return storage.Client(credentials=credentials, project=project or "unset")


def check_buckets(uris: Iterable[str | None]) -> None:
    """Every gs:// bucket the job names can be listed, else one line that names it."""
    buckets = gcs_buckets(uris)
    if not buckets:
        return
    from google.api_core import exceptions
    from google.cloud.storage.retry import DEFAULT_RETRY

    hint = (
        "use Application Default Credentials that can read it (gcloud auth "
        "application-default login, or GOOGLE_APPLICATION_CREDENTIALS)"
    )
    try:
        client = gcs_client()
    except Exception as e:  # a bad key file, a refused token, no network
        raise ConfigError(f"gs://{buckets[0]}: the credentials do not work ({e}); {hint}") from e
    retry = DEFAULT_RETRY.with_timeout(GCS_CHECK_SECONDS)
    for bucket in buckets:
        try:
            list(client.list_blobs(bucket, max_results=1, retry=retry, timeout=5))
        except exceptions.NotFound:
            raise ConfigError(f"bucket gs://{bucket} does not exist") from None
        except (exceptions.Forbidden, exceptions.Unauthorized) as e:
            raise ConfigError(f"no access to gs://{bucket} ({e.message}); {hint}") from None
        except Exception as e:  # unreachable after retries
            raise ConfigError(f"cannot reach gs://{bucket} ({type(e).__name__}: {e})") from e


def check_inputs(patterns: list[str], manifest: str | None, output: str, date: str) -> None:
    """Everything the run reads besides the model, before any work: each pattern matches files
    (not a folder) outside the run's own output, the manifest is whole and lists URIs, and the
    date's existing partition files (read to skip what is done) are readable Parquet. The
    checks themselves live beside the readers (transforms.inputs, transforms.output)."""
    if not patterns and not manifest:
        raise ConfigError("no input: pass --input PATTERN and/or --input_manifest PATH")
    try:
        for pattern in patterns:
            check_pattern(pattern, exclude=output_prefixes(output))
        if manifest:
            check_manifest(manifest)
        check_partitions(output, date)
    except (InputError, PartFileError) as e:
        raise ConfigError(str(e)) from None


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
    present, the model chosen and ready (downloaded or converted), the output writable (a
    probe file, last, so a run that stops earlier writes nothing). Returns the Config with
    the model and its image size settled."""
    check_buckets([*config.inputs, config.manifest, config.output, config.model])
    check_inputs(list(config.inputs), config.manifest, config.output, config.date)
    try:
        model = choose_model(config.model, len(config.labels))
    except ModelError as e:
        raise ConfigError(str(e)) from None
    check_writable(config.output, config.run_id)
    image_size = config.image_size or native_size(model)
    return dataclasses.replace(config, model=model, image_size=image_size)


def check_flags(opts: LabelerOptions) -> Config:
    """Every flag's value checked, cheapest first, touching nothing but the labels file; the
    model (None: the default choice) and image size (None: the model's own) stay open."""
    if not opts.output:
        raise ConfigError("--output is required: the folder or gs:// prefix to write to")
    if opts.image_size is not None and not 1 <= opts.image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(
            f"--image_size must be between 1 and {MAX_IMAGE_SIZE} pixels, not {opts.image_size}"
        )
    if opts.read_concurrency is None or opts.read_concurrency < 1:
        raise ConfigError(f"--read_concurrency must be at least 1, not {opts.read_concurrency}")
    for flag, value in (
        ("max_inflight_mb", opts.max_inflight_mb),
        ("max_object_mb", opts.max_object_mb),
    ):
        if value is None or not value > 0:
            raise ConfigError(f"--{flag} must be a positive number of megabytes, not {value}")
    if opts.max_error_ratio is None or not 0 <= opts.max_error_ratio <= 1:
        raise ConfigError(f"--max_error_ratio must be between 0 and 1, not {opts.max_error_ratio}")
    if not opts.progress_interval or opts.progress_interval <= 0:
        raise ConfigError(
            f"--progress_interval must be a positive number of seconds, "
            f"not {opts.progress_interval}"
        )
    if opts.batch_size is not None and opts.batch_size <= 0:
        raise ConfigError(f"--batch_size must be a positive number, not {opts.batch_size}")
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
    if not 1 <= opts.top_k <= len(labels):
        raise ConfigError(f"--top_k must be between 1 and {len(labels)}, not {opts.top_k}")
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
        require_gpu=opts.require_gpu,
        quiet=opts.quiet,
        progress_interval=opts.progress_interval,
        read_concurrency=opts.read_concurrency,
        max_inflight_bytes=int(opts.max_inflight_mb * MB),
        max_object_bytes=int(opts.max_object_mb * MB),
        max_error_ratio=opts.max_error_ratio,
    )
