-- fiskaly: the public entry point.
--
--   local fiskaly = require "fiskaly"
--   local client = assert(fiskaly.new{ base_url = ..., api_key = ..., api_secret = ... })
--
-- Re-exports the C core (fiskaly.core), JSON (fiskaly.json) and the error
-- helpers (fiskaly.errors); the other Lua modules (verify, transaction,
-- receipt, store, money, provision, sandbox) load on first access, e.g.
-- fiskaly.transaction.
local core = require "fiskaly.core"
local client = require "fiskaly.client"
local errors = require "fiskaly.errors"
local json = require "fiskaly.json"
local runtime = require "fiskaly.runtime"

local M = {
  version = core.version,
  core = core,
  json = json,
  errors = errors,
  -- fiskaly.new{ base_url | sign_base_url + management_base_url, api_key, api_secret,
  --   ca_file, timeout_ms, timeouts, log } -> client (raises on misuse)
  new = client.new,
  is_error = errors.is,
  uuid4 = core.crypto.uuid4,
  DEFAULT_SIGN_BASE_URL = client.DEFAULT_SIGN_BASE_URL,
  DEFAULT_MANAGEMENT_BASE_URL = client.DEFAULT_MANAGEMENT_BASE_URL,
  -- Concurrency (fiskaly.runtime, docs/concurrency.md): client calls made inside
  -- a task yield while their request is in flight.
  --   fiskaly.spawn(fn, ...) -> task; fiskaly.step(timeout_ms) (host event loop);
  --   fiskaly.run([timeout_ms]) (scripts: until every task is done)
  runtime = runtime,
  spawn = runtime.spawn,
  step = runtime.step,
  run = runtime.run,
}

local lazy = {
  verify = true, transaction = true, receipt = true, store = true, money = true,
  provision = true, sandbox = true, secrets = true, sign_de = true, management = true, client = true,
}

return setmetatable(M, {
  __index = function(t, k)
    if lazy[k] then
      local mod = require("fiskaly." .. k)
      rawset(t, k, mod)
      return mod
    end
    return nil
  end,
})
