-- fiskaly.export: trigger a TSS export (TAR, BSI TR-03153), wait for it,
-- download it and verify it offline (fiskaly.verify.export).
--
--   local export = require "fiskaly.export"
--   local report, err = export.run(client.sign, tss_id, { path = "tss.tar" })
--
-- opts: path (where the TAR is written; required), export_id (a UUID; a fresh
-- one by default), query (export filters, see sign:trigger_export), poll_ms
-- (pause between polls, default 5000: fiskaly allows 12 polls per minute per
-- export), deadline_ms (give up after, default 3600000), allow_gaps (passed to
-- verify.export; set it automatically when a filter is given, since a filtered
-- export has counter gaps by design).
-- Returns the verify report plus report.export_id, report.path, report.polls,
-- report.bytes -- or nil, err (an error object of the API, or a table
-- { code = "EXPORT_TIMEOUT"|"EXPORT_FAILED"|"IO_ERROR", message = ... }).
local core = require "fiskaly.core"
local runtime = require "fiskaly.runtime"
local verify = require "fiskaly.verify"

local M = {}

M.DEFAULT_POLL_MS = 5000
M.DEFAULT_DEADLINE_MS = 3600 * 1000

local function fail(code, message) return nil, { code = code, message = message } end

function M.run(sign, tss_id, opts)
  if type(sign) ~= "table" or type(sign.trigger_export) ~= "function" then
    error("fiskaly.export.run: a client.sign API expected", 2)
  end
  if type(tss_id) ~= "string" then error("fiskaly.export.run: tss_id string expected", 2) end
  if type(opts) ~= "table" or type(opts.path) ~= "string" then
    error("fiskaly.export.run: opts.path (a file name) expected", 2)
  end
  local poll_ms = opts.poll_ms or M.DEFAULT_POLL_MS
  local deadline = runtime.now_ms() + (opts.deadline_ms or M.DEFAULT_DEADLINE_MS)
  local export_id = opts.export_id or core.crypto.uuid4()

  local e, err = sign:trigger_export(tss_id, export_id, opts.query)
  if not e then return nil, err end

  -- Waits up to ms, never past the deadline; false when the deadline has come.
  local function pause(ms)
    local left = deadline - runtime.now_ms()
    if left <= 0 then return false end
    runtime.sleep(math.max(0, math.min(ms, left)))
    return true
  end

  local polls = 0
  while e.state ~= "COMPLETED" do
    if e.state == "ERROR" or e.state == "CANCELLED" then
      return fail("EXPORT_FAILED", string.format("export %s is %s%s", export_id, e.state,
        e.exception and (" (" .. tostring(e.exception) .. ")") or ""))
    end
    if polls > 0 and not pause(poll_ms) then
      return fail("EXPORT_TIMEOUT", "export " .. export_id .. " not COMPLETED before the deadline (" .. e.state .. ")")
    end
    polls = polls + 1
    e, err = sign:get_export(tss_id, export_id)
    if not e then return nil, err end
  end

  local tar
  while true do
    tar, err = sign:export_file(tss_id, export_id)
    if tar then break end
    if err.code ~= "E_EXPORT_NOT_COMPLETED" then return nil, err end
    local wait = (tonumber(err.retry_after) or poll_ms / 1000) * 1000
    if not pause(math.tointeger(wait // 1) or poll_ms) then
      return fail("EXPORT_TIMEOUT", "export " .. export_id .. " file not available before the deadline")
    end
  end

  local f, ferr = io.open(opts.path, "wb")
  if not f then return fail("IO_ERROR", ferr) end
  local ok, werr = f:write(tar)
  f:close()
  if not ok then return fail("IO_ERROR", werr) end

  local allow_gaps = opts.allow_gaps
  if allow_gaps == nil then allow_gaps = opts.query ~= nil and next(opts.query) ~= nil end
  local report = verify.export(opts.path, { allow_gaps = allow_gaps })
  report.export_id, report.path, report.polls, report.bytes = export_id, opts.path, polls, #tar
  return report
end

return M
