"""Helpers for the tests of odd inputs: the CLI on the probe model at a fixed date, files
written anywhere, a name that is not UTF-8, FIFOs."""

from __future__ import annotations

import os
import pathlib
import subprocess

from tests.runs import cli
from tests.test_hostile_inputs import DATE

BAD_NAME = os.fsdecode(b"bad\xff\xfe.jpg")  # not UTF-8: the file system's bytes, escaped
NAME_MAX = os.pathconf("/", "PC_NAME_MAX")


def label(inputs, out, model, *extra, timeout=120, **popen) -> subprocess.CompletedProcess:
    """The CLI on `inputs` with the probe model, small images and a fixed date; a hang fails
    the test (subprocess.TimeoutExpired) instead of stalling it."""
    return cli(
        *inputs,
        f"--output={out}",
        f"--model={model}",
        "--image_size=32",
        f"--date={DATE}",
        *extra,
        timeout=timeout,
        **popen,
    )


def jpeg(path: pathlib.Path | str, data: bytes) -> str:
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_bytes(data)
    return str(path)


def fifo_at(path: pathlib.Path) -> str:
    os.mkfifo(path)
    return str(path)
