-- report.lua: prints one machine-readable line when wrk finishes, for the harness.
-- The harness appends it to the scenario's script; it defines only done(), so wrk still
-- sends a prebuilt request (no per-request Lua work). Run by hand:
--   wrk -t1 -c64 -d10s --latency -s loadtest/report.lua http://127.0.0.1:8080/1k.bin
-- Output: PAGELOAN-WRK key=value ... (latencies in microseconds).

done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "PAGELOAN-WRK requests=%.0f bytes=%.0f duration_us=%.0f connect=%.0f read=%.0f"
      .. " write=%.0f status=%.0f timeout=%.0f p50_us=%.0f p90_us=%.0f p99_us=%.0f"
      .. " max_us=%.0f mean_us=%.1f\n",
      summary.requests, summary.bytes, summary.duration, e.connect, e.read,
      e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, latency.mean))
end
