-- ranges.lua: every request carries the same Range header (default: four ranges, so
-- the answer is a 206 multipart/byteranges body). Run by hand:
--   wrk -t1 -c64 -d10s --latency -s loadtest/ranges.lua http://127.0.0.1:8080/1m.bin \
--       -- 'bytes=0-99,1000-1999,50000-59999,500000-500999'
-- The header value is the first argument after "--", else $RANGE, else that default.
-- No request() is defined, so wrk builds the request once (no per-request Lua work).

init = function(args)
   wrk.headers["Range"] = args[1] or os.getenv("RANGE")
      or "bytes=0-99,1000-1999,50000-59999,500000-500999"
end
