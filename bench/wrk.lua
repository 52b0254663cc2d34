-- wrk script of the benchmark: prints one JSON line of results, and with BENCH_PUT_MACS set
-- sends PUTs of the body in BENCH_PUT_BODY rotating over those MACs (comma separated).

local put_macs = os.getenv("BENCH_PUT_MACS")

if put_macs then
  local macs, next_mac = {}, 0
  for mac in put_macs:gmatch("[^,]+") do
    macs[#macs + 1] = mac
  end
  local file = assert(io.open(os.getenv("BENCH_PUT_BODY"), "rb"))
  local body = file:read("*a")
  file:close()
  local headers = { ["Content-Type"] = "application/json" }

  -- Defined only in PUT mode: without it wrk sends its one static request, which is faster.
  function request()
    next_mac = next_mac % #macs + 1
    return wrk.format("PUT", "/api/configs/" .. macs[next_mac], headers, body)
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
