-- wrk script of the load-test kit (benches/load/run.sh).
--
-- Every request is a POST to /load/<n> whose body is a fresh context id, sent also as
-- `x-context-id` (so `context_check` verifies body and response path), with
-- `authorization: Bearer <token>` (for `jwt_auth`) and `x-tenant-id` (for `digest`).
-- `echo` is in the chain but not triggered (no `x-echo-only`).
--
-- Environment (read when the script loads, in every wrk thread):
--   LOAD_TOKEN     the JWT (required)
--   LOAD_TENANT    x-tenant-id (default: acme)
--   LOAD_DELAY_MS  if set and > 0, each connection waits this long after a response
--                  before its next request (run.sh --rate); wrk 4 has no fixed-rate
--                  mode, so this only caps the rate.

local token = os.getenv("LOAD_TOKEN")
if token == nil or token == "" then
    error("request.lua: set LOAD_TOKEN to a JWT")
end
local auth = "Bearer " .. token
local tenant = os.getenv("LOAD_TENANT") or "acme"
local pause = tonumber(os.getenv("LOAD_DELAY_MS") or "") or 0

-- setup() runs in the main state once per thread; each thread's own state gets `tid`.
local threads = 0
function setup(thread)
    threads = threads + 1
    thread:set("tid", threads)
end

local n = 0
function request()
    n = n + 1
    local id = "ctx-" .. tostring(tid) .. "-" .. n
    return wrk.format("POST", "/load/" .. n, {
        ["x-context-id"] = id,
        ["authorization"] = auth,
        ["x-tenant-id"] = tenant,
        ["content-type"] = "text/plain",
    }, id)
end

-- Defined only when pacing, so that unpaced runs keep wrk's fast path.
if pause > 0 then
    function delay()
        return pause
    end
end
