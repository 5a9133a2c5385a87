"""Flink job control for run_flink.sh and the local cluster: the Python SDK worker that a
TaskManager starts (Beam's PROCESS environment), and the job's id, progress, cancel and
restart count from Flink's REST API. Standard library only, apart from the worker and the
counter names that watch reads (transforms.metrics, imported there).

python -m pipeline.flink worker --id=ID --provision_endpoint=HOST:PORT ...  (a TaskManager's)
python -m pipeline.flink watch MASTER JOB_NAME ID_FILE [--interval S] [--quiet]
python -m pipeline.flink cancel MASTER JOB_NAME ID_FILE
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from typing import Any

PROG = "run_flink.sh"
TERMINAL = {"FINISHED", "CANCELED", "FAILED", "SUSPENDED"}
USER_SUM = "beam:metric:user:sum_int64:v1"


# --- the SDK worker a TaskManager starts ----------------------------------------------------


def worker(argv: list[str]) -> None:
    """What Beam's container boot does, without the container: asks the TaskManager's
    provision service for the pipeline options and endpoints, then becomes Beam's SDK
    harness (sdk_worker_main) with them. Each TaskManager starts and stops its own."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.flink worker")
    for name in ("id", "provision_endpoint", "control_endpoint", "logging_endpoint"):
        parser.add_argument(f"--{name}", default="")
    parser.add_argument("--semi_persist_dir", default="/tmp")
    args, _ = parser.parse_known_args(argv)

    import grpc
    from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc
    from apache_beam.runners.worker.worker_id_interceptor import WorkerIdInterceptor
    from google.protobuf import json_format

    channel = grpc.intercept_channel(
        grpc.insecure_channel(args.provision_endpoint), WorkerIdInterceptor(args.id)
    )
    info = (
        beam_provision_api_pb2_grpc.ProvisionServiceStub(channel)
        .GetProvisionInfo(beam_provision_api_pb2.GetProvisionInfoRequest(), timeout=60)
        .info
    )
    channel.close()
    env = dict(os.environ, WORKER_ID=args.id, SEMI_PERSISTENT_DIRECTORY=args.semi_persist_dir)
    env["PIPELINE_OPTIONS"] = json_format.MessageToJson(info.pipeline_options)
    env["RUNNER_CAPABILITIES"] = " ".join(info.runner_capabilities)
    endpoints = {
        "CONTROL_API_SERVICE_DESCRIPTOR": (info.control_endpoint.url, args.control_endpoint),
        "LOGGING_API_SERVICE_DESCRIPTOR": (info.logging_endpoint.url, args.logging_endpoint),
        "STATUS_API_SERVICE_DESCRIPTOR": (info.status_endpoint.url, ""),
    }
    for variable, (provided, given) in endpoints.items():
        if provided or given:
            env[variable] = f'url: "{provided or given}"'  # ApiServiceDescriptor, as text
    python = sys.executable
    os.execve(python, [python, "-m", "apache_beam.runners.worker.sdk_worker_main"], env)


# --- Flink's REST API -----------------------------------------------------------------------


def rest(master: str, path: str, method: str = "GET", timeout: float = 5) -> Any:
    request = urllib.request.Request(f"http://{master}{path}", method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
    return json.loads(body) if body else {}


def find_job(master: str, name: str) -> dict | None:
    """The newest job of this name on the cluster."""
    jobs = [j for j in rest(master, "/jobs/overview")["jobs"] if j["name"] == name]
    return max(jobs, key=lambda j: j["start-time"]) if jobs else None


def restarts(master: str, job_id: str, state: str) -> int:
    """Times the job (now in `state`) had its tasks fail and run again: Flink's numRestarts
    metric, or, once it has ended, where that lags (the REST API's metrics are fetched every
    few seconds and go when a job ends), the failures in its exception history that it went
    on from (all but a FAILED job's last)."""
    metrics = rest(master, f"/jobs/{job_id}/metrics?get=numRestarts")
    counted = int(float(metrics[0]["value"])) if metrics else 0
    if state not in TERMINAL:
        return counted
    failures = len(rest(master, f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"])
    return max(counted, failures - (state == "FAILED"))


def beam_counters(master: str, job_id: str, namespace: str) -> dict[str, int]:
    """The job's Beam counters of a namespace so far, summed over steps and subtasks: Beam's
    Flink runner keeps them in one Flink accumulator as JSON of MonitoringInfos, each value
    a base64 varint."""
    totals: dict[str, int] = {}
    for accumulator in rest(master, f"/jobs/{job_id}/accumulators")["user-task-accumulators"]:
        if accumulator["name"] != "__metricscontainers":
            continue
        for info in json.loads(accumulator["value"])["metrics"]["attempted"]:
            labels = info.get("labels", {})
            if info["urn"] == USER_SUM and labels.get("NAMESPACE") == namespace:
                name = labels["NAME"]
                totals[name] = totals.get(name, 0) + varint(base64.b64decode(info["payload"]))
    return totals


def reached_labelling(master: str, job_id: str) -> int:
    """Records that have entered the labelling vertex (RunInference's), all subtasks: Flink
    counts these live, while Beam's counters arrive as each worker finishes its share."""
    for vertex in rest(master, f"/jobs/{job_id}")["vertices"]:
        if "RunInference" in vertex["name"]:
            return vertex["metrics"]["read-records"]
    return 0


def varint(data: bytes) -> int:
    value = 0
    for shift, byte in enumerate(data):
        value |= (byte & 0x7F) << (7 * shift)
        if not byte & 0x80:
            break
    return value


def write_id(path: str, job_id: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(job_id)
    os.replace(path + ".tmp", path)


def settled_state(master: str, job_id: str, timeout: float = 15) -> str:
    """The job's state once it has ended, or as it is after `timeout` seconds: the launcher
    returns when Beam's job server says the job is done, and Flink's REST API can go on
    showing it RUNNING for a few seconds more while the job finishes."""
    deadline = time.monotonic() + timeout
    while True:
        state = rest(master, f"/jobs/{job_id}")["state"]
        if state in TERMINAL or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


def watch(master: str, name: str, id_file: str, interval: float, quiet: bool) -> None:
    """Waits for the job to reach the cluster, says its id and web UI link, then prints a
    progress line every `interval` seconds until this process is told to stop (SIGTERM, when
    the launcher is done), following the run's next job of the same name when one ends (a
    run in portions is one job per portion), and then one line: final state and restarts."""
    stopping = False

    def stop(_signum, _frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher handles Ctrl-C
    from transforms import metrics  # imports Beam: here, so cancel stays quick

    job_id, last = None, time.monotonic()
    while not stopping and job_id is None:
        try:
            job = find_job(master, name)
        except (OSError, ValueError):
            job = None
        if job:
            job_id = job["jid"]
            write_id(id_file, job_id)
            print(
                f"{PROG}: Flink job {job_id} is {job['state']} "
                f"(web UI http://{master}/#/job/running/{job_id}/overview)",
                file=sys.stderr,
                flush=True,
            )
        else:
            time.sleep(0.5)
    state = ""
    earlier_restarts = 0  # of the run's jobs before this one
    while not stopping:
        time.sleep(0.5)
        if time.monotonic() - last < interval:
            continue
        last = time.monotonic()
        try:
            state = rest(master, f"/jobs/{job_id}")["state"]
            if state in TERMINAL:
                newer = find_job(master, name)
                if newer and newer["jid"] != job_id:  # the next portion's job
                    earlier_restarts += restarts(master, job_id, state)
                    job_id = newer["jid"]
                    write_id(id_file, job_id)
                continue
            counts = beam_counters(master, job_id, metrics.NAMESPACE)
            reached = reached_labelling(master, job_id)
            restarted = restarts(master, job_id, state)
        except (OSError, ValueError, KeyError):
            continue
        if not quiet:
            failed = metrics.failed_total(counts)
            extra = f", {restarted} restart{'s' * (restarted != 1)}" if restarted else ""
            queued = counts.get(metrics.IMAGES_QUEUED, 0)  # 0 in a portion's job: not counted
            print(
                f"{PROG}: Flink job {job_id} {state}: {reached}{f' of {queued}' if queued else ''}"
                " new images at the labelling step, "
                f"{counts.get(metrics.IMAGES_LABELLED, 0)} labelled, {failed} failed{extra}",
                file=sys.stderr,
                flush=True,
            )
    if job_id is None:
        return
    try:
        state = settled_state(master, job_id)
        restarted = earlier_restarts + restarts(master, job_id, state)
    except (OSError, ValueError, KeyError):
        return
    # Restarts mean tasks failed and were run again (Flink's restart strategy): the output
    # is still exactly once, but the user should know the cluster lost work.
    print(
        f"{PROG}: Flink job {job_id} {state}; {restarted} "
        f"restart{'s' * (restarted != 1)} (tasks that failed and ran again)",
        file=sys.stderr,
        flush=True,
    )


def cancel(master: str, name: str, id_file: str, timeout: float = 60) -> int:
    """Cancels the run's job in flight (the newest of its name: a run in portions has one
    job per portion; else the id the watcher wrote) and waits for CANCELED. One line either
    way; exit status 0 when no job of the run is left running."""
    job_id = ""
    try:
        with open(id_file) as f:
            job_id = f.read().strip()
    except OSError:
        pass
    try:
        job = find_job(master, name)
        if job:
            job_id = job["jid"]
        elif not job_id:
            return 0  # not submitted (yet): nothing to cancel
        state = rest(master, f"/jobs/{job_id}")["state"]
        if state in TERMINAL:
            return 0
        rest(master, f"/jobs/{job_id}?mode=cancel", method="PATCH")
        deadline = time.monotonic() + timeout
        while state not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.3)
            state = rest(master, f"/jobs/{job_id}")["state"]
        if state not in TERMINAL:
            raise TimeoutError(f"still {state} after {timeout:.0f} s")
    except (OSError, ValueError, KeyError) as e:
        what = f"Flink job {job_id}" if job_id else f"the Flink job named {name}"
        print(
            f"{PROG}: error: could not cancel {what} ({e}); cancel it in the web UI "
            f"(http://{master}) or with: curl -X PATCH "
            f"'http://{master}/jobs/{job_id or '<id>'}?mode=cancel'",
            file=sys.stderr,
        )
        return 1
    print(f"{PROG}: cancelled Flink job {job_id} ({state})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        worker(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m pipeline.flink")
    parser.add_argument("action", choices=["watch", "cancel"])
    parser.add_argument("master")
    parser.add_argument("name")
    parser.add_argument("id_file")
    parser.add_argument("--interval", type=float, default=10)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.action == "watch":
        watch(args.master, args.name, args.id_file, args.interval, args.quiet)
    else:
        sys.exit(cancel(args.master, args.name, args.id_file))


if __name__ == "__main__":
    main()
