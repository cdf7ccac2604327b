-- wrk script for tools/bench_service.py: builds the POST bodies and headers, counts
-- non-2xx responses, and prints the figures as one JSON line (prefixed BENCH_JSON) when done.
--
--   wrk -t2 -c16 -d10s -s tools/bench_service.lua URL -- MODE SALT [API_KEY AGENT [SESSION_ID]]
--
-- MODE is health (GET /v1/health), evaluate (POST /v1/evaluate of an allowed call) or
-- resolve (POST /v1/resolve, a CARP/1.0 request on one session). SALT is 8 hex digits,
-- different for every wrk run, so request ids never repeat within a session: a request id
-- is SALT-<thread>-7000-8000-<counter>, the timestamp os.time() in RFC 3339 with a Z.

local threads = {}
local next_tid = 1

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

local mode, salt, key, agent, session
local fixed          -- the whole request, for modes whose request never changes
local headers
local sent = 0
local last_second, stamp

function init(args)
  mode, salt, key, agent, session = args[1], args[2], args[3], args[4], args[5]
  bad = 0            -- globals, read back by done() through thread:get
  first_bad = nil
  headers = { ["Content-Type"] = "application/json", ["X-API-Key"] = key }
  if mode == "health" then
    fixed = wrk.format("GET", "/v1/health")
  elseif mode == "evaluate" then
    local body = '{"action":"order.lookup","agent":"' .. agent .. '","params":{"order_id":"42"}}'
    fixed = wrk.format("POST", "/v1/evaluate", headers, body)
  elseif mode ~= "resolve" then
    error("unknown mode " .. tostring(mode))
  end
end

function request()
  if fixed then
    return fixed
  end
  sent = sent + 1
  local now = os.time()
  if now ~= last_second then
    last_second = now
    stamp = os.date("!%Y-%m-%dT%H:%M:%S", now) .. ".000000Z"
  end
  local request_id = string.format("%s-%04x-7000-8000-%012x", salt, tid, sent)
  local body = '{"carp_version":"1.0","request_id":"' .. request_id .. '","timestamp":"' .. stamp
    .. '","operation":"resolve","requester":{"agent_id":"' .. agent .. '","session_id":"' .. session
    .. '"},"task":{"goal":"Look up order 42 and answer the customer","risk_tier":"low"}}'
  return wrk.format("POST", "/v1/resolve", headers, body)
end

function response(status, hdrs, body)
  if status < 200 or status > 299 then
    bad = bad + 1
    if first_bad == nil then
      first_bad = tostring(status) .. " " .. string.sub(body or "", 1, 300)
    end
  end
end

local function quote(s)
  if s == nil then
    return "null"
  end
  return '"' .. string.gsub(s, '[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end) .. '"'
end

function done(summary, latency, requests)
  local non_2xx, sample = 0, nil
  for _, thread in ipairs(threads) do
    non_2xx = non_2xx + (thread:get("bad") or 0)
    sample = sample or thread:get("first_bad")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"non_2xx":%d,'
      .. '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},"status_errors":%d,'
      .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p99_9":%d,"mean":%.1f,"stdev":%.1f,"min":%d,"max":%d},'
      .. '"first_non_2xx":%s}\n',
    summary.requests, summary.duration, summary.bytes, non_2xx,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.stdev, latency.min, latency.max,
    quote(sample)))
end
