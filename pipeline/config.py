"""Start-up validation: LabelerOptions -> a checked Config, or ConfigError before any work."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import uuid
from collections.abc import Iterable

from apache_beam.io.filesystems import FileSystems

from pipeline.options import LabelerOptions
from transforms.inputs import URI_COLUMN, manifest_columns, manifest_kind, normalize_uri
from transforms.labels import load_labels
from transforms.model import is_remote_file_uri, saved_model_outputs
from transforms.sink import remove_temp, temp_dir


class ConfigError(ValueError):
    """A bad option: the message says what is wrong and what to do."""


@dataclasses.dataclass(frozen=True)
class Config:
    inputs: tuple[str, ...]
    manifest: str | None
    output: str
    model: str
    labels: tuple[str, ...]
    top_k: int
    image_size: int
    batch_size: int
    date: str
    run_id: str
    skip_existing: bool = True
    require_gpu: bool = False
    quiet: bool = False
    progress_interval: float = 10.0


def check_model(handle: str, num_labels: int) -> None:
    """http(s) handles must be fetchable; gs:// and local paths must hold a SavedModel; its
    outputs, where saved_model.pb states them, must match the labels."""
    model_dir = handle
    if FileSystems.get_scheme(handle) in ("http", "https"):
        import tensorflow_hub as hub

        try:
            # Downloads into TFHUB_CACHE_DIR once; later runs (and the workers here) reuse it.
            model_dir = hub.resolve(handle)
        except Exception as e:  # noqa: BLE001 - any failure means the same to the user
            raise ConfigError(
                f"cannot download the model {handle} ({type(e).__name__}: {e}). Download "
                "the SavedModel where the internet is reachable, copy it here or to gs://, "
                "and pass --model /path/to/saved_model_dir (README: 'Running offline')"
            ) from e
    elif not is_remote_file_uri(handle) and not os.path.isdir(handle):
        raise ConfigError(f"--model {handle} does not exist; pass a SavedModel directory")
    elif not FileSystems.exists(FileSystems.join(handle.rstrip("/"), "saved_model.pb")):
        raise ConfigError(
            f"--model {handle} is not a SavedModel directory (no saved_model.pb in it)"
        )
    outputs = saved_model_outputs(model_dir)
    if outputs is not None and outputs != num_labels:
        raise ConfigError(
            f"--model {handle} has {outputs} outputs but the labels file has {num_labels} "
            "names; pass --labels with one class name per model output"
        )


CPU_BATCH, GPU_BATCH = 32, 64  # the default --batch_size without and with --require_gpu
PROBE = "probe"  # the start-up write check's temporary folder: ROOT/_temp/<run id>-probe
GCS_CHECK_SECONDS = 10.0  # transient faults are retried this long before we give up


def gcs_buckets(uris: Iterable[str | None]) -> list[str]:
    return sorted({u[5:].split("/")[0] for u in uris if u and u.startswith("gs://")})


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
    except Exception as e:  # noqa: BLE001 - a bad key file, a refused token, no network
        raise ConfigError(f"gs://{buckets[0]}: the credentials do not work ({e}); {hint}") from e
    retry = DEFAULT_RETRY.with_timeout(GCS_CHECK_SECONDS)
    for bucket in buckets:
        try:
            list(client.list_blobs(bucket, max_results=1, retry=retry, timeout=5))
        except exceptions.NotFound:
            raise ConfigError(f"bucket gs://{bucket} does not exist") from None
        except (exceptions.Forbidden, exceptions.Unauthorized) as e:
            raise ConfigError(f"no access to gs://{bucket} ({e.message}); {hint}") from None
        except Exception as e:  # noqa: BLE001 - unreachable after retries
            raise ConfigError(f"cannot reach gs://{bucket} ({type(e).__name__}: {e})") from e


def check_inputs(patterns: list[str], manifest: str | None) -> None:
    if not patterns and not manifest:
        raise ConfigError("no input: pass --input PATTERN and/or --input_manifest PATH")
    for pattern in patterns:
        try:
            found = FileSystems.match([pattern], limits=[1])[0].metadata_list
        except Exception as e:  # noqa: BLE001 - unreachable bucket, bad credentials, ...
            raise ConfigError(f"--input {pattern}: cannot list it ({e})") from e
        if not found:
            raise ConfigError(f"--input {pattern} matches no file; check the path and glob")
    if manifest:
        if not FileSystems.exists(manifest):
            raise ConfigError(f"--input_manifest {manifest} does not exist")
        if manifest_kind(manifest) != "text" and URI_COLUMN not in manifest_columns(manifest):
            raise ConfigError(
                f"--input_manifest {manifest} has no '{URI_COLUMN}' column; name the column "
                f"of image URIs '{URI_COLUMN}'"
            )


def check_writable(output: str, run_id: str) -> None:
    """Writes and deletes one empty file where the run keeps its temporary files, so an
    output the credentials (or the file system) will not take fails now, not after the work."""
    probe = FileSystems.join(temp_dir(output, run_id, PROBE), "writable")
    try:
        FileSystems.create(probe).close()
        FileSystems.delete([probe])
        remove_temp(output, run_id, (PROBE,))
    except Exception as e:  # noqa: BLE001 - permissions, a file in the way, no space
        raise ConfigError(f"--output {output} cannot be written to ({e})") from e


def check_date(date: str | None) -> str:
    if date is None:
        return dt.datetime.now(dt.UTC).date().isoformat()
    try:
        return dt.date.fromisoformat(date).isoformat()
    except ValueError:
        raise ConfigError(f"--date {date} is not a date; use YYYY-MM-DD") from None


def validate(opts: LabelerOptions) -> Config:
    """Checks every option once, cheapest first, before the model or any image is touched."""
    if not opts.output:
        raise ConfigError("--output is required: the folder or gs:// prefix to write to")
    if opts.image_size is None or opts.image_size <= 0:
        raise ConfigError(
            f"--image_size must be a positive number of pixels, not {opts.image_size}"
        )
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
    except Exception as e:  # noqa: BLE001 - missing, unreadable, not UTF-8
        raise ConfigError(f"--labels {opts.labels_file} cannot be read ({e})") from e
    if not labels:
        raise ConfigError(f"--labels {opts.labels_file} is empty; it needs one class name a line")
    if not 1 <= opts.top_k <= len(labels):
        raise ConfigError(f"--top_k must be between 1 and {len(labels)}, not {opts.top_k}")
    patterns = [normalize_uri(p) for p in opts.input or []]
    manifest = normalize_uri(opts.input_manifest) if opts.input_manifest else None
    model = normalize_uri(opts.model)  # local paths made absolute; URLs, gs:// as given
    output = normalize_uri(opts.output)
    check_buckets([*patterns, manifest, output, model])
    check_inputs(patterns, manifest)
    check_model(model, len(labels))
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    check_writable(output, run_id)  # last: a run that stops earlier writes nothing at all
    return Config(
        inputs=tuple(patterns),
        manifest=manifest,
        output=output,
        model=model,
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
    )
