"""Shared by the rating tests: a copy of the committed toy run and a rating server on a free port."""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

RUN = Path(__file__).parent / "data" / "rate-run"  # `dgalign bench` on the toy LM: base, bon:n=3, smc × 5 prompts
METHOD_NAMES = ("base", "bon:n=3", "bon", "smc")  # labels and sampler names: never on the page


def copy_run(tmp_path: Path) -> Path:
    shutil.copytree(RUN, tmp_path / "run")
    return tmp_path / "run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int, *args: str) -> subprocess.Popen:
    """`dgalign rate RUN --port PORT ...` in a subprocess, returned once it answers."""
    proc = subprocess.Popen([sys.executable, "-m", "dgalign", "rate", str(run), "--port", str(port), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dgalign rate exited: {proc.stderr.read().decode()}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("dgalign rate did not start within 60 s")
