"""Fixed-rate latency with hey: one connection, `-q` requests per second, per-request CSV rows.

wrk measures a closed loop at saturation; hey at a fixed, low rate measures what a gateway
adds to one request when the machine is not busy. `hey -o csv` prints one row per completed
request, times in seconds with four decimals (0.1 ms resolution: means over thousands of
rows are finer than that, percentiles are not): `response-time` is the whole request,
`Response-delay` ("resp wait") runs from the request written to the first response byte,
which for a stream is the time to first byte (TTFB). hey lets in-flight requests finish at
its deadline, and leaves failed ones out of the CSV.
"""

from __future__ import annotations

import csv
import io
import shutil
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

from procs import LOOPBACK, BenchError

HEY_TIMEOUT_S = 10


@dataclass(frozen=True)
class HeyResult:
    """Latency of one hey run, in milliseconds."""

    requests: int
    mean_ms: float
    p50_ms: float
    p99_ms: float
    ttfb_mean_ms: float
    ttfb_p50_ms: float
    ttfb_p99_ms: float


def require_hey() -> str:
    """The path of hey, or a BenchError saying how to install it."""
    found = shutil.which("hey")
    if found is None:
        raise BenchError("hey is not installed (apt-get install hey), or pass --no-hey")
    return found


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, round(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def run_hey(url: str, *, rate: int, seconds: int, body_file: Path, auth: str) -> HeyResult:
    """POST `body_file` to `url` at `rate` requests per second over one connection."""
    if not url.startswith(f"http://{LOOPBACK}:"):
        raise BenchError(f"refusing to load a non-loopback URL: {url}")
    argv = [require_hey(), "-z", f"{seconds}s", "-c", "1", "-q", str(rate), "-m", "POST"]
    argv += ["-T", "application/json", "-H", f"Authorization: {auth}", "-D", str(body_file)]
    argv += ["-t", str(HEY_TIMEOUT_S), "-disable-compression", "-o", "csv", url]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not done.stdout.startswith("response-time,"):
        raise BenchError(f"hey failed (exit {done.returncode}): {' '.join(argv)}\n{done.stderr}")
    return parse_csv(done.stdout, url)


def parse_csv(text: str, url: str) -> HeyResult:
    """Latency figures from hey's CSV; any non-200 row is an error."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise BenchError(f"hey completed no request to {url}")
    statuses = {row["status-code"] for row in rows} - {"200"}
    if statuses:
        raise BenchError(f"hey got status {sorted(statuses)} from {url}")
    total = sorted(float(row["response-time"]) * 1000 for row in rows)
    first_byte = sorted(float(row["Response-delay"]) * 1000 for row in rows)
    return HeyResult(
        requests=len(rows),
        mean_ms=statistics.fmean(total),
        p50_ms=percentile(total, 50),
        p99_ms=percentile(total, 99),
        ttfb_mean_ms=statistics.fmean(first_byte),
        ttfb_p50_ms=percentile(first_byte, 50),
        ttfb_p99_ms=percentile(first_byte, 99),
    )
