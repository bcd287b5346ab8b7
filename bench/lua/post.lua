-- POST the JSON body in $BENCH_BODY_FILE with `Authorization: $BENCH_AUTH`; at the end print
-- one machine-readable line that bench/wrk.py parses (times in microseconds).
local file = assert(io.open(assert(os.getenv("BENCH_BODY_FILE")), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = os.getenv("BENCH_AUTH") or "Bearer bench"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d mean_us=%.1f p50_us=%d p99_us=%d max_us=%d"
      .. " connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, latency.mean, latency:percentile(50),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
