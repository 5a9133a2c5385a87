"""How a run ended (pipeline/failures.py), on failures the pinned Beam really raises: small
pipelines on DirectRunner (the exception objects) and on Beam's portable runner with its
in-process job service (text and a job state only, as from Flink). Each text pattern
failures.py matches, and each log record it drops, is checked on what Beam produced here."""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import shutil
import subprocess

import apache_beam as beam
import pytest
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_job_api_pb2 as job_api
from apache_beam.runners.portability.portable_runner import PipelineResult
from apache_beam.runners.runner import PipelineState

from pipeline import exit_status, failures
from transforms.models.catalog import ModelOutputError
from transforms.output import WRITE_STEPS, WritePartition
from transforms.rows import PREDICTION_SCHEMA
from transforms.vocabulary import ERRORS, PREDICTIONS, exception_chain

# Beam's portable runner with its job service in this process: what a job on Flink raises.
PORTABLE = ("--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK")
DATE, RUN = "2025-06-07", "r1"
WRITER = WRITE_STEPS[PREDICTIONS]


class QuotaException(Exception):
    """A step's failure whose type name ends as a Java one does."""


def fail_with(exc: BaseException):
    def fail(_):
        raise exc

    return fail


def fill_dev_full(_) -> None:
    with open("/dev/full", "w") as f:  # every write: ENOSPC, a real full disk's errno
        f.write("row")
        f.flush()


def write_under(file: str):
    def write(_) -> None:
        with open(os.path.join(file, "row"), "w"):  # ENOTDIR: a file where a folder belongs
            pass

    return write


def step(name: str, fn):
    return lambda p: p | beam.Create([0]) | name >> beam.Map(fn)


def writer(root: pathlib.Path):
    """The project's writer of predictions, under its graph's label."""

    def build(p):
        rows = p | beam.Create([{"uri": "a.jpg"}])
        return rows | WRITER >> WritePartition(
            str(root), PREDICTIONS, DATE, RUN, PREDICTION_SCHEMA, {}
        )

    return build


@contextlib.contextmanager
def records():
    """Every log record made while the block runs, at any level, from any logger."""
    caught: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = caught.append
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield caught
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def run(build, *options: str):
    """Runs the pipeline `build` makes; (what its run raised or None, its result or None)."""
    pipeline = beam.Pipeline(options=PipelineOptions(list(options)))
    build(pipeline)
    result = None
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as e:  # the failure is what is tested
        return e, result
    return None, result


def failure(build, *options: str):
    exc, result = run(build, *options)
    assert exc is not None, "the pipeline did not fail"
    return exc, result


def a_file(tmp_path: pathlib.Path, name: str) -> pathlib.Path:
    (tmp_path / name).write_text("a file where a folder belongs")
    return tmp_path / name


def dropped(caught: list[logging.LogRecord], logger: str) -> list[logging.LogRecord]:
    """The records logged through `logger` ('' the root) that quiet_beam_logs drops there."""
    loggers = [logging.getLogger(name) for name, _ in failures.LOG_FILTERS]
    saved = [list(each.filters) for each in loggers]
    failures.quiet_beam_logs()
    try:
        through = logging.getLogger(logger)
        return [r for r in caught if r.name == (logger or "root") and not through.filter(r)]
    finally:  # as they were: other tests' records pass
        for each, filters in zip(loggers, saved, strict=True):
            each.filters[:] = filters


# --- in this process (DirectRunner): the exception objects --------------------------------


def test_a_wrong_model_output_is_found_by_type_and_said_without_beams_suffix():
    wrong = ModelOutputError("--model m returns 3 numbers an image; the labels are 1000")
    exc, _ = failure(step("RunInference", fail_with(wrong)))
    assert str(exc).endswith(" [while running 'RunInference']")  # Beam's copy of it
    assert failures.model_output_error(exc) == str(wrong)
    assert failures.failed_job(exc, "out", dict) == (
        exit_status.BAD_OPTION,
        f"{wrong}; nothing was written",
    )


def test_a_full_disk_in_any_step_is_a_write_fault_by_its_errno():
    exc, _ = failure(step("Decode", fill_dev_full))
    assert failures.write_fault(exc) == "No space left on device"


def test_beams_suffix_names_the_failing_write_step(tmp_path):
    """The project's writer fails (its temporary folder's parent is a file): Beam's suffix
    names the step inside WritePredictions, and that makes ENOTDIR a write fault."""
    temp = a_file(tmp_path, "_temp")
    exc, _ = failure(writer(tmp_path))
    (named, *_) = failures.steps_named(str(exc))
    assert named.startswith(f"{WRITER}/"), named
    assert failures.write_fault(exc) == f"Not a directory: {temp}/{RUN}-{PREDICTIONS}"


def test_the_same_errno_outside_a_write_step_is_no_write_fault(tmp_path):
    exc, _ = failure(step("ReadDone", write_under(str(a_file(tmp_path, "file")))))
    assert any(isinstance(link, NotADirectoryError) for link in exception_chain(exc))
    assert failures.write_fault(exc) is None


def test_a_write_step_failing_without_an_errno_is_its_message_without_beams_suffix():
    exc, _ = failure(step(WRITE_STEPS[ERRORS], fail_with(ValueError("rows do not fit"))))
    assert failures.write_fault(exc) == "rows do not fit"


def test_a_write_fault_says_what_this_run_kept(tmp_path):
    a_file(tmp_path, PREDICTIONS)
    exc, _ = failure(step(WRITER, write_under(str(tmp_path / PREDICTIONS))))
    status, line = failures.failed_job(exc, "out/", lambda: {PREDICTIONS: 3, ERRORS: 1})
    assert status == exit_status.OUTPUT_LOST
    assert line == (
        f"the output could not be written (Not a directory: {tmp_path}/{PREDICTIONS}/row); "
        "3 predictions and 1 error rows of this run are in out/: fix that and run the same "
        "command again: what is kept is not labelled twice"
    )

    def unreadable() -> dict[str, int]:
        raise OSError("gone")

    _, line = failures.failed_job(exc, "out/", unreadable)
    assert "; what this run wrote is in out/: " in line


def test_a_bug_is_no_known_failure():
    exc, _ = failure(step("Postprocess", fail_with(KeyError("scores"))))
    assert failures.failed_job(exc, "out/", dict) is None


# --- a portable runner (Flink, a job service): text and the job's state only ---------------


def test_a_job_failed_on_a_portable_runner_is_told_by_its_state():
    exc, result = failure(step("Count", fail_with(QuotaException("quota exceeded"))), *PORTABLE)
    assert type(exc) is RuntimeError and exc.__cause__ is None and exc.__context__ is None
    state = failures.job_state(result)
    assert state == PipelineState.FAILED
    assert failures.portable_job_failed(exc, state)
    assert not failures.portable_job_failed(exc, PipelineState.DONE)
    assert not failures.portable_job_failed(exc, None)  # the job service cannot be asked
    assert failures.failed_job(exc, "out/", dict) is None  # no write step, no errno
    # The last line naming an exception, as a Java root cause would be.
    assert failures.one_line(str(exc)).endswith(
        "QuotaException: quota exceeded [while running 'Count']"
    ), str(exc)


def test_a_portable_runner_passes_a_full_disk_as_text():
    exc, _ = failure(step("Decode", fill_dev_full), *PORTABLE)
    assert not [link for link in exception_chain(exc) if isinstance(link, OSError)]
    assert failures.write_fault(exc) == "No space left on device"


def test_a_portable_runner_names_the_failing_write_step_in_text(tmp_path):
    a_file(tmp_path, "_temp")
    exc, _ = failure(writer(tmp_path), *PORTABLE)
    assert not [link for link in exception_chain(exc) if isinstance(link, OSError)]
    assert failures.in_write_step(str(exc))
    assert failures.write_fault(exc) == "Not a directory:"


def test_without_a_write_step_a_portable_enotdir_is_no_write_fault(tmp_path):
    exc, _ = failure(step("ReadDone", write_under(str(a_file(tmp_path, "file")))), *PORTABLE)
    assert "[Errno 20] Not a directory" in str(exc)
    assert failures.write_fault(exc) is None


def java_root_cause(tmp_path: pathlib.Path) -> tuple[str, str]:
    """What Beam's Java job server (JobInvocation, the Flink path) sends of a failed job, as
    the JVM writes it: the stack trace (a debug message), then getRootCause(e).toString()
    (the error message). Java is the JVM here; skips without one."""
    if shutil.which("java") is None:
        pytest.skip("needs java to write a Java exception as the Flink job server does")
    source = tmp_path / "Failed.java"
    source.write_text(
        "public class Failed { public static void main(String[] a) {\n"
        '  Throwable e = new RuntimeException("Job execution failed.", new java.io.IOException('
        '"Insufficient number of network buffers: required 17, but only 3 available"));\n'
        "  java.io.StringWriter trace = new java.io.StringWriter();\n"
        "  e.printStackTrace(new java.io.PrintWriter(trace));\n"
        '  System.out.print(trace + "\\u0000" + e.getCause().toString()); } }\n'
    )
    proc = subprocess.run(["java", str(source)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    trace, root_cause = proc.stdout.split("\0")
    return trace, root_cause


def test_a_java_root_cause_is_the_line_beams_portable_runner_reports(tmp_path):
    trace, root_cause = java_root_cause(tmp_path)
    important = job_api.JobMessage.MessageImportance

    def said(text: str, importance) -> job_api.JobMessagesResponse:
        message = job_api.JobMessage(message_text=text, importance=importance)
        return job_api.JobMessagesResponse(message_response=message)

    messages = [
        said(trace, important.JOB_MESSAGE_DEBUG),
        said(root_cause, important.JOB_MESSAGE_ERROR),
    ]
    failed = job_api.JobStateEvent(state=job_api.JobState.FAILED)
    result = PipelineResult(None, "job-1", iter(messages), iter([failed]))
    with pytest.raises(RuntimeError) as raised:
        result.wait_until_finish()  # Beam formats the failure from the job service's messages
    assert failures.one_line(str(raised.value)) == (
        "Pipeline job-1 failed in state FAILED: java.io.IOException: Insufficient number of "
        "network buffers: required 17, but only 3 available"
    )


# --- Beam's log records that quiet_beam_logs drops ------------------------------------------


def test_beams_log_of_a_failing_steps_exception_is_dropped():
    with records() as caught:
        failure(step("RunInference", fail_with(ModelOutputError("--model m returns a dict"))))
    assert dropped(caught, "apache_beam.runners.common")
    assert not dropped(caught, "apache_beam.io.fileio")


def test_beams_warning_of_files_left_in_the_temporary_folder_is_dropped(tmp_path):
    """A finished file that cannot be renamed into its partition (a file holds its place):
    Beam warns that it was left in _temp/, and the job succeeds."""
    a_file(tmp_path, PREDICTIONS)
    with records() as caught:
        exc, _ = run(writer(tmp_path))
    assert exc is None
    assert dropped(caught, "apache_beam.io.fileio")


class Echo(ModelHandler):
    def load_model(self):
        return None

    def run_inference(self, batch, model, inference_args=None):
        return [PredictionResult(x, x) for x in batch]


def test_run_inferences_warning_of_no_resource_module_is_dropped():
    with records() as caught:
        exc, _ = run(lambda p: p | beam.Create([1, 2]) | RunInference(Echo()))
    assert exc is None
    assert dropped(caught, "")
