-- POST the JSON body in $BENCH_BODY_FILE with `Authorization: $BENCH_AUTH`; at the end print
-- one machine-readable line that bench/wrk.py parses (times in microseconds).
-- With BENCH_ERROR_EVERY=N, every Nth request of each thread carries `x-fake-status: 500`
-- (the fake upstream answers it with an error) and the 500s are counted as `injected`.
local file = assert(io.open(assert(os.getenv("BENCH_BODY_FILE")), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = os.getenv("BENCH_AUTH") or "Bearer bench"

local every = tonumber(os.getenv("BENCH_ERROR_EVERY") or "0")
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

if every > 0 then
  local sent, plain, failing = 0, nil, nil

  function init(args)
    injected = 0 -- a global of the thread, read by done() through thread:get
    plain = wrk.format()
    local headers = {}
    for name, value in pairs(wrk.headers) do
      headers[name] = value
    end
    headers["x-fake-status"] = "500"
    failing = wrk.format(nil, nil, headers)
  end

  function request()
    sent = sent + 1
    if sent % every == 0 then
      return failing
    end
    return plain
  end

  function response(status, headers, body)
    if status == 500 then
      injected = injected + 1
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local injected_total = 0
  for _, thread in ipairs(threads) do
    injected_total = injected_total + (thread:get("injected") or 0)
  end
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d mean_us=%.1f p50_us=%d p99_us=%d max_us=%d"
      .. " connect=%d read=%d write=%d status=%d timeout=%d injected=%d\n",
    summary.requests, summary.duration, latency.mean, latency:percentile(50),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout,
    injected_total))
end
