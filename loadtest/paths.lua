-- paths.lua: each request asks for a path picked at random from a list. Run by hand:
--   wrk -t1 -c64 -d10s --latency -s loadtest/paths.lua http://127.0.0.1:8080/ -- /1k.bin /64k.bin
--   PATHS_FILE=paths.txt wrk -t1 -c64 -d10s -s loadtest/paths.lua http://127.0.0.1:8080/
-- The list is the arguments after "--", else the lines of $PATHS_FILE (one path per
-- line, blank lines and lines starting with # skipped). $PATHS_SEED fixes the order
-- (default 1, so two runs ask for the same sequence).

local requests = {}

local function read_lines(name)
   local lines = {}
   local file = assert(io.open(name, "r"), "cannot open " .. name)
   for line in file:lines() do
      if line ~= "" and line:sub(1, 1) ~= "#" then
         lines[#lines + 1] = line
      end
   end
   file:close()
   return lines
end

init = function(args)
   local paths = args
   if #paths == 0 and os.getenv("PATHS_FILE") then
      paths = read_lines(os.getenv("PATHS_FILE"))
   end
   if #paths == 0 then
      paths = {wrk.path}
   end
   for i, path in ipairs(paths) do
      requests[i] = wrk.format(nil, path)
   end
   math.randomseed(tonumber(os.getenv("PATHS_SEED")) or 1)
end

request = function()
   return requests[math.random(#requests)]
end
