-- asgi_browser.lua: the request a browser sends, for the ASGI scenarios. The kind
-- after "--" says what the page is fetching: "fetch" (a script's fetch() of JSON),
-- "image" (an <img>), "document" (a navigation). Run by hand:
--   wrk -t1 -c64 -d10s -s loadtest/asgi_browser.lua http://127.0.0.1:8080/json -- fetch
-- No request() is defined, so wrk builds the request once (no per-request Lua work).

local kinds = {
   fetch = { accept = "application/json, text/plain, */*", dest = "empty", mode = "cors" },
   image = { accept = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",
             dest = "image", mode = "no-cors" },
   document = { accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                dest = "document", mode = "navigate" },
}

init = function(args)
   local kind = kinds[args[1] or "fetch"] or kinds.fetch
   wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
      .. "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
   wrk.headers["Accept"] = kind.accept
   wrk.headers["Accept-Language"] = "en-GB,en;q=0.9"
   wrk.headers["Accept-Encoding"] = "gzip, deflate, br, zstd"
   wrk.headers["Referer"] = "http://127.0.0.1/"
   wrk.headers["Sec-Fetch-Dest"] = kind.dest
   wrk.headers["Sec-Fetch-Mode"] = kind.mode
   wrk.headers["Sec-Fetch-Site"] = "same-origin"
   wrk.headers["Cookie"] = "session=7f3c2a9e4b1d8c6f; theme=dark"
end
