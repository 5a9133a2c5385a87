"""Headless Chromium driven over the DevTools protocol, for checking pages the project writes:
load a file, collect console errors, failed loads and exceptions, evaluate an expression."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request

from websockets.sync.client import connect

FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is not installed; run_tests.sh installs Debian's chromium package"
    return path


class Page:
    """One page of a fresh headless Chromium (its own profile); stops with the context."""

    def __enter__(self) -> Page:
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self._proc = subprocess.Popen(
            [chromium(), *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        port = None
        for line in self._proc.stderr:
            found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if found:
                port = found[1]
                break
        assert port, "Chromium did not start its DevTools server"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        self._ws = connect(target["webSocketDebuggerUrl"], max_size=None)
        self._next_id = 0
        self.problems: list[str] = []
        for domain in ("Page", "Runtime", "Log"):
            self._call(f"{domain}.enable")
        return self

    def __exit__(self, *exc) -> None:
        self._ws.close()
        self._proc.kill()
        self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def _note(self, event: dict) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.problems.append(f"console: {params['args']}")
        elif method == "Runtime.exceptionThrown":
            self.problems.append(f"exception: {params['exceptionDetails']}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.problems.append(f"log: {params['entry']['text']}")

    def _call(self, method: str, wait_for: str | None = None, **params) -> dict:
        """Sends a command; returns its result (or, with wait_for, that event's params)."""
        self._next_id += 1
        self._ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        result = event = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            message = json.loads(self._ws.recv(timeout=60))
            self._note(message)
            if message.get("id") == self._next_id:
                assert "error" not in message, message["error"]
                result = message["result"]
            elif wait_for and message.get("method") == wait_for:
                event = message["params"]
            if result is not None and (wait_for is None or event is not None):
                return event if wait_for else result
        raise TimeoutError(f"no answer to {method}")

    def load(self, url: str) -> None:
        self._call("Page.navigate", wait_for="Page.loadEventFired", url=url)

    def evaluate(self, expression: str):
        reply = self._call("Runtime.evaluate", expression=expression, returnByValue=True)
        return reply["result"].get("value")
