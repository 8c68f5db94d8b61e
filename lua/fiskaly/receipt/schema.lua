-- fiskaly.receipt.schema: plugin configuration schemas (Kong-style) and the
-- metaschema they are checked against when a plugin is loaded.
--
--   return {
--     description = "...",
--     fields = {
--       { tip_mode = { type = "string", one_of = { "null_rate", "exclude" }, default = "null_rate" } },
--       { max_items = { type = "integer", between = { 1, 500 }, default = 200 } },
--     },
--     custom_validator = function(conf) return true end,   -- or nil, "message"
--   }
--
-- Field attributes: type (string|integer|number|boolean|array|record|map),
-- required, default, between = {min, max}, one_of = {...}, len_min, len_max,
-- match (a Lua pattern), elements (array), fields (record), values (map, whose
-- keys are strings), custom_validator, description.
local M = {}

local fmt, concat = string.format, table.concat
local type, pairs, ipairs, next, tostring = type, pairs, ipairs, next, tostring
local math_type = math.type

local TYPES = { "string", "integer", "number", "boolean", "array", "record", "map" }
local IS_TYPE = {}
for _, t in ipairs(TYPES) do IS_TYPE[t] = true end

local ATTRS = {
  type = true, required = true, default = true, between = true, one_of = true,
  len_min = true, len_max = true, match = true, elements = true, fields = true,
  values = true, custom_validator = true, description = true,
}

local function is_array(t)
  if type(t) ~= "table" then return false end
  local n = #t
  for k in pairs(t) do
    if math_type(k) ~= "integer" or k < 1 or k > n then return false end
  end
  return true
end

local function type_ok(ftype, v)
  if ftype == "string" then return type(v) == "string"
  elseif ftype == "integer" then return math_type(v) == "integer"
  elseif ftype == "number" then return type(v) == "number"
  elseif ftype == "boolean" then return type(v) == "boolean"
  elseif ftype == "array" then return is_array(v)
  elseif ftype == "record" or ftype == "map" then
    if type(v) ~= "table" then return false end
    for k in pairs(v) do if type(k) ~= "string" then return false end end
    return true
  end
  return false
end

local ARTICLE = {
  string = "a string", integer = "an integer", number = "a number", boolean = "a boolean",
  array = "an array", record = "a record", map = "a map",
}

local function show(v)
  if type(v) == "string" then return v end
  return tostring(v)
end

local function join_path(path, key)
  if path == "" then return key end
  return path .. "." .. key
end

----------------------------------------------------------------- metaschema

local check_fields

-- Checks one field definition; returns nil or an error message naming the field.
local function check_def(path, def)
  local where = fmt("field %q", path)
  if type(def) ~= "table" then return fmt("%s: definition must be a table", where) end
  for k in pairs(def) do
    if not ATTRS[k] then return fmt("%s: unknown attribute %q", where, tostring(k)) end
  end
  local t = def.type
  if t == nil then return fmt("%s: type is required", where) end
  if not IS_TYPE[t] then
    return fmt("%s: type %q is not one of %s", where, show(t), concat(TYPES, ", "))
  end
  if def.required ~= nil and type(def.required) ~= "boolean" then
    return fmt("%s: required must be a boolean", where)
  end
  if def.description ~= nil and type(def.description) ~= "string" then
    return fmt("%s: description must be a string", where)
  end
  if def.custom_validator ~= nil and type(def.custom_validator) ~= "function" then
    return fmt("%s: custom_validator must be a function", where)
  end
  if def.between ~= nil then
    if t ~= "integer" and t ~= "number" then
      return fmt("%s: between is only valid for integer and number fields", where)
    end
    local b = def.between
    if not is_array(b) or #b ~= 2 or not type_ok(t, b[1]) or not type_ok(t, b[2]) or b[1] > b[2] then
      return fmt("%s: between must be {min, max} of type %s with min <= max", where, t)
    end
  end
  if def.one_of ~= nil then
    if t ~= "string" and t ~= "integer" and t ~= "number" then
      return fmt("%s: one_of is only valid for string, integer and number fields", where)
    end
    if not is_array(def.one_of) or #def.one_of == 0 then
      return fmt("%s: one_of must be a non-empty array", where)
    end
    for i, v in ipairs(def.one_of) do
      if not type_ok(t, v) then
        return fmt("%s: one_of[%d] is not %s", where, i, ARTICLE[t])
      end
    end
  end
  for _, a in ipairs { "len_min", "len_max" } do
    local v = def[a]
    if v ~= nil then
      if t ~= "string" and t ~= "array" then
        return fmt("%s: %s is only valid for string and array fields", where, a)
      end
      if math_type(v) ~= "integer" or v < 0 then
        return fmt("%s: %s must be a non-negative integer", where, a)
      end
    end
  end
  if def.len_min and def.len_max and def.len_min > def.len_max then
    return fmt("%s: len_min must not be greater than len_max", where)
  end
  if def.match ~= nil then
    if t ~= "string" then return fmt("%s: match is only valid for string fields", where) end
    if type(def.match) ~= "string" or not pcall(string.find, "", def.match) then
      return fmt("%s: match must be a valid Lua pattern", where)
    end
  end
  if t == "array" then
    if def.elements == nil then return fmt("%s: array fields need elements", where) end
    local e = check_def(path .. "[]", def.elements)
    if e then return e end
  elseif def.elements ~= nil then
    return fmt("%s: elements is only valid for array fields", where)
  end
  if t == "record" then
    if def.fields == nil then return fmt("%s: record fields need fields", where) end
    local e = check_fields(path, def.fields)
    if e then return e end
  elseif def.fields ~= nil then
    return fmt("%s: fields is only valid for record fields", where)
  end
  if t == "map" then
    if def.values == nil then return fmt("%s: map fields need values", where) end
    local e = check_def(path .. ".*", def.values)
    if e then return e end
  elseif def.values ~= nil then
    return fmt("%s: values is only valid for map fields", where)
  end
  return nil
end

-- fields: an array of one-entry tables { name = definition }.
function check_fields(path, fields)
  local where = path == "" and "fields" or fmt("field %q: fields", path)
  if not is_array(fields) then
    return fmt("%s must be an array of { name = definition } entries", where)
  end
  local seen = {}
  for i, entry in ipairs(fields) do
    if type(entry) ~= "table" then
      return fmt("%s[%d] must be a table { name = definition }", where, i)
    end
    local name, def = next(entry)
    if name == nil or next(entry, name) ~= nil then
      return fmt("%s[%d] must hold exactly one field", where, i)
    end
    if type(name) ~= "string" or not name:match("^[%a_][%w_]*$") then
      return fmt("%s[%d]: invalid field name %q", where, i, tostring(name))
    end
    local fpath = join_path(path, name)
    if seen[name] then return fmt("field %q is defined twice", fpath) end
    seen[name] = true
    local e = check_def(fpath, def)
    if e then return e end
  end
  return nil
end

-- Checks the schema table against the metaschema. Returns true or nil, message.
-- Defaults are checked against their own field (type, ranges, enumerations).
function M.check(schema)
  if type(schema) ~= "table" then return nil, "schema must be a table" end
  for k in pairs(schema) do
    if k ~= "fields" and k ~= "custom_validator" and k ~= "description" then
      return nil, fmt("unknown schema attribute %q", tostring(k))
    end
  end
  if schema.custom_validator ~= nil and type(schema.custom_validator) ~= "function" then
    return nil, "custom_validator must be a function"
  end
  if schema.description ~= nil and type(schema.description) ~= "string" then
    return nil, "description must be a string"
  end
  local e = check_fields("", schema.fields or {})
  if e then return nil, e end
  -- defaults must satisfy their own field (custom validators excluded: plugin code)
  local function check_defaults(path, fields)
    for _, entry in ipairs(fields) do
      local name, def = next(entry)
      local fpath = join_path(path, name)
      if def.default ~= nil then
        local errs = {}
        M.validate_value(fpath, def, def.default, errs, nil)
        if #errs > 0 then
          return fmt("field %q: default: %s", fpath, errs[1].message)
        end
      end
      if def.type == "record" then
        local e2 = check_defaults(fpath, def.fields)
        if e2 then return e2 end
      end
    end
  end
  e = check_defaults("", schema.fields or {})
  if e then return nil, e end
  return true
end

----------------------------------------------------------------- conf validation

local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local c = {}
  for k, x in pairs(v) do c[k] = deep_copy(x) end
  return c
end

local validate_record

-- Validates `v` against `def`, appending { field =, message = } to errs.
-- `invoke(fn, value)` runs a custom validator (in the plugin's sandbox) and
-- returns true or nil, message. Returns the value with defaults applied.
function M.validate_value(path, def, v, errs, invoke)
  local function fail(msg) errs[#errs + 1] = { field = path, message = msg } end
  local t = def.type
  if not type_ok(t, v) then
    fail("expected " .. ARTICLE[t])
    return v
  end
  if def.between and (v < def.between[1] or v > def.between[2]) then
    fail(fmt("value should be between %s and %s", show(def.between[1]), show(def.between[2])))
  end
  if def.one_of then
    local found = false
    for _, x in ipairs(def.one_of) do if x == v then found = true break end end
    if not found then
      local names = {}
      for i, x in ipairs(def.one_of) do names[i] = show(x) end
      fail("expected one of: " .. concat(names, ", "))
    end
  end
  if def.len_min or def.len_max then
    local n = #v
    if def.len_min and n < def.len_min then fail(fmt("length must be at least %d", def.len_min)) end
    if def.len_max and n > def.len_max then fail(fmt("length must be at most %d", def.len_max)) end
  end
  if def.match and not v:find(def.match) then
    fail(fmt("value must match the pattern %s", def.match))
  end
  if t == "array" then
    local out = {}
    for i = 1, #v do
      out[i] = M.validate_value(fmt("%s[%d]", path, i), def.elements, v[i], errs, invoke)
    end
    v = out
  elseif t == "record" then
    v = validate_record(path, def.fields, v, errs, invoke)
  elseif t == "map" then
    local out = {}
    for k, x in pairs(v) do
      out[k] = M.validate_value(join_path(path, k), def.values, x, errs, invoke)
    end
    v = out
  end
  if def.custom_validator and invoke then
    local ok, msg = invoke(def.custom_validator, v)
    if not ok then fail(msg or "invalid value") end
  end
  return v
end

function validate_record(path, fields, conf, errs, invoke)
  local out, known = {}, {}
  for _, entry in ipairs(fields) do
    local name, def = next(entry)
    known[name] = true
    local fpath = join_path(path, name)
    local v = conf[name]
    if v == nil and def.default ~= nil then v = deep_copy(def.default) end
    if v == nil then
      if def.required then errs[#errs + 1] = { field = fpath, message = "required field missing" } end
    else
      out[name] = M.validate_value(fpath, def, v, errs, invoke)
    end
  end
  local unknown = {}
  for k in pairs(conf) do
    if not known[k] then unknown[#unknown + 1] = tostring(k) end
  end
  table.sort(unknown)
  for _, k in ipairs(unknown) do
    errs[#errs + 1] = { field = join_path(path, k), message = "unknown field" }
  end
  return out
end

-- Validates a configuration table against a checked schema. Returns the
-- configuration with defaults filled in, or nil, errors (an array of
-- { field =, message = } in schema order).
function M.validate(schema, conf, invoke)
  if conf == nil then conf = {} end
  local errs = {}
  if type(conf) ~= "table" then
    return nil, { { field = "conf", message = "expected a record" } }
  end
  local out = validate_record("", schema.fields or {}, conf, errs, invoke)
  if #errs == 0 and schema.custom_validator and invoke then
    local ok, msg = invoke(schema.custom_validator, out)
    if not ok then errs[#errs + 1] = { field = "conf", message = msg or "invalid configuration" } end
  end
  if #errs > 0 then return nil, errs end
  return out
end

----------------------------------------------------------------- typedefs

-- Field types shared by plugin schemas (Kong's typedefs): each is a function
-- taking optional extra attributes and returning a fresh definition, e.g.
-- `{ default_vat = typedefs.vat_rate { default = "NORMAL" } }`.
local RATE_NAMES = { "NORMAL", "REDUCED_1", "SPECIAL_RATE_1", "SPECIAL_RATE_2", "NULL" }
local MAX_CENTS = 9007199254740992
local TYPEDEFS = {
  vat_rate = function() return { type = "string", one_of = { table.unpack(RATE_NAMES) } } end,
  payment_type = function() return { type = "string", one_of = { "CASH", "NON_CASH" } } end,
  currency = function() return { type = "string", match = "^%u%u%u$" } end,
  cents = function() return { type = "integer", between = { -MAX_CENTS, MAX_CENTS } } end,
  percent = function() return { type = "integer", between = { 0, 100 } } end,
}

-- A fresh table of typedef constructors (plain data, safe to hand to a plugin).
function M.typedefs()
  local t = {}
  for name, base in pairs(TYPEDEFS) do
    t[name] = function(extra)
      local def = base()
      for k, v in pairs(extra or {}) do def[k] = v end
      return def
    end
  end
  return t
end

M.is_array = is_array
return M
