-- wrk script of the benchmark: prints one JSON line of results, and with BENCH_PUT_MACS set
-- sends writes of the body in BENCH_PUT_BODY rotating over those MACs (comma separated): PUTs,
-- or BENCH_METHOD (PATCH) with the Content-Type BENCH_CONTENT_TYPE. Each `__N__` in the body
-- becomes a number that changes at every request (from BENCH_COUNT_FROM to BENCH_COUNT_TO,
-- then again), so that each write changes its document rather than rewrite its bytes.

local put_macs = os.getenv("BENCH_PUT_MACS")

if put_macs then
  local macs, next_mac = {}, 0
  for mac in put_macs:gmatch("[^,]+") do
    macs[#macs + 1] = mac
  end
  local file = assert(io.open(os.getenv("BENCH_PUT_BODY"), "rb"))
  local body = file:read("*a")
  file:close()
  local method = os.getenv("BENCH_METHOD") or "PUT"
  local headers = { ["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/json" }
  local counted = body:find("__N__", 1, true) ~= nil
  local low = tonumber(os.getenv("BENCH_COUNT_FROM") or "0")
  local high = tonumber(os.getenv("BENCH_COUNT_TO") or "1000000")
  local count = low

  -- Defined only in write mode: without it wrk sends its one static request, which is faster.
  function request()
    next_mac = next_mac % #macs + 1
    local sent = body
    if counted then
      count = count + 1
      if count > high then count = low end
      sent = body:gsub("__N__", tostring(count))
    end
    return wrk.format(method, "/api/configs/" .. macs[next_mac], headers, sent)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
