-- A small JSON-schema (OpenAPI 3.0 flavour) validator for tests.
-- Subset: $ref (local "#/..."), type, nullable, required, properties,
-- additionalProperties, items, enum, oneOf, anyOf, allOf, minimum, maximum,
-- minLength, maxLength, minProperties, maxProperties, uniqueItems, format (uuid,
-- bigint, byte; uri unchecked) and pattern through an explicit table of the
-- regular expressions that occur in fiskaly's SIGN DE spec (an unknown pattern is
-- an error, never silently accepted).
--
-- JSON values come from M.decode, which keeps empty arrays apart from empty
-- objects (lua-cjson 2.1.0 decodes both to {}).
local cjson = require "cjson.safe"

local M = {}

local ARRAY = { __name = "jsonschema.array" }
M.ARRAY = ARRAY
M.null = cjson.null

local SENTINEL = "\1jsonschema-empty-array\1"

-- Decodes JSON text; empty arrays come back with the ARRAY metatable.
function M.decode(text)
  -- Replace every `[ ]` outside strings with a one-element sentinel array.
  local out, i, n, in_str = {}, 1, #text, false
  local start = 1
  while i <= n do
    local c = text:sub(i, i)
    if in_str then
      if c == "\\" then i = i + 1 elseif c == '"' then in_str = false end
    elseif c == '"' then
      in_str = true
    elseif c == "[" then
      local j = text:find("[^ \t\r\n]", i + 1)
      if j and text:sub(j, j) == "]" then
        out[#out + 1] = text:sub(start, i)
        out[#out + 1] = '"' .. SENTINEL:gsub("\1", "\\u0001") .. '"]'
        start = j + 1
        i = j
      end
    end
    i = i + 1
  end
  out[#out + 1] = text:sub(start)
  local v, err = cjson.decode(table.concat(out))
  if v == nil then return nil, err end
  local function fix(x)
    if type(x) ~= "table" then return x end
    if #x == 1 and x[1] == SENTINEL and next(x, 1) == nil then return setmetatable({}, ARRAY) end
    for k, y in pairs(x) do x[k] = fix(y) end
    if #x > 0 then setmetatable(x, ARRAY) end
    return x
  end
  return fix(v)
end

-- Every pattern in fiskaly-sign-de-openapi-v2.1.35.json, translated by hand.
local function frac_between(s, lo, hi, optional)
  local neg_int, frac = s:match("^%-?(%d+)%.(%d+)$")
  if not neg_int then return optional == true and s:match("^%-?%d+$") ~= nil end
  return #frac >= lo and #frac <= hi
end
local SERIAL_SET = "A-Za-z0-9 '()+,%-./:=?"    -- [A-Za-z0-9 '()+,-./:=?]  (",-." is , - .)
M.patterns = {
  ["^-?\\d+(\\.\\d{2,5})$"] = function(s) return s:find("%.") ~= nil and frac_between(s, 2, 5) end,
  ["^-?\\d+(\\.\\d{1,5})?$"] = function(s) return frac_between(s, 1, 5, true) end,
  ["^-?\\d{1,16}\\.\\d{2}$"] = function(s)
    local i, f = s:match("^%-?(%d+)%.(%d+)$")
    return i ~= nil and #i <= 16 and #f == 2
  end,
  ["^\\d{1,16}\\.\\d{3}$"] = function(s)
    local i, f = s:match("^(%d+)%.(%d+)$")
    return i ~= nil and #i <= 16 and #f == 3
  end,
  ["^[A-Za-z0-9 '()+,-./:=?]{0,100}$"] = function(s) return #s <= 100 and not s:find("[^" .. SERIAL_SET .. "]") end,
  ["^[A-Za-z0-9 '()+,-./:=?]{0,70}$"] = function(s) return #s <= 70 and not s:find("[^" .. SERIAL_SET .. "]") end,
  ["^[^_\\/^]+$"] = function(s) return #s > 0 and not s:find("[_/%^]") end,
  ["^\\d{1,20}$"] = function(s) return s:match("^%d+$") ~= nil and #s <= 20 end,
  ["^\\d{1,10}$"] = function(s) return s:match("^%d+$") ~= nil and #s <= 10 end,
  ["^[a-zA-Z]{3}$"] = function(s) return s:match("^%a%a%a$") ~= nil end,
  ["^\\d+$"] = function(s) return s:match("^%d+$") ~= nil end,
  ["gw\\d+-(live|test)$"] = function(s) return s:match("gw%d+%-live$") ~= nil or s:match("gw%d+%-test$") ~= nil end,
}

local formats = {
  uuid = function(s) return s:match("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$") ~= nil end,
  bigint = function(s) return s:match("^%-?%d+$") ~= nil end,
  byte = function(s) return #s % 4 == 0 and s:match("^[A-Za-z0-9+/]*=?=?$") ~= nil end,
  uri = function() return true end,
}

local function is_array(v)
  return type(v) == "table" and getmetatable(v) == ARRAY
end
local function is_object(v)
  return type(v) == "table" and getmetatable(v) ~= ARRAY
end

local function type_ok(t, v)
  if t == "string" then return type(v) == "string"
  elseif t == "integer" then return math.type(v) == "integer" or (math.type(v) == "float" and v == math.floor(v))
  elseif t == "number" then return type(v) == "number"
  elseif t == "boolean" then return type(v) == "boolean"
  elseif t == "object" then return is_object(v)
  elseif t == "array" then return is_array(v)
  end
  error("jsonschema: unsupported type " .. tostring(t))
end

local function json_type(v)
  if v == cjson.null then return "null" end
  if is_array(v) then return "array" end
  if type(v) == "table" then return "object" end
  if type(v) == "number" and v == math.floor(v) then return "integer" end
  return type(v)
end

local function resolve(root, ref)
  assert(ref:sub(1, 2) == "#/", "jsonschema: only local $ref supported: " .. ref)
  local node = root
  for part in ref:sub(3):gmatch("[^/]+") do
    part = part:gsub("~1", "/"):gsub("~0", "~")
    node = node[part]
    assert(node ~= nil, "jsonschema: unresolved $ref " .. ref)
  end
  return node
end

local validate

-- Returns true, or false and a message naming the failing path.
validate = function(root, schema, v, path, opts)
  if opts.overridden ~= path then
    for pat, override in pairs(opts.known_issues or {}) do
      if path:match(pat) then
        return validate(root, override, v, path, { known_issues = opts.known_issues, overridden = path })
      end
    end
  end
  if schema["$ref"] then return validate(root, resolve(root, schema["$ref"]), v, path, opts) end
  if v == cjson.null then
    if schema.nullable then return true end
    if schema.type or schema.properties or schema.enum then return false, path .. ": null not allowed" end
  end
  if schema.type and not type_ok(schema.type, v) then
    return false, string.format("%s: expected %s, got %s", path, schema.type, json_type(v))
  end
  if schema.enum then
    local hit = false
    for _, e in ipairs(schema.enum) do if e == v then hit = true break end end
    if not hit then return false, path .. ": " .. tostring(v) .. " is not one of the enum values" end
  end
  if type(v) == "string" then
    if schema.minLength and utf8.len(v) < schema.minLength then return false, path .. ": shorter than minLength" end
    if schema.maxLength and utf8.len(v) > schema.maxLength then return false, path .. ": longer than maxLength" end
    if schema.pattern then
      local f = M.patterns[schema.pattern]
      if not f then error("jsonschema: no translation for pattern " .. schema.pattern) end
      if not f(v) then return false, path .. ": " .. string.format("%q", v) .. " does not match " .. schema.pattern end
    end
    if schema.format then
      local f = formats[schema.format]
      if not f then error("jsonschema: unsupported format " .. schema.format) end
      if not f(v) then return false, path .. ": not a valid " .. schema.format end
    end
  end
  if type(v) == "number" then
    if schema.minimum and v < schema.minimum then return false, path .. ": below minimum" end
    if schema.maximum and v > schema.maximum then return false, path .. ": above maximum" end
  end
  if is_object(v) then
    local n = 0
    for _ in pairs(v) do n = n + 1 end
    if schema.minProperties and n < schema.minProperties then return false, path .. ": too few properties" end
    if schema.maxProperties and n > schema.maxProperties then return false, path .. ": too many properties" end
    for _, r in ipairs(schema.required or {}) do
      if v[r] == nil then return false, path .. ": missing required property " .. r end
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local sub = schema.properties and schema.properties[k]
      if sub then
        local ok, err = validate(root, sub, v[k], path .. "/" .. k, opts)
        if not ok then return false, err end
      elseif schema.additionalProperties == false then
        return false, path .. ": additional property " .. k .. " not allowed"
      elseif type(schema.additionalProperties) == "table" then
        local ok, err = validate(root, schema.additionalProperties, v[k], path .. "/" .. k, opts)
        if not ok then return false, err end
      end
    end
  end
  if is_array(v) then
    if schema.items then
      for i, x in ipairs(v) do
        local ok, err = validate(root, schema.items, x, path .. "/" .. (i - 1), opts)
        if not ok then return false, err end
      end
    end
    if schema.uniqueItems then
      local seen = {}
      for _, x in ipairs(v) do
        local key = json_type(x) .. ":" .. tostring(type(x) == "table" and cjson.encode(x) or x)
        if seen[key] then return false, path .. ": items not unique" end
        seen[key] = true
      end
    end
  end
  if schema.allOf then
    for i, s in ipairs(schema.allOf) do
      local ok, err = validate(root, s, v, path, opts)
      if not ok then return false, err .. " (allOf[" .. (i - 1) .. "])" end
    end
  end
  if schema.anyOf then
    local errs = {}
    for _, s in ipairs(schema.anyOf) do
      local ok, err = validate(root, s, v, path, opts)
      if ok then errs = nil break end
      errs[#errs + 1] = err
    end
    if errs then return false, path .. ": matches no anyOf branch (" .. table.concat(errs, "; ") .. ")" end
  end
  if schema.oneOf then
    local hits, errs = 0, {}
    for _, s in ipairs(schema.oneOf) do
      local ok, err = validate(root, s, v, path, opts)
      if ok then hits = hits + 1 else errs[#errs + 1] = err end
    end
    if hits ~= 1 then
      return false, string.format("%s: matches %d oneOf branches, expected 1 (%s)", path, hits, table.concat(errs, "; "))
    end
  end
  return true
end

-- validator = M.new(root_document); validator:check(schema, value, opts) -> true | false, msg
-- opts.known_issues: { [lua pattern on the JSON path] = schema used instead }.
function M.new(root)
  return {
    root = root,
    check = function(self, schema, v, opts)
      return validate(self.root, schema, v, "", opts or {})
    end,
  }
end

-- fiskaly's SIGN DE OpenAPI document from ../shared (or $FISKALY_SHARED_DIR):
-- returns the decoded document and a validator over it.
function M.load_openapi()
  local path = (os.getenv("FISKALY_SHARED_DIR") or "../shared")
    .. "/reference/fiskaly-sign-de-openapi-v2.1.35.json"
  local f = assert(io.open(path, "rb"))
  local spec = assert(M.decode(f:read("a")))
  f:close()
  return spec, M.new(spec)
end

return M
