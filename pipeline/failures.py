"""How a run ended when its job raised: the exit status and the one line (run.py prints them),
and the Beam log records that would repeat that line."""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping

from apache_beam.runners.runner import PipelineState

from pipeline import exit_status
from transforms.models.catalog import ModelOutputError
from transforms.output import WRITE_STEPS
from transforms.vocabulary import ERRORS, PREDICTIONS, exception_chain

# Text Beam or Python writes, matched only where no type or state says it; tests/test_failures.py
# pins each (and each log filter's) to what the pinned Beam really produced.
# Beam's suffix on a failing step's exception (DoFnRunner._reraise_augmented), the one place a
# step's name is kept: "boom [while running 'WritePredictions/WriteToFiles/...']".
_STEP = re.compile(r" \[while running '([^']*)'\]")
# An OSError as Python writes it, all a runner in another process passes on: "[Errno 28] No
# space left on device".
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\] ([^\[\]'\"\n]+)")
# A Java exception's line (Throwable.toString), as a Java job server (Flink) reports the
# root cause: "java.io.IOException: No space left on device".
_JAVA_EXCEPTION = "Exception:"

# errno values that can only mean the output could not take a file; others (a permission, an
# I/O error) count as write faults when a write step raised them.
_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def steps_named(text: str) -> list[str]:
    """The steps Beam's suffixes in `text` name, outermost first."""
    return _STEP.findall(text)


def in_write_step(text: str) -> bool:
    """Whether a step that writes the output (WRITE_STEPS, or a step inside one) failed."""
    writes = WRITE_STEPS.values()
    return any(s == w or s.startswith(w + "/") for s in steps_named(text) for w in writes)


def model_output_error(exc: BaseException) -> str | None:
    """The one line of a ModelOutputError that failed the job (raised when the worker loaded
    a model whose output saved_model.pb did not declare), else None. The innermost one is the
    one raised (Beam re-raises a copy with its step's suffix); a runner in another process
    passes only text, and gives None."""
    found = [link for link in exception_chain(exc) if isinstance(link, ModelOutputError)]
    return str(found[-1]) if found else None


def _os_errors(exc: BaseException) -> Iterator[OSError]:
    """The OSErrors (with an errno) in an exception's chain, and in the details Beam's
    BeamIOError keeps per file, outermost first."""
    for link in exception_chain(exc):
        details = getattr(link, "exception_details", None)
        found = [link, *(details.values() if isinstance(details, dict) else ())]
        yield from (e for e in found if isinstance(e, OSError) and isinstance(e.errno, int))


def write_fault(exc: BaseException) -> str | None:
    """What kept the run's output from being written, in a few words ('No space left on
    device'), when `exc`, the failure of a job, is a write fault: a full disk or quota, a
    file-size limit or a read-only file system anywhere in its chain (or, from a runner in
    another process, in its text), or any storage fault raised by a write step. None for
    any other failure (a bug)."""
    text = "\n".join(str(link) for link in exception_chain(exc))
    writing = in_write_step(text)
    for error in _os_errors(exc):
        if writing or error.errno in _FULL_OR_READ_ONLY:
            where = f": {error.filename}" if error.filename else ""
            return f"{os.strerror(error.errno)}{where}"
    found = _ERRNO_TEXT.search(text)
    if found and (writing or int(found[1]) in _FULL_OR_READ_ONLY):
        return found[2].strip()
    if writing:
        first = text.splitlines()[0] if text else type(exc).__name__
        return _STEP.sub("", first)[:300]
    return None


def failed_job(
    exc: BaseException, output: str, kept: Callable[[], Mapping[str, int]]
) -> tuple[int, str] | None:
    """(exit status, one line) for a job that failed for a reason the user can fix: a model
    whose output is wrong (2: nothing was written) or output that could not be written (4,
    with the rows `kept()` counts as this run's in `output`); None for anything else, a bug
    (Beam's traceback, exit status 1)."""
    if (line := model_output_error(exc)) is not None:
        return exit_status.BAD_OPTION, f"{line}; nothing was written"
    fault = write_fault(exc)
    if fault is None:
        return None
    try:
        rows = kept()
        what = f"{rows[PREDICTIONS]} predictions and {rows[ERRORS]} error rows of this run are in"
    except Exception:  # the output cannot be read back either
        what = "what this run wrote is in"
    return exit_status.OUTPUT_LOST, (
        f"the output could not be written ({fault}); {what} {output}: fix that and "
        "run the same command again: what is kept is not labelled twice"
    )


def job_state(result) -> str | None:
    """The state (PipelineState) a job run out of this process is in, as its runner (the job
    service) says; None without a result or where the runner cannot be asked."""
    try:
        return None if result is None else result.state
    except Exception:  # noqa: BLE001 - the job service has gone
        return None


def portable_job_failed(exc: BaseException, state: str | None) -> bool:
    """A job run out of this process (Flink, a job service) that failed there: Beam raised
    RuntimeError and the job service holds the job in a state other than DONE."""
    return isinstance(exc, RuntimeError) and state not in (None, PipelineState.DONE)


def one_line(message: str, limit: int = 400) -> str:
    """The last line naming an exception ('java.io.IOException: ...', as Flink's root cause is
    written), else the first line that says something; shortened."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    causes = [line for line in lines if _JAVA_EXCEPTION in line and not line.startswith("at ")]
    text = (causes[-1] if causes else lines[0] if lines else message).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _not_step_failure(record: logging.LogRecord) -> bool:
    """Beam logs a failing step's exception before raising it: the raise is our one line."""
    return _STEP.search(str(record.msg)) is None


def _not_orphaned_files(record: logging.LogRecord) -> bool:
    """Files not renamed into a partition are counted as missing (exit status 4), not Beam's."""
    return "left orphaned in the temporary folder" not in str(record.msg)


def _not_resource_module(record: logging.LogRecord) -> bool:
    """Beam 2.77's RunInference warns of `resource` on every run without torch: not ours."""
    return "Resource module is not available" not in str(record.msg)


# (logger, filter): a logger's filter sees only the records logged through that very logger;
# '' is the root logger, which Beam's RunInference logs its warning through.
LOG_FILTERS: tuple[tuple[str, Callable[[logging.LogRecord], bool]], ...] = (
    ("apache_beam.runners.common", _not_step_failure),
    ("apache_beam.io.fileio", _not_orphaned_files),
    ("", _not_resource_module),
)


def quiet_beam_logs() -> None:
    """Installs LOG_FILTERS: Beam's records that say again, or wrongly, what the exit status
    and its line say."""
    for name, keep in LOG_FILTERS:
        logging.getLogger(name).addFilter(keep)
