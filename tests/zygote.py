"""The CLI's start-up paid once per test worker: a server process that has imported what
`python -m pipeline.run` imports (Beam, TensorFlow, pyarrow) forks a child for each run, and
the child runs the module as `-m` does, in the caller's folder and environment, with its
stdin, stdout and stderr. The child is a real process: its own exit status, signals, os._exit.

Run as `python -m tests.zygote FD` by Zygote, which talks to it over the socket FD."""

from __future__ import annotations

import atexit
import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

# What a run imports before its first image: the job's modules and the model's library.
PRELOAD = (
    "pipeline.config",
    "pipeline.graph",
    "pipeline.plan",
    "pipeline.portions",
    "pipeline.summary",
    "pipeline.failures",
    "pipeline.progress",
    "transforms.models.handler",
    "transforms.supersede",
)
MAX_FDS = 3


def _send(sock: socket.socket, message: dict, fds: tuple[int, ...] = ()) -> None:
    payload = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [payload], list(fds))
    else:
        sock.sendall(payload)


def _socket(fd: int) -> socket.socket:
    """A socket object for an inherited or received descriptor, blocking: one made where
    socket.setdefaulttimeout was called (Beam's clients call it) arrives non-blocking."""
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    return sock


def _pair() -> tuple[socket.socket, socket.socket]:
    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in pair:
        sock.setblocking(True)
    return pair


def _receive(sock: socket.socket) -> tuple[dict | None, list[int]]:
    payload, fds, _, _ = socket.recv_fds(sock, 1 << 20, MAX_FDS + 1)
    return (json.loads(payload) if payload else None), fds


# ---- the server: a process with everything imported, forking one child per run ----


def _child(request: dict, fds: list[int]) -> None:
    """In the forked child: become `python -m pipeline.run ARGS` and never return."""
    status = 1
    try:
        stdio, reply = fds[:3], fds[3]
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        for fd in (*stdio, reply):
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.argv = [request["module"], *request["args"]]
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int | None):
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            # What the interpreter's own exit does: wait for the threads that are not
            # daemons, then run the exit hooks (Beam's stop the job server it started).
            threading._shutdown()
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def _reap(pid: int, reply: int) -> None:
    """Waits for the child and reports its status as subprocess does (-N for signal N)."""
    _, raw = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(raw)
    with _socket(reply) as sock:
        _send(sock, {"status": code})


def serve(control: socket.socket) -> None:
    for name in PRELOAD:
        __import__(name)
    from transforms.models.catalog import import_tensorflow_quietly

    import_tensorflow_quietly()
    _send(control, {"ready": True})
    while True:
        request, fds = _receive(control)
        if request is None:  # the tests closed the socket: they are done
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            control.close()
            _child(request, fds)
        for fd in fds[:3]:
            os.close(fd)
        with _socket(os.dup(fds[3])) as sock:
            _send(sock, {"pid": pid})
        threading.Thread(target=_reap, args=(pid, fds[3]), daemon=True).start()


# ---- the client, in the test process ----


class Forked:
    """A child of the fork server, as subprocess.Popen shows a child: pid, poll, wait,
    send_signal, kill, communicate, and stdout/stderr streams where PIPE was asked for."""

    def __init__(self, args: list[str], reply: socket.socket, pipes: dict[str, int]):
        self.args, self._reply = args, reply
        self.pid = _receive(reply)[0]["pid"]
        self.returncode: int | None = None
        self.stdout = open(pipes["stdout"], encoding="utf-8") if "stdout" in pipes else None  # noqa: SIM115
        self.stderr = open(pipes["stderr"], encoding="utf-8") if "stderr" in pipes else None  # noqa: SIM115

    def poll(self) -> int | None:
        return self._status(blocking=False)

    def wait(self, timeout: float | None = None) -> int:
        status = self._status(blocking=True, timeout=timeout)
        if status is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return status

    def _status(self, blocking: bool, timeout: float | None = None) -> int | None:
        if self.returncode is None:
            self._reply.settimeout(timeout if blocking else 0)
            try:
                self.returncode = _receive(self._reply)[0]["status"]
            except (TimeoutError, BlockingIOError):
                return None
            self._reply.close()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str | None, str | None]:
        """Reads the pipes to their end (each in a thread, as Popen does), then waits."""
        streams = [s if s and not s.closed else None for s in (self.stdout, self.stderr)]
        texts: list[str | None] = [None, None]

        def drain(i: int) -> None:
            texts[i] = streams[i].read()
            streams[i].close()

        readers = [threading.Thread(target=drain, args=(i,)) for i, s in enumerate(streams) if s]
        for reader in readers:
            reader.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        for reader in readers:
            reader.join(None if deadline is None else max(0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return texts[0], texts[1]

    def __enter__(self) -> Forked:
        return self

    def __exit__(self, *exc) -> None:
        for stream in (self.stdout, self.stderr):
            if stream:
                stream.close()
        self.wait()


class Zygote:
    """Starts the server on first use; start() is subprocess.Popen for `python -m MODULE`."""

    def __init__(self, root: str, env: dict[str, str]):
        self._root, self._env = root, env
        self._control: socket.socket | None = None
        self._server: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def _start(self) -> socket.socket:
        if self._control is None:
            ours, theirs = _pair()
            self._server = subprocess.Popen(
                [sys.executable, "-m", "tests.zygote", str(theirs.fileno())],
                cwd=self._root,
                env=self._env,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
            theirs.close()
            ready, _ = _receive(ours)
            assert ready == {"ready": True}, "the CLI's fork server did not start"
            self._control = ours
        return self._control

    def start(
        self,
        module: str,
        args: list[str],
        *,
        cwd: str,
        env: dict[str, str],
        stdout=None,
        stderr=None,
    ) -> Forked:
        """stdout and stderr: None (this process's), subprocess.DEVNULL or PIPE, a file
        object or a file descriptor, as Popen takes them."""
        ours: list[int] = []  # closed here once the child has them
        pipes: dict[str, int] = {}

        def target(name: str, stream) -> int:
            if stream is None:
                return {"stdout": 1, "stderr": 2}[name]
            if stream == subprocess.DEVNULL:
                fd = os.open(os.devnull, os.O_WRONLY)
            elif stream == subprocess.PIPE:
                pipes[name], fd = os.pipe()
            else:
                return stream if isinstance(stream, int) else stream.fileno()
            ours.append(fd)
            return fd

        null = os.open(os.devnull, os.O_RDONLY)
        ours.append(null)
        reply, theirs = _pair()
        fds = (null, target("stdout", stdout), target("stderr", stderr), theirs.fileno())
        request = {"module": module, "args": list(args), "cwd": cwd, "env": env}
        try:
            with self._lock:
                _send(self._start(), request, fds)
        finally:
            theirs.close()
            for fd in ours:
                os.close(fd)
        return Forked([module, *args], reply, pipes)

    def stop(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._server is not None:
            try:
                self._server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()
            self._server = None


if __name__ == "__main__":
    serve(_socket(int(sys.argv[1])))
