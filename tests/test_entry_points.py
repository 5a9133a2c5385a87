"""One rule for relative paths in every entry point: run_local.sh, label-images,
run_dataflow.sh and run_flink.sh take them from the folder the command is run in, never from
the checkout's. Each is run from a folder of the user's own, outside the checkout. Also what a
newcomer's first commands say: the set-up while it installs, the summary's folders."""

import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.odd_files import jpeg
from tests.runs import ROOT, cli_env, read_rows

pytestmark = pytest.mark.slow  # every test here runs the real command


def users_folder(tmp_path: pathlib.Path, sample_jpeg: bytes, probe_model: str) -> pathlib.Path:
    """A folder with photos/ and a model/ of the user's own, as a newcomer has them."""
    home = tmp_path / "work"
    for name in ("a.jpg", "b.jpg"):
        jpeg(home / "photos" / name, sample_jpeg)
    shutil.copytree(probe_model, home / "model")
    return home


def in_folder(home: pathlib.Path, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=home, env=cli_env(), capture_output=True, text=True, timeout=300
    )


RELATIVE = ("--input", "photos/*.jpg", "--output", "labels", "--model", "model")


@pytest.mark.parametrize(
    "command", [f"{ROOT}/run_local.sh", str(pathlib.Path(sys.executable).parent / "label-images")]
)
def test_relative_paths_are_taken_from_the_folder_the_command_runs_in(
    command, tmp_path, sample_jpeg, probe_model
):
    home = users_folder(tmp_path, sample_jpeg, probe_model)
    proc = in_folder(home, command, *RELATIVE, "--image_size=32", "--date=2025-07-01")
    assert proc.returncode == 0, proc.stderr[-3000:]
    predicted = sorted(row["uri"] for row in read_rows(str(home / "labels"), "predictions"))
    assert predicted == [str(home / "photos" / n) for n in ("a.jpg", "b.jpg")]
    assert {row["model"] for row in read_rows(str(home / "labels"), "predictions")} == {
        str(home / "model")
    }
    assert not (pathlib.Path(ROOT) / "labels").exists()
    # The summary names the folders that exist: nothing failed, so no errors partition.
    summary = proc.stderr.splitlines()[-1]
    assert summary.endswith(f"; predictions: {home}/labels/predictions/date=2025-07-01")
    assert not (home / "labels" / "errors").exists()
    assert list((home / "labels" / "_temp").iterdir()) == []  # the folder stays (README)
    again = in_folder(home, command, *RELATIVE, "--image_size=32", "--date=2025-07-01")
    assert again.returncode == 0, again.stderr[-3000:]
    last = again.stderr.splitlines()[-1]
    assert "2 already in the output" in last and last.endswith("; nothing written"), last


def test_run_dataflow_takes_relative_paths_from_the_folder_it_runs_in(
    tmp_path, sample_jpeg, probe_model
):
    """The launcher lists and checks the inputs itself: a relative pattern is found from the
    user's folder (the run then stops at the model, B3 from an unreachable TF Hub, before
    anything reaches Dataflow)."""
    home = users_folder(tmp_path, sample_jpeg, probe_model)
    dead = "http://127.0.0.1:9"
    env = cli_env() | {
        "TFHUB_CACHE_DIR": str(tmp_path / "tfhub"),
        "https_proxy": dead,
        "HTTPS_PROXY": dead,
    }
    proc = subprocess.run(
        [f"{ROOT}/run_dataflow.sh", "--project=p", "--bucket=b", "--image=i", *RELATIVE[:4]],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith("python -m pipeline.run: error: cannot download the model")
    assert not (pathlib.Path(ROOT) / "labels").exists()


def test_the_set_up_says_what_it_does_while_it_installs(tmp_path):
    """scripts/setup_venv.sh in a copy of the checkout, with a python3 whose venv's pip and uv
    only record what they are asked: a line before and after an install, nothing once
    installed."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(pathlib.Path(ROOT) / "scripts" / "setup_venv.sh", checkout / "scripts")
    (checkout / "requirements.txt").write_text("")
    log, stub, bin_dir = tmp_path / "pip.log", tmp_path / "stub", tmp_path / "bin"
    stub.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(  # python3 -m venv .venv
        f'#!/bin/sh\nmkdir -p "$3/bin"\n'
        f'for tool in pip uv python; do cp {stub} "$3/bin/$tool"; done\n'
    )
    for each in (stub, bin_dir / "python3"):
        each.chmod(0o755)
    env = cli_env() | {"PATH": f"{bin_dir}:{cli_env()['PATH']}"}
    first, again = (
        subprocess.run(
            [checkout / "scripts" / "setup_venv.sh"], env=env, capture_output=True, text=True
        )
        for _ in range(2)
    )
    assert first.returncode == 0, first.stderr
    assert first.stderr.splitlines() == [
        "setting up .venv: installing requirements.txt (the first time, or after it changed: "
        "a few minutes)...",
        "setting up .venv: done",
    ]
    assert "-r requirements.txt" in log.read_text()
    assert (again.returncode, again.stderr) == (0, "")
