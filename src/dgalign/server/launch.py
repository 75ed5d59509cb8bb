"""`dgalign serve` in a child process on a free loopback port, ready once /health answers.

For the server tests and `benchmarks/server_load.py`; the standard library only, so it needs no
HTTP client package.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Return once GET `url`/health answers 200; RuntimeError if `proc` exits first or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url}/health answered")
        try:
            with _DIRECT.open(f"{url}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):  # not listening yet
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server did not answer {url}/health within {timeout} s")


def start_server(args: Sequence[str], *, log: Path | None = None, env: dict[str, str] | None = None,
                 timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """`python -m dgalign serve ARGS --port P`; (process, base URL http://127.0.0.1:P) once /health answers.

    The server's output goes to `log` (else nowhere); `env` is added to this process's environment.
    A server that exits or does not answer within `timeout` s is stopped, and the RuntimeError
    carries the end of its log.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = open(log, "w") if log is not None else subprocess.DEVNULL  # closed below: the child keeps its copy
    proc = subprocess.Popen([sys.executable, "-m", "dgalign", "serve", *args, "--port", str(port)],
                            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    if log is not None:
        out.close()
    try:
        wait_healthy(url, timeout, proc)
    except RuntimeError as err:
        stop_server(proc)
        tail = log.read_text()[-2000:] if log is not None else ""
        raise RuntimeError(f"{err}\n{tail}" if tail else str(err)) from None
    return proc, url


def stop_server(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace` s."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
