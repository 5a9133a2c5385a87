"""Numeric options and their bounds: out of range, inf and nan refused as one line (exit 2),
the bounds stated by --help."""

from __future__ import annotations

import math

import pytest

from pipeline.config import ConfigError, check_number
from tests.odd_files import label
from tests.runs import cli
from tests.test_hostile_inputs import start_up_error


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 0, -1, 1e400, 10**9])
def test_numbers_out_of_bounds_are_refused(value):
    with pytest.raises(ConfigError, match="--x must be between 1 and 100"):
        check_number("x", value, 1, 100, "MB")


def test_numbers_in_bounds_pass():
    assert check_number("x", 1, 1, 100, "MB") == 1
    assert check_number("x", 100.0, 1, 100, "MB") == 100.0


# --- Runs of the CLI -----------------------------------------------------------------------


BAD_OPTIONS = {
    "--max_object_mb=inf": "--max_object_mb must be between",
    "--max_object_mb=nan": "--max_object_mb must be between",
    "--max_object_mb=1e400": "--max_object_mb must be between",
    "--max_object_mb=0": "--max_object_mb must be between",
    "--max_inflight_mb=inf": "--max_inflight_mb must be between",
    "--max_inflight_mb=1e9": "--max_inflight_mb must be between",
    "--read_concurrency=100000": "--read_concurrency must be between",
    "--read_concurrency=0": "--read_concurrency must be between",
    "--batch_size=1000000": "--batch_size must be between",
    "--batch_size=-3": "--batch_size must be between",
    "--progress_interval=1e-6": "--progress_interval must be between",
    "--progress_interval=inf": "--progress_interval must be between",
    "--progress_interval=nan": "--progress_interval must be between",
    "--max_error_ratio=nan": "--max_error_ratio must be between",
}


@pytest.mark.slow  # runs the real command
@pytest.mark.parametrize("option", BAD_OPTIONS)
def test_numeric_options_out_of_bounds_are_one_line(option, tmp_path, image_dir, probe_model):
    out = tmp_path / "out"
    line = start_up_error(label([f"--input={image_dir['root']}/*.png", option], out, probe_model))
    assert BAD_OPTIONS[option] in line
    assert not out.exists()


def test_help_states_the_bounds():
    proc = cli("--help", timeout=120)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for bound in ["at most 1024", "at most 512", "at most 16384", "at most 4096", "0.1 to 86400"]:
        assert bound in text, bound
