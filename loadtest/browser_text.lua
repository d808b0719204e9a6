-- browser_text.lua: the request a browser sends for a text asset (a stylesheet, a
-- script, an article), with the Accept-Encoding given after "--" (default: Chrome's
-- "gzip, deflate, br, zstd"; "identity" for the uncompressed comparison). Run by hand:
--   wrk -t1 -c64 -d10s --latency -s loadtest/browser_text.lua http://127.0.0.1:8080/text-48k.txt -- br
-- No request() is defined, so wrk builds the request once (no per-request Lua work).

init = function(args)
   wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
      .. "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
   wrk.headers["Accept"] = "text/css,*/*;q=0.1"
   wrk.headers["Accept-Language"] = "en-GB,en;q=0.9"
   wrk.headers["Accept-Encoding"] = args[1] or "gzip, deflate, br, zstd"
   wrk.headers["Sec-Fetch-Dest"] = "style"
   wrk.headers["Sec-Fetch-Mode"] = "no-cors"
   wrk.headers["Sec-Fetch-Site"] = "same-origin"
end
