-- unique.lua: no two requests alike. Each asks for the same file with a different
-- query string (which a static server ignores), so nothing can be answered from a
-- memo of earlier requests: this is the full per-request path. Run by hand:
--   wrk -t1 -c64 -d10s --latency -s loadtest/unique.lua http://127.0.0.1:8080/1k.bin
-- The path is wrk's URL path; only a counter is formatted per request.

local path = nil
local count = 0

request = function()
   if path == nil then
      path = wrk.path
   end
   count = count + 1
   return wrk.format(nil, path .. "?n=" .. count)
end
