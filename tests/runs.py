"""Running the job in tests (the real CLI in a child process, or the graph on TestPipeline)
and reading its output back as users do: every file under ROOT/<kind>/, local or gs://
(through Beam's filesystems), with the Hive date and the run that wrote each row."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline

from pipeline.config import prepare
from pipeline.graph import build_pipeline
from pipeline.options import LabelerOptions
from tests.gcs_proxy import Fault, Gate, LatencyProxy
from tests.zygote import Forked, Zygote
from transforms.metrics import NAMESPACE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(
    *args: str, timeout: int = 300, prefix: Sequence[str] = (), fresh: bool = False, **popen
) -> subprocess.CompletedProcess:
    """python -m pipeline.run ARGS as a user runs it (TensorFlow's log level unset, so its
    start-up is as quiet as a user's), stdout and stderr captured. The process is forked
    from the worker's fork server (tests/zygote.py), which has paid the imports once; with
    `fresh`, a `prefix` (a command to run it under) or other Popen settings it is a new
    interpreter, start-up included."""
    env = cli_env() | popen.pop("env", {})
    if fresh or prefix or popen:
        return subprocess.run(
            [*prefix, sys.executable, "-m", "pipeline.run", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            **popen,
        )
    return finished(start_forked("pipeline.run", args, env, subprocess.PIPE), timeout)


_ZYGOTE: Zygote | None = None


def start_forked(module: str, args: Sequence[str], env: dict[str, str], stdout, stderr=None):
    """python -m MODULE ARGS, forked from this worker's fork server (tests/zygote.py, started
    on first use; tests/conftest.py stops it when the session ends): a Popen-like child
    whose stderr is a pipe unless `stderr` says otherwise."""
    global _ZYGOTE
    if _ZYGOTE is None:
        _ZYGOTE = Zygote(ROOT, cli_env())
    stderr = subprocess.PIPE if stderr is None else stderr
    return _ZYGOTE.start(module, list(args), cwd=ROOT, env=env, stdout=stdout, stderr=stderr)


def finished(proc: Forked, timeout: float) -> subprocess.CompletedProcess:
    """Its output and status, as subprocess.run gives them; killed past `timeout`."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def stop_fork_server() -> None:
    if _ZYGOTE is not None:
        _ZYGOTE.stop()


def obeying_file_modes() -> list[str]:
    """A command prefix (for cli's `prefix`) that drops CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH, so file modes hold even for root (who ignores them otherwise);
    skips the test where that cannot be done."""
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def report_cli(*args: str) -> subprocess.CompletedProcess:
    """python -m pipeline.report ARGS; stdout and stderr captured."""
    return finished(start_forked("pipeline.report", args, cli_env(), subprocess.PIPE), 300)


def cli_env() -> dict[str, str]:
    """The environment a user's run has: TensorFlow's log level unset."""
    return {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


@contextlib.contextmanager
def storage_through_gate(
    emulator_port: int, gate: Gate | None = None, faults: Sequence[Fault] = ()
) -> Iterator[dict[str, str]]:
    """The environment for runs whose Cloud Storage requests go through a proxy to the emulator
    that holds the request `gate` names and answers the downloads `faults` name with their
    fault. The emulator names the host an object was written through in its media link, so
    what follows a gated run (runs, reads) stays in the block."""
    proxy = LatencyProxy(emulator_port, delay=0, gate=gate, faults=tuple(faults)).start()
    try:
        yield {"STORAGE_EMULATOR_HOST": proxy.endpoint}
    finally:
        if gate is not None:
            gate.release()
        proxy.stop()


def signal_at_gate(
    args, gate: Gate, sig: int, env: dict[str, str], timeout: float = 120
) -> tuple[int, str]:
    """Starts python -m pipeline.run ARGS in `env` (from storage_through_gate), sends `sig`
    while the request `gate` names is held (the run is part-way, by construction), then lets
    it go. Returns (exit status, stderr); the process is always ended."""
    victim = start_forked("pipeline.run", args, cli_env() | env, subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not gate.holding.wait(0.05):
            if victim.poll() is not None or time.monotonic() > deadline:
                break
        reached = gate.holding.is_set()
        if reached:
            victim.send_signal(sig)
        gate.release()
        _, stderr = victim.communicate(timeout=60)
    finally:
        gate.release()
        victim.kill()
        victim.wait()
    assert reached, f"the run ended before the request held for the signal:\n{stderr[-3000:]}"
    return victim.returncode, stderr


def config_for(*args: str):
    return prepare(PipelineOptions(list(args)).view_as(LabelerOptions))


def run_graph(config):
    """Runs the graph on DirectRunner; returns (result, predictions, errors) as row lists."""
    pipeline = TestPipeline(runner="DirectRunner")
    build_pipeline(pipeline, config)
    result = pipeline.run()
    result.wait_until_finish()
    rows = [read_rows(config.output, kind) for kind in ("predictions", "errors")]
    return result, rows[0], rows[1]


def counter_values(result) -> dict:
    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    return {c.key.metric.name: c.committed for c in query["counters"]}


PART = re.compile(r"/date=(?P<date>[^/]+)/part-(?P<run>\d{8}T\d{6}-[0-9a-f]{6})-[^/]*\.parquet$")


def output_files(root: str, kind: str) -> list[str]:
    """Every file under ROOT/<kind>/, whatever its name: debris would show up here."""
    pattern = FileSystems.join(root.rstrip("/"), kind, "**")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def read_rows(root: str, kind: str) -> list[dict]:
    """Rows of all the kind's files, each with 'date' and 'run_id' taken from its path."""
    rows = []
    for path in output_files(root, kind):
        found = PART.search(path)
        assert found, f"unexpected file in the output: {path}"
        with FileSystems.open(path) as f:
            for row in pq.read_table(f).to_pylist():
                rows.append({**row, "date": found["date"], "run_id": found["run"]})
    return rows
