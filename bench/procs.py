"""Server processes for the benchmark: logs to files, CPU and peak RSS from /proc, clean stop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LOOPBACK = "127.0.0.1"


class BenchError(Exception):
    """Something went wrong that makes the numbers meaningless; stop loudly."""


class TargetUnavailable(BenchError):
    """A target cannot run on this machine (no PostgreSQL, no LiteLLM); it is skipped."""


def free_port() -> int:
    """A free loopback TCP port (closed again right away; good enough on a quiet machine)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def loopback_request(
    url: str,
    method: str = "GET",
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10,
) -> bytes:
    """Call a loopback URL (refuses anything else), `body` sent as JSON; the answer's bytes."""
    if not url.startswith(f"http://{LOOPBACK}:"):
        raise BenchError(f"refusing to call a non-loopback URL: {url}")
    data = None if body is None else json.dumps(body).encode()
    if data is None and method == "POST":
        data = b""
    sent = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, method=method, data=data, headers=sent | (headers or {}))
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        answer: bytes = response.read()
        return answer


def loopback_json(
    url: str,
    method: str = "GET",
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10,
) -> Any:
    """GET/POST a JSON document from a loopback URL (refuses anything else)."""
    return json.loads(
        loopback_request(url, method, body=body, headers=headers, timeout_s=timeout_s)
    )


class Server:
    """One server subprocess; its stdout and stderr go to `<log_dir>/<name>.log`."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,  # a Ctrl-C reaches only the bench, which stops us
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(f"    {line}" for line in text) or "    (empty log)"

    def problems(self, limit: int = 8) -> list[str]:
        """Log lines that look like trouble (tracebacks, errors, warnings), the first `limit`."""
        marks = ("Traceback", "ERROR", "Error", "WARNING", "Exception", "CRITICAL")
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line.strip() for line in lines if any(m in line for m in marks)][:limit]

    def wait_for_line(self, needle: str, timeout_s: float = 60.0) -> str:
        """Wait until the log has a line containing `needle`; return that line."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if needle in line:
                    return line
            if self.popen.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with {self.popen.returncode} before {needle!r}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        raise BenchError(f"{self.name}: no {needle!r} after {timeout_s:.0f} s:\n{self.log_tail()}")

    def wait_for_http(self, url: str, timeout_s: float = 60.0) -> None:
        """Wait until GET `url` (loopback) answers 2xx, for servers that log no ready line."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(OSError, ValueError):
                loopback_json(url)
                return
            time.sleep(0.2)
        raise BenchError(f"{self.name}: no answer from {url} after {timeout_s:.0f} s")

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(
                f"{self.name} died (exit {self.popen.returncode}); log {self.log_path}:\n"
                + self.log_tail()
            )

    def cpu_seconds(self) -> float:
        """utime + stime of the process (all its threads), in seconds."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3, "state"
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def reset_peak_rss(self) -> bool:
        """Reset VmHWM to the current RSS (Linux >= 4.0); False if the kernel refuses."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def peak_rss_mb(self) -> float:
        """VmHWM, the peak resident set size, in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise BenchError(f"{self.name}: no VmHWM in /proc/{self.pid}/status")

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait (a graceful drain); kill and fail if it takes longer."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            message = f"{self.name} did not stop within {timeout_s:.0f} s of SIGTERM"
            raise BenchError(message) from None

    def kill(self) -> None:
        """SIGKILL if still running (the error path); never raises."""
        if self.popen.poll() is None:
            self.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(10)


def start_server(
    name: str,
    argv: list[str],
    log_dir: Path,
    *,
    ready: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 60.0,
) -> tuple[Server, str]:
    """Start a server, wait for a log line containing `ready` and return both; on failure the
    server is killed before the error propagates."""
    server = Server(name, argv, log_dir, env=env, cwd=cwd)
    try:
        return server, server.wait_for_line(ready, timeout_s)
    except BaseException:
        server.kill()
        raise
