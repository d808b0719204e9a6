-- browser.lua: requests as a browser sends them, no two alike. Every request carries
-- a real browser's header set (User-Agent, Accept, Accept-Encoding, Accept-Language,
-- Sec-Fetch-*, Referer) and a Cookie and a query string that change with a counter,
-- so no cache of identical request bytes can answer it: a server must parse it and
-- decide the answer from the path and the headers that select it. Run by hand:
--   wrk -t1 -c64 -d10s --latency -s loadtest/browser.lua http://127.0.0.1:8080/1k.bin
-- Paths to cycle through can be given after "--" (default: wrk's URL path), and
-- validators as `etag=VALUE` and `date=VALUE`: then every request revalidates a cached
-- copy as a browser does, with If-None-Match and If-Modified-Since (browser-304).
--
-- Formatting a request in Lua for every request would make wrk the bottleneck
-- (about 45k req/s on one core), so init() formats POOL distinct requests once and
-- request() hands them out in turn: a request's bytes come again only after POOL
-- others on the same thread, far more than any cache of identical requests keeps.

local POOL = 100000
local requests = {}
local next_index = 0

local function headers()
   return "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n"
      .. "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n"
      .. "Accept-Encoding: gzip, deflate, br, zstd\r\n"
      .. "Accept-Language: en-GB,en;q=0.9,de;q=0.8\r\n"
      .. "Sec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Site: same-origin\r\n"
      .. "Referer: http://127.0.0.1/index.html\r\n"
end

init = function(args)
   local paths = {}
   local validators = ""
   for _, arg in ipairs(args) do
      if arg:sub(1, 5) == "etag=" then
         validators = validators .. "If-None-Match: " .. arg:sub(6) .. "\r\n"
      elseif arg:sub(1, 5) == "date=" then
         validators = validators .. "If-Modified-Since: " .. arg:sub(6) .. "\r\n"
      else
         paths[#paths + 1] = arg
      end
   end
   if #paths == 0 then
      paths = {wrk.path}
   end
   local head = headers() .. validators
   for i = 1, POOL do
      local path = paths[i % #paths + 1]
      requests[i] = "GET " .. path .. "?v=" .. i .. " HTTP/1.1\r\nHost: 127.0.0.1\r\n" .. head
         .. "Cookie: session=" .. i .. "; theme=dark; _ga=GA1.1.1234567890.1700000000\r\n\r\n"
   end
end

request = function()
   next_index = next_index % POOL + 1
   return requests[next_index]
end
