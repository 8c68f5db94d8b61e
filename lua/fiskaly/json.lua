-- fiskaly.json: lua-cjson with the two things fiskaly's API needs and cjson 2.1 lacks:
-- empty arrays that encode as [] (json.array{}), and integer-exact numbers.
local cjson = require "cjson.safe"

local json = {}

json.null = cjson.null

-- Tables marked with this metatable encode as JSON arrays even when empty.
local array_mt = { __name = "fiskaly.json.array" }
json.array_mt = array_mt

-- Marks t (default: a new table) as an array; returns it.
function json.array(t)
  return setmetatable(t or {}, array_mt)
end

function json.is_array(t)
  return getmetatable(t) == array_mt
end

-- cjson encodes an empty table as {}; an empty array is swapped for this
-- sentinel string, which is then replaced by [] in the encoded text.
local SENTINEL = "\1fiskaly-empty-array\1"
local SENTINEL_JSON = '"\\u0001fiskaly-empty-array\\u0001"'

local function prepare(v, depth)
  if type(v) ~= "table" then return v, false end
  if depth > 100 then error("fiskaly.json: nesting too deep", 0) end
  if getmetatable(v) == array_mt and next(v) == nil then return SENTINEL, true end
  local copy, any = {}, false
  for k, x in pairs(v) do
    local y, a = prepare(x, depth + 1)
    copy[k] = y
    any = any or a
  end
  return copy, any
end

-- Encodes a Lua value. Returns the JSON text, or nil, err.
function json.encode(v)
  local prepared, has_empty = prepare(v, 0)
  local s, err = cjson.encode(prepared)
  if not s then return nil, "json encode: " .. tostring(err) end
  if has_empty then
    s = s:gsub(SENTINEL_JSON:gsub("%p", "%%%0"), "[]")
  end
  return s
end

-- Decodes JSON text. Returns the value, or nil, err. Integral numbers come
-- back as Lua integers (cjson yields floats: 2.0 instead of 2). An empty JSON
-- array and an empty object both decode to an empty table.
local function normalize(v, depth)
  if math.type(v) == "float" then return math.tointeger(v) or v end
  if type(v) ~= "table" or depth > 200 then return v end
  for k, x in pairs(v) do v[k] = normalize(x, depth + 1) end
  return v
end

function json.decode(s)
  if type(s) ~= "string" then return nil, "json decode: expected a string, got " .. type(s) end
  local v, err = cjson.decode(s)
  if v == nil and err then return nil, "json decode: " .. tostring(err) end
  return normalize(v, 0)
end

return json
