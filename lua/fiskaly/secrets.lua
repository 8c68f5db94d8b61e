-- fiskaly.secrets: the key that seals secrets at rest (API secrets, admin PUK,
-- admin PIN) and the AES-256-GCM seal/open around it.
--
-- The key is 32 bytes, given by the host (opts.key) or read from a key file
-- (default: "<db>.key" next to the database). A missing key file is created
-- with mode 0600 on first use (only when the store is new: a store that
-- already holds sealed secrets never gets a fresh key silently). A key file
-- readable by group or others, or of the wrong length, is refused.
-- Key file contents: 32 raw bytes, or 64 hex digits (optionally + newline).
local core = require "fiskaly.core"

local crypto = core.crypto
local fs = core.store

local M = {}

M.KEY_LEN = 32

local err_mt = {
  __name = "fiskaly.Error",
  __tostring = function(e) return e.message or e.code or "error" end,
}

-- An error object { kind = "secrets", code =, message = } (never holds secret bytes).
local function new_error(code, message)
  return setmetatable({ kind = "secrets", code = code, message = message }, err_mt)
end
M.error_mt = err_mt
M.new_error = new_error

function M.default_key_file(db_path)
  return db_path .. ".key"
end

local function parse_key(bytes, path)
  if #bytes == M.KEY_LEN then return bytes end
  local hex = bytes:match("^(%x+)\r?\n?$")
  if hex and #hex == 2 * M.KEY_LEN then
    return (hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
  end
  return nil, new_error("KEY_FILE_LENGTH", string.format(
    "key file %s has the wrong length (%d bytes): expected 32 raw bytes or 64 hex digits; "
      .. "is this the right file?", path, #bytes))
end

-- Reads and checks a key file. Returns key, or nil, err.
function M.read_key_file(path)
  local info, ierr = fs.file_info(path)
  if not info then
    if ierr.code == "ENOENT" then
      return nil, new_error("KEY_FILE_MISSING", "key file " .. path .. " does not exist")
    end
    return nil, new_error("KEY_FILE_UNREADABLE", "key file " .. path .. ": " .. tostring(ierr.message))
  end
  if not info.regular then
    return nil, new_error("KEY_FILE_UNREADABLE", "key file " .. path .. " is not a regular file")
  end
  if info.mode & 0x3f ~= 0 then   -- any group/other bit (0077)
    return nil, new_error("KEY_FILE_PERMISSIONS", string.format(
      "key file %s has mode %04o: it must not be readable by group or others (chmod 600 %s)",
      path, info.mode, path))
  end
  local f, oerr = io.open(path, "rb")
  if not f then
    return nil, new_error("KEY_FILE_UNREADABLE", "cannot read key file: " .. tostring(oerr))
  end
  local bytes = f:read("a") or ""
  f:close()
  return parse_key(bytes, path)
end

-- Creates a new key file (mode 0600, never overwriting). Returns key, or nil, err.
function M.create_key_file(path)
  local key = crypto.random_bytes(M.KEY_LEN)
  local ok, werr = fs.write_private_file(path, key)
  if not ok then
    return nil, new_error("KEY_FILE_CREATE", "cannot create key file " .. path .. ": " .. tostring(werr.message))
  end
  return key
end

-- Resolves the sealing key.
-- opts: key (32 bytes from the host) | key_file (path); db_path (for the
-- default key file); create (may create a missing key file).
-- Returns key, info { source = "host"|"file", path =, created = bool }, or nil, err.
function M.load_key(opts)
  if opts.key ~= nil then
    if type(opts.key) ~= "string" or #opts.key ~= M.KEY_LEN then
      return nil, new_error("KEY_LENGTH", "the key given by the host must be 32 bytes")
    end
    return opts.key, { source = "host" }
  end
  local path = opts.key_file or (opts.db_path and M.default_key_file(opts.db_path))
  if not path then error("fiskaly.secrets.load_key: need key, key_file or db_path", 2) end
  local key, err = M.read_key_file(path)
  if key then return key, { source = "file", path = path, created = false } end
  if err.code == "KEY_FILE_MISSING" and opts.create then
    local k, cerr = M.create_key_file(path)
    if not k then return nil, cerr end
    return k, { source = "file", path = path, created = true }
  end
  return nil, err
end

-- Seals plaintext for the record named by aad. Returns the blob.
function M.seal(key, plaintext, aad)
  assert(type(aad) == "string" and aad ~= "", "fiskaly.secrets.seal: aad (record identity) required")
  return crypto.aead_seal(key, plaintext, aad)
end

-- Opens a blob sealed for aad. Returns plaintext, or nil, err.
-- where: a description of the store/key for the message (no secret bytes).
function M.open(key, blob, aad, where)
  local pt = crypto.aead_open(key, blob, aad)
  if pt then return pt end
  return nil, new_error("WRONG_KEY", string.format(
    "cannot decrypt %s%s: wrong key file? (or the record was modified)", aad, where and (" in " .. where) or ""))
end

return M
