-- wrk: POST one Responses API request; MODEL and STREAM come from the environment
local model = os.getenv("MODEL") or "mock"
local stream = os.getenv("STREAM") or "false"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("KEY") or "sk-bench")
wrk.body = '{"model":"' .. model .. '","input":"Hello!","store":false,"stream":' .. stream .. '}'
done = function(summary, latency, requests)
  local errs = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT rps=%.0f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f errors=%d requests=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50)/1000, latency:percentile(90)/1000,
    latency:percentile(99)/1000, errs, summary.requests))
end
