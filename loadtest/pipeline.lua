-- pipeline.lua: each write carries DEPTH requests back to back (HTTP/1.1 pipelining).
-- wrk counts every response, so req/s is responses per second. Run by hand:
--   wrk -t1 -c64 -d10s --latency -s loadtest/pipeline.lua http://127.0.0.1:8080/1k.bin -- 16
-- DEPTH is the first argument after "--", else $PIPELINE_DEPTH, else 16.

local batch

init = function(args)
   local depth = tonumber(args[1]) or tonumber(os.getenv("PIPELINE_DEPTH")) or 16
   batch = string.rep(wrk.format(nil, wrk.path), depth)
end

request = function()
   return batch
end
