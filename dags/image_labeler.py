"""The Airflow DAG that labels each day's new images (docs/airflow.md): one task, `label`, runs
the labeller for the run's logical date on DirectRunner, Dataflow (Flex Template) or Flink."""

from __future__ import annotations

import datetime as dt
import pathlib
import shlex
import shutil

import pendulum
from airflow.sdk import DAG, CronDataIntervalTimetable, Param, Variable
from airflow.sdk.exceptions import AirflowException, AirflowFailException

# Deployment settings: one JSON Variable, `image_labeler` (or AIRFLOW_VAR_IMAGE_LABELER in the
# environment), read when the file is parsed; docs/airflow.md lists its keys.
SETTINGS: dict = Variable.get("image_labeler", default={}, deserialize_json=True)
RUNNER = SETTINGS.get("runner", "DirectRunner")
RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner")
if RUNNER not in RUNNERS:
    raise ValueError(f"image_labeler: runner {RUNNER!r} is none of {', '.join(RUNNERS)}")
# The project checkout (its run_local.sh, run_flink.sh and .venv) on the machine that runs the
# task, for DirectRunner and Flink: by default the folder above this file's, as in the repository.
HOME = pathlib.Path(SETTINGS.get("home") or pathlib.Path(__file__).resolve().parents[1])
SCRIPT = {"DirectRunner": "run_local.sh", "FlinkRunner": "run_flink.sh"}.get(RUNNER)
if SCRIPT and not (HOME / SCRIPT).is_file():
    raise ValueError(
        f"image_labeler: no {SCRIPT} in {HOME}: set 'home' in the image_labeler Variable to the "
        "project's checkout on the workers"
    )

# pipeline.run's flags a run sets through params (docs/airflow.md); `options` adds any other.
RUN_FLAGS = ("input", "input_manifest", "output", "model", "max_error_ratio", "max_attempts")
# flex_template/metadata.json's parameters: all a Flex Template run can be given (a test keeps
# the two equal).
FLEX_PARAMETERS = (
    "input",
    "input_manifest",
    "output",
    "model",
    "labels_file",
    "top_k",
    "image_size",
    "batch_size",
    "read_concurrency",
    "max_inflight_mb",
    "max_object_mb",
    "max_error_ratio",
    "date",
    "max_attempts",
    "require_gpu",
    "skip_existing",
)


def run_param(name: str, kind: str, text: str) -> Param:
    """A param whose default is the Variable's value; output, without one, must be given."""
    if name in SETTINGS:
        return Param(SETTINGS[name], type=kind, description=text)
    if name == "output":
        return Param(type=kind, description=text)
    return Param(None, type=["null", kind], description=text)


PARAMS = {
    "input": run_param("input", "string", "Image pattern (absolute, or gs://); * and ** globs"),
    "input_manifest": run_param("input_manifest", "string", "File listing image URIs"),
    "output": run_param("output", "string", "Output root: OUTPUT/predictions/date=DS/"),
    "model": run_param("model", "string", "SavedModel folder, TF Hub handle or efficientnet-lite0"),
    "max_error_ratio": run_param("max_error_ratio", "number", "Largest share of failed images"),
    "max_attempts": run_param("max_attempts", "integer", "Runs that try a curable failure"),
    "options": Param(
        SETTINGS.get("options", {}),
        type="object",
        description="Other python -m pipeline.run flags, {name: value}; true: the bare flag",
    ),
}


def labeller_options(params, date: str) -> dict:
    """pipeline.run's flags for this run, {name: value}: the params that are set, the other
    options, and --date, the run's logical date (so each day writes its own partition)."""
    options = {name: params[name] for name in RUN_FLAGS if params.get(name) is not None}
    return {**options, **(params.get("options") or {}), "date": date}


def command(params, date: str) -> str:
    """The labeller's command line: run_local.sh (DirectRunner) or run_flink.sh with the
    `flink` settings' flags (docs/flink.md), then the run's flags."""
    flags = SETTINGS.get("flink", {}) if RUNNER == "FlinkRunner" else {}
    words = [str(HOME / SCRIPT)]
    for name, value in {**flags, **labeller_options(params, date)}.items():
        if value is True:
            words.append(f"--{name}")
        elif value is not False and value is not None:
            words += [f"--{name}", str(value)]
    return " ".join(shlex.quote(word) for word in words)


def flex_parameters(params, date: str) -> dict[str, str]:
    """The Flex Template parameters (docs/dataflow.md), each a string as the API wants."""
    options = labeller_options(params, date)
    if SETTINGS.get("dataflow", {}).get("gpu_type", "nvidia-l4"):
        options.setdefault("require_gpu", True)
    unknown = sorted(set(options) - set(FLEX_PARAMETERS))
    if unknown:
        raise AirflowFailException(
            f"not Flex Template parameters (flex_template/metadata.json): {', '.join(unknown)}"
        )
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items()}


def flex_pipeline_options() -> list[str]:
    """The Flex Template run's additional pipeline options: the worker image and its GPU."""
    dataflow = SETTINGS.get("dataflow", {})
    options = [f"sdk_container_image={dataflow['image']}"] if dataflow.get("image") else []
    gpu = dataflow.get("gpu_type", "nvidia-l4")
    if gpu:
        count = dataflow.get("gpu_count", 1)
        accelerator = f"worker_accelerator=type:{gpu};count:{count};install-nvidia-driver"
        options.append(f"dataflow_service_options={accelerator}")
    return options


# The labeller's exit statuses (pipeline/exit_status.py) as Airflow takes them: 2 and 3 fail
# the task at once, with this line in its log; any other failure (4 output not written, 143
# SIGTERM, a kill) is retried, and the same command resumes from what was committed.
NOT_RETRIED = {
    2: "exit status 2: a bad option or input, or another run holds the output's lease (the "
    "labeller's last line says which). Not retried: the same command would fail the same way",
    3: "exit status 3: more than --max_error_ratio of the day's images failed (OUTPUT/errors/"
    "date={ds} says why). Not retried: a retry would skip them, their error rows being "
    "written, and pass with nothing labelled",
}


def outcome(status: int, ds: str) -> None:
    """Nothing for 0; AirflowFailException (no retry) for 2 and 3; AirflowException (retried
    while retries are left) for anything else."""
    if status == 0:
        return
    if status in NOT_RETRIED:
        raise AirflowFailException(NOT_RETRIED[status].format(ds=ds))
    ended = f"was killed by signal {-status}" if status < 0 else f"ended with exit status {status}"
    raise AirflowException(
        f"the labeller {ended}; retried while retries are left: the same command labels what "
        "is not committed yet, each image once"
    )


with DAG(
    dag_id="image_labeler",
    description="Labels the day's new images into OUTPUT/predictions/date=DS",
    # The run for day DS starts when the day is over (DS + 1 at 00:00 UTC), so what arrived
    # during DS is labelled into date=DS.
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.parse(SETTINGS.get("start_date", "2026-01-01")),
    catchup=SETTINGS.get("catchup", False),
    # One run at a time, days in order (the labeller's own lease also refuses a second run on
    # the same output, exit status 2).
    max_active_runs=1,
    default_args={
        # A failed day holds the days after it until it is cleared and passes, so that each
        # image is labelled into the day it arrived ("depends_on_past": false lets them go on).
        "depends_on_past": SETTINGS.get("depends_on_past", True),
        "retries": SETTINGS.get("retries", 2),
        "retry_delay": dt.timedelta(seconds=SETTINGS.get("retry_delay_seconds", 300)),
    },
    params=PARAMS,
    user_defined_macros={
        "command": command,
        "flex_parameters": flex_parameters,
        "flex_pipeline_options": flex_pipeline_options,
    },
    # The Flex Template body's templates give Python values (a dict, a list).
    render_template_as_native_obj=RUNNER == "DataflowRunner",
    tags=["image-labeler"],
) as dag:
    if RUNNER == "DataflowRunner":
        # Imported only here: the Google provider is needed on Dataflow deployments alone.
        from airflow.providers.google.cloud.operators.dataflow import (
            DataflowStartFlexTemplateOperator,
        )

        dataflow = SETTINGS.get("dataflow", {})
        DataflowStartFlexTemplateOperator(
            task_id="label",
            project_id=dataflow.get("project"),
            location=dataflow.get("region", "us-central1"),
            body={
                "launchParameter": {
                    "jobName": "labels-{{ ds_nodash }}",
                    "containerSpecGcsPath": dataflow.get("template"),
                    "parameters": "{{ flex_parameters(params, ds) }}",
                    "environment": {"additionalPipelineOptions": "{{ flex_pipeline_options() }}"},
                }
            },
            wait_until_finished=True,
        )
    else:
        # Not the Beam provider's BeamRunPythonPipelineOperator, which gives the exit status
        # only inside its exception's text, and whose on_kill stops Dataflow jobs only
        # (docs/airflow.md, "Why a BashOperator").
        from airflow.providers.standard.operators.bash import BashOperator

        class LabelImages(BashOperator):
            """run_local.sh (DirectRunner, on this worker) or run_flink.sh (a Flink cluster)
            for the day; its exit status decides between success, retry and failure. On a
            kill (a timeout, "mark failed") BashOperator's on_kill sends SIGTERM to the
            command's process group: the labeller commits the portion in flight if it can."""

            def execute(self, context):
                bash = shutil.which("bash") or "bash"
                result = self.subprocess_hook.run_command(
                    command=[bash, "-c", self.bash_command],
                    env=self.get_env(context),
                    output_encoding=self.output_encoding,
                    cwd=self.cwd,
                )
                outcome(result.exit_code, context["ds"])

        LabelImages(task_id="label", bash_command="{{ command(params, ds) }}")
