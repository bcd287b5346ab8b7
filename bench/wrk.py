"""Running wrk with bench/lua/post.lua and reading the line its done() hook prints."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from procs import LOOPBACK, BenchError

LUA_SCRIPT = Path(__file__).resolve().parent / "lua" / "post.lua"
_RESULT = re.compile(r"^BENCH_RESULT (.*)$", re.MULTILINE)


@dataclass(frozen=True)
class WrkResult:
    """What wrk counted in one run; times in microseconds."""

    requests: int  # completed responses (in-flight ones at the deadline are not counted)
    duration_us: int
    mean_us: float
    p50_us: int
    p99_us: int
    max_us: int
    connect: int
    read: int
    write: int
    status: int  # responses with status >= 400 (wrk's "Non-2xx or 3xx responses")
    timeout: int
    threads: int = 1
    injected: int = 0  # 500 responses to requests that asked for one (error_every)

    @property
    def rps(self) -> float:
        return self.requests / (self.duration_us / 1e6)

    @property
    def socket_errors(self) -> int:
        return self.connect + self.read + self.write + self.timeout


def wrk_version() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise BenchError("wrk is not installed (apt-get install wrk)")
    out = subprocess.run([found, "--version"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0].split(" [")[0] if first else "wrk (unknown version)"


def run_wrk(
    url: str,
    *,
    connections: int,
    duration_s: int,
    body_file: Path,
    auth: str,
    error_every: int = 0,
) -> WrkResult:
    """POST `body_file` to `url` for `duration_s` seconds over `connections` connections.

    With `error_every` N > 0, every Nth request of each wrk thread carries
    `x-fake-status: 500`; the 500s that come back are counted in `injected`.
    """
    if not url.startswith(f"http://{LOOPBACK}:"):
        raise BenchError(f"refusing to load a non-loopback URL: {url}")
    threads = min(2, connections)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--timeout", "10s"]
    argv += ["-s", str(LUA_SCRIPT), url]
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_AUTH": auth}
    env["BENCH_ERROR_EVERY"] = str(error_every)
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    found = _RESULT.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise BenchError(
            f"wrk failed (exit {done.returncode}): {' '.join(argv)}\n{done.stdout}{done.stderr}"
        )
    values = dict(item.split("=", 1) for item in found.group(1).split())
    return WrkResult(
        requests=int(values["requests"]),
        duration_us=int(values["duration_us"]),
        mean_us=float(values["mean_us"]),
        p50_us=int(values["p50_us"]),
        p99_us=int(values["p99_us"]),
        max_us=int(values["max_us"]),
        connect=int(values["connect"]),
        read=int(values["read"]),
        write=int(values["write"]),
        status=int(values["status"]),
        timeout=int(values["timeout"]),
        threads=threads,
        injected=int(values.get("injected", "0")),
    )
