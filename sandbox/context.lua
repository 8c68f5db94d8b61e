-- sandbox.context: the sandbox's world: clock, id/secret generation, in-memory
-- state, and small helpers shared by the API modules.
local core = require "fiskaly.core"

local M = {}

M.ENV = "TEST"
M.SIGN_VERSION = "2.1.35"
M.MANAGEMENT_VERSION = "0.12.0"

-- Deep equality of decoded JSON values (used for idempotent retries).
function M.deep_equal(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do
    if not M.deep_equal(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

-- "2019-07-10T18:41:04.000Z" for Unix seconds (the QR code's time format).
function M.iso_time(t)
  return os.date("!%Y-%m-%dT%H:%M:%S", t) .. ".000Z"
end

-- opts: token_ttl (seconds), seed (string or nil).
function M.new(opts)
  local ctx = {
    opts = opts,
    token_ttl = opts.token_ttl or 86400,
    clock_offset = 0,
    state = {
      organizations = {}, org_order = {},   -- by _id; creation order
      api_keys = {}, key_order = {},        -- by key string
      tokens = {}, refresh_tokens = {},     -- access / refresh token records
      tss = {}, tss_order = {},             -- by tss_id
      clients = {}, client_order = {},      -- by client_id (unique system-wide)
    },
  }

  -- Random bytes: RAND_bytes, or with a seed a SHA-256 counter stream so that
  -- every id and secret is the same in each run.
  local n = 0
  function ctx.random_bytes(len)
    if not opts.seed then return core.crypto.random_bytes(len) end
    local out = {}
    local have = 0
    while have < len do
      n = n + 1
      local block = core.crypto.sha256("fiskaly-sandbox:" .. opts.seed .. ":" .. n)
      out[#out + 1] = block
      have = have + #block
    end
    return table.concat(out):sub(1, len)
  end

  function ctx.uuid()
    if not opts.seed then return core.crypto.uuid4() end
    local b = { ctx.random_bytes(16):byte(1, 16) }
    b[7] = (b[7] & 0x0f) | 0x40      -- version 4
    b[9] = (b[9] & 0x3f) | 0x80      -- RFC 4122 variant
    local h = string.format(string.rep("%02x", 16), table.unpack(b))
    return h:sub(1, 8) .. "-" .. h:sub(9, 12) .. "-" .. h:sub(13, 16) .. "-" .. h:sub(17, 20) .. "-" .. h:sub(21)
  end

  -- A string of `len` characters from `alphabet`.
  function ctx.random_string(len, alphabet)
    alphabet = alphabet or "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    local bytes = ctx.random_bytes(len)
    local out = {}
    for i = 1, len do
      local k = bytes:byte(i) % #alphabet + 1
      out[i] = alphabet:sub(k, k)
    end
    return table.concat(out)
  end

  function ctx.now()
    return os.time() + ctx.clock_offset
  end

  return ctx
end

return M
