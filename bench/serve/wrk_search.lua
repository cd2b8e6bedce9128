-- wrk script for bench/serve_load.sh: POSTs one search per request, cycling through the
-- bodies in the file given after `--` (one JSON body per line), and prints a JSON summary.
-- Usage: wrk -t2 -c8 -d30s -s wrk_search.lua http://127.0.0.1:7790 -- bodies.jsonl /v1/indexes/bench/search
local bodies = {}
local path = "/v1/indexes/bench/search"
local counter = 0

function init(args)
  local file = args[1]
  if args[2] then path = args[2] end
  for line in io.lines(file) do
    if #line > 0 then bodies[#bodies + 1] = line end
  end
  if #bodies == 0 then error("no request bodies in " .. tostring(file)) end
  -- Each wrk thread starts at a different query.
  counter = math.random(#bodies) - 1
end

function request()
  counter = counter + 1
  local body = bodies[(counter % #bodies) + 1]
  return wrk.format("POST", path, { ["Content-Type"] = "application/json" }, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "mean_us": %.1f, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, summary.bytes, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
