-- smallsite.lua: cycles through the files of a small site, one per request, like
-- browsers fetching a page and its assets over keep-alive connections. Run by hand:
--   wrk -t1 -c64 -d10s --latency -s loadtest/smallsite.lua http://127.0.0.1:8080/
-- Other pages can be given after "--": ... -- /index.html /about.html /style.css
-- Requests are formatted once in init(); request() only picks the next one.

local requests = {}
local next_index = 0

init = function(args)
   local pages = {"/index.html", "/style.css", "/app.js", "/logo.png", "/about.html"}
   if #args > 0 then
      pages = args
   end
   for i, page in ipairs(pages) do
      requests[i] = wrk.format(nil, page)
   end
end

request = function()
   next_index = next_index % #requests + 1
   return requests[next_index]
end
