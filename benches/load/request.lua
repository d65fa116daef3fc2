-- wrk script of the load-test kit (benches/load/run.sh).
--
-- Every request goes to /load/<n> with `authorization: Bearer <token>` (for
-- `jwt_auth`) and `x-tenant-id` (for `digest`). A POST carries a fresh context id in
-- `x-context-id` and as its body, padded to LOAD_BODY_BYTES with `.` (so
-- `context_check` compares the body and the response path). A GET carries none: with
-- no body to compare, `context_check` then leaves the response alone, and a gateway
-- allowed to override the modes needs no response body. `echo` is in the chain but
-- not triggered (no `x-echo-only`).
--
-- Environment (read when the script loads, in every wrk thread):
--   LOAD_TOKEN       the JWT (required)
--   LOAD_TENANT      x-tenant-id (default: acme)
--   LOAD_METHOD      GET or POST (default: POST)
--   LOAD_BODY_BYTES  a POST's body size (default: the bare id, about 12 bytes)
--   LOAD_DELAY_MS    if set and > 0, each connection waits this long after a response
--                    before its next request (run.sh --rate); wrk 4 has no fixed-rate
--                    mode, so this only caps the rate.

local token = os.getenv("LOAD_TOKEN")
if token == nil or token == "" then
    error("request.lua: set LOAD_TOKEN to a JWT")
end
local auth = "Bearer " .. token
local tenant = os.getenv("LOAD_TENANT") or "acme"
local method = os.getenv("LOAD_METHOD") or "POST"
if method ~= "GET" and method ~= "POST" then
    error("request.lua: LOAD_METHOD must be GET or POST")
end
local size = tonumber(os.getenv("LOAD_BODY_BYTES") or "") or 0
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
    local id = "ctx-" .. tostring(tid) .. "-" .. n .. "-"
    if #id < size then
        id = id .. string.rep(".", size - #id)
    end
    local headers = {
        ["authorization"] = auth,
        ["x-tenant-id"] = tenant,
    }
    if method == "GET" then
        return wrk.format("GET", "/load/" .. n, headers)
    end
    headers["x-context-id"] = id
    headers["content-type"] = "text/plain"
    return wrk.format("POST", "/load/" .. n, headers, id)
end

-- Defined only when pacing, so that unpaced runs keep wrk's fast path.
if pause > 0 then
    function delay()
        return pause
    end
end
