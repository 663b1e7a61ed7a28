-- wrk script of bench/service.py: one request shape per run, and a JSON summary on the last line of stdout.
--
--   wrk -t1 -c32 -d10s -s bench/wrk_report.lua URL -- METHOD [CONTENT_TYPE BODY_FILE]
--
-- BODY_FILE holds the request body as sent. A body containing {{seed}} is a template: each request gets the
-- next seed, so no two requests ask for the same sample; any other body is sent as is by wrk's static
-- request path (no Lua runs per request, which keeps the load generator cheap).

local counter = 0
local template = nil

function init(args)
   wrk.method = args[1] or "GET"
   if args[3] then
      local file = assert(io.open(args[3], "rb"))
      wrk.body = file:read("*a")
      file:close()
      wrk.headers["Content-Type"] = args[2]
      if wrk.body:find("{{seed}}", 1, true) then
         template = wrk.body
         -- Seeds of different threads never meet: thread t sends t, t + 2^20, t + 2 * 2^20, ...
         counter = wrk.thread:get("id")
         request = function()
            counter = counter + 1048576
            return wrk.format(nil, nil, nil, (template:gsub("{{seed}}", tostring(counter))))
         end
      end
   end
end

local next_id = 0
function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
end

function done(summary, latency, requests)
   local e = summary.errors
   local p = {}
   for _, q in ipairs({ 50, 95, 99 }) do
      p[#p + 1] = string.format('"p%d_us": %d', q, latency:percentile(q))
   end
   io.write(string.format(
      'WRK_JSON {"duration_us": %d, "requests": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, '
         .. '"status": %d, "timeout": %d, "mean_us": %.1f, "max_us": %d, %s}\n',
      summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.max, table.concat(p, ", ")
   ))
end
