"""Beam's own portable services for the Flink-path test, in a child process on loopback:
the Python job service (Job API, what a Flink job server offers) and an EXTERNAL worker pool.

python -m tests.portable_services JOB_PORT POOL_PORT STAGING_DIR serves until stdin closes.
Beam's gRPC servers bind every interface by default; here each binds 127.0.0.1 only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

HOST = "127.0.0.1"


def _bind_loopback_only() -> None:
    import grpc._server

    original = grpc._server._Server.add_insecure_port

    def add_insecure_port(self, address: str) -> int:
        return original(self, re.sub(r"^(\[::\]|0\.0\.0\.0|localhost)(?=:)", HOST, address))

    grpc._server._Server.add_insecure_port = add_insecure_port


def _serve(job_port: int, pool_port: int, staging_dir: str) -> None:
    _bind_loopback_only()
    import grpc
    from apache_beam.portability.api import beam_fn_api_pb2_grpc
    from apache_beam.runners.portability.local_job_service import LocalJobServicer
    from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer
    from apache_beam.utils import thread_pool_executor

    jobs = LocalJobServicer(staging_dir)
    jobs.start_grpc_server(job_port)
    pool = grpc.server(thread_pool_executor.shared_unbounded_instance())
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(
        BeamFnExternalWorkerPoolServicer(), pool
    )
    pool.add_insecure_port(f"{HOST}:{pool_port}")
    pool.start()
    sys.stdin.read()
    pool.stop(0)
    jobs.stop()


class PortableServices:
    """Starts the child; job_endpoint and worker_pool are HOST:PORT strings."""

    def __init__(self, staging_dir: str, job_port: int, pool_port: int):
        self.job_endpoint = f"{HOST}:{job_port}"
        self.worker_pool = f"{HOST}:{pool_port}"
        self._args = [str(job_port), str(pool_port), staging_dir]
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> PortableServices:
        import socket

        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.portable_services", *self._args],
            stdin=subprocess.PIPE,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        deadline = time.monotonic() + timeout
        for address in (self.job_endpoint, self.worker_pool):
            host, port = address.split(":")
            while True:
                try:
                    socket.create_connection((host, int(port)), timeout=1).close()
                    break
                except OSError:
                    if self._proc.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(
                            f"Beam's portable services did not start ({address})"
                        ) from None
                    time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
