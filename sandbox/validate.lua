-- sandbox.validate: request-body validation following fiskaly's OpenAPI schemas
-- (fiskaly-sign-de-openapi-v2.1.35.json), with messages in the style fiskaly's
-- server (fastify/ajv) uses: "body/schema/standard_v1/receipt/amounts_per_vat_rate/0/amount
-- must match pattern \"^-?\d+(\.\d{2,5})$\"".
--
-- Schemas are Lua tables using a JSON-schema subset: type, properties, required,
-- additionalProperties (false or a schema), items, enum, pattern (a key of
-- M.patterns), minLength, maxLength, minProperties, maxProperties, format="uuid",
-- one_key_of (exactly one of the listed properties: the spec's oneOf/maxProperties 1).
local json = require "fiskaly.json"
local errors = require "sandbox.errors"

local M = {}

-- Every regular expression the validated request schemas use, as a Lua function.
-- The key is the spec's pattern text (printed in error messages).
local function all_in_set(s, set)
  return not s:find("[^" .. set .. "]")
end
-- fiskaly's class [A-Za-z0-9 '()+,-./:=?]: ",-." is the range , - . (0x2C..0x2E).
local SERIAL_SET = "A-Za-z0-9 '()+,%-./:=?"

M.patterns = {
  ["^-?\\d+(\\.\\d{2,5})$"] = function(s)
    local frac = s:match("^%-?%d+%.(%d+)$")
    return frac ~= nil and #frac >= 2 and #frac <= 5
  end,
  ["^-?\\d+(\\.\\d{1,5})?$"] = function(s)
    if s:match("^%-?%d+$") then return true end
    local frac = s:match("^%-?%d+%.(%d+)$")
    return frac ~= nil and #frac >= 1 and #frac <= 5
  end,
  ["^[a-zA-Z]{3}$"] = function(s) return s:match("^%a%a%a$") ~= nil end,
  ["^[A-Z]{3}$"] = function(s) return s:match("^%u%u%u$") ~= nil end,
  ["^[A-Za-z0-9 '()+,-./:=?]{0,70}$"] = function(s) return #s <= 70 and all_in_set(s, SERIAL_SET) end,
  ["^[A-Za-z0-9 '()+,-./:=?]{0,100}$"] = function(s) return #s <= 100 and all_in_set(s, SERIAL_SET) end,
}

function M.is_uuid(s)
  return type(s) == "string"
    and s:lower():match("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$") ~= nil
end

local function is_array(v)
  if type(v) ~= "table" then return false end
  if next(v) == nil then return true end
  local n = 0
  for k in pairs(v) do
    if math.type(k) ~= "integer" or k < 1 then return false end
    n = n + 1
  end
  return n == #v
end

local function is_object(v)
  if type(v) ~= "table" then return false end
  if next(v) == nil then return true end        -- {} and [] decode alike
  for k in pairs(v) do
    if type(k) ~= "string" then return false end
  end
  return true
end

local function type_ok(t, v)
  if t == "string" then return type(v) == "string"
  elseif t == "integer" then return math.type(v) == "integer"
  elseif t == "number" then return type(v) == "number"
  elseif t == "boolean" then return type(v) == "boolean"
  elseif t == "object" then return is_object(v)
  elseif t == "array" then return is_array(v)
  elseif t == "null" then return v == json.null
  end
  error("validate: unknown type " .. tostring(t))
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks)
  return ks
end

local function fail(path, msg)
  return nil, path .. " " .. msg
end

-- Returns true, or nil and a message naming the failing path.
function M.check(schema, v, path)
  path = path or "body"
  if schema.nullable and v == json.null then return true end
  if schema.type and not type_ok(schema.type, v) then
    return fail(path, "must be " .. schema.type)
  end
  if schema.enum then
    local found = false
    for _, e in ipairs(schema.enum) do
      if e == v then found = true break end
    end
    if not found then
      local allowed = {}
      for i, e in ipairs(schema.enum) do allowed[i] = tostring(e) end
      return fail(path, "must be equal to one of the allowed values (" .. table.concat(allowed, ", ") .. ")")
    end
  end
  if type(v) == "string" then
    if schema.minLength and utf8.len(v) and utf8.len(v) < schema.minLength then
      return fail(path, "must NOT have fewer than " .. schema.minLength .. " characters")
    end
    if schema.maxLength and (utf8.len(v) or #v) > schema.maxLength then
      return fail(path, "must NOT have more than " .. schema.maxLength .. " characters")
    end
    if schema.pattern then
      local f = assert(M.patterns[schema.pattern], "validate: no translation for pattern " .. schema.pattern)
      if not f(v) then return fail(path, 'must match pattern "' .. schema.pattern .. '"') end
    end
    if schema.format == "uuid" and not M.is_uuid(v) then
      return fail(path, 'must match format "uuid"')
    end
  end
  if type(v) == "number" then
    if schema.minimum and v < schema.minimum then return fail(path, "must be >= " .. schema.minimum) end
    if schema.maximum and v > schema.maximum then return fail(path, "must be <= " .. schema.maximum) end
  end
  if is_object(v) and (schema.properties or schema.required or schema.one_key_of
      or schema.additionalProperties ~= nil or schema.maxProperties or schema.minProperties) then
    local n = 0
    for _ in pairs(v) do n = n + 1 end
    for _, r in ipairs(schema.required or {}) do
      if v[r] == nil then return fail(path, "must have required property '" .. r .. "'") end
    end
    if schema.one_key_of then
      local present = {}
      for _, k in ipairs(schema.one_key_of) do
        if v[k] ~= nil then present[#present + 1] = k end
      end
      if #present ~= 1 or n ~= 1 then
        return fail(path, "must have exactly one of the properties " .. table.concat(schema.one_key_of, ", "))
      end
    end
    if schema.minProperties and n < schema.minProperties then
      return fail(path, "must NOT have fewer than " .. schema.minProperties .. " properties")
    end
    if schema.maxProperties and n > schema.maxProperties then
      return fail(path, "must NOT have more than " .. schema.maxProperties .. " properties")
    end
    for _, k in ipairs(sorted_keys(v)) do
      local sub = schema.properties and schema.properties[k]
      if sub then
        local ok, err = M.check(sub, v[k], path .. "/" .. k)
        if not ok then return nil, err end
      elseif schema.additionalProperties == false then
        return fail(path, "must NOT have additional properties ('" .. k .. "')")
      elseif type(schema.additionalProperties) == "table" then
        local ok, err = M.check(schema.additionalProperties, v[k], path .. "/" .. k)
        if not ok then return nil, err end
      end
    end
  end
  if schema.items and is_array(v) then
    for i, x in ipairs(v) do
      local ok, err = M.check(schema.items, x, path .. "/" .. (i - 1))
      if not ok then return nil, err end
    end
  end
  return true
end

-- Decodes a JSON request body and validates it; raises 400 E_FAILED_SCHEMA_VALIDATION.
-- An empty body counts as {} when allow_empty is set.
function M.body(schema, text, allow_empty)
  local v
  if text == nil or text:match("^%s*$") then
    if not allow_empty then errors.schema("body must be object") end
    v = {}
  else
    local err
    v, err = json.decode(text)
    if v == nil then errors.schema("body is not valid JSON: " .. tostring(err)) end
  end
  local ok, msg = M.check(schema, v, "body")
  if not ok then errors.schema(msg) end
  return v
end

-- --------------------------------------------------------------- schemas
local S = {}
M.schemas = S

local AMOUNT = "^-?\\d+(\\.\\d{2,5})$"

S.Metadata = {
  type = "object", maxProperties = 40,
  additionalProperties = { type = "string", maxLength = 500, nullable = true },
}
S.AdminPin = { type = "string", minLength = 6 }
S.AdminPuk = { type = "string", minLength = 10 }
S.ClientSerialNumber = { type = "string", minLength = 1, pattern = "^[A-Za-z0-9 '()+,-./:=?]{0,70}$" }
S.TssDescription = { type = "string", pattern = "^[A-Za-z0-9 '()+,-./:=?]{0,100}$" }

S.Auth = {   -- oneOf ApiKeyAuthentication | RefreshTokenAuthentication
  type = "object",
  properties = { api_key = { type = "string" }, api_secret = { type = "string" }, refresh_token = { type = "string" } },
}
S.CreateTss = { type = "object", properties = { metadata = S.Metadata } }
S.UpdateTss = {
  type = "object", required = { "state" }, additionalProperties = false,
  properties = {
    state = { type = "string", enum = { "UNINITIALIZED", "INITIALIZED", "DISABLED" } },
    description = S.TssDescription,
    metadata = S.Metadata,
  },
}
S.ChangeAdminPin = {
  type = "object", required = { "admin_puk", "new_admin_pin" },
  properties = { admin_puk = S.AdminPuk, new_admin_pin = S.AdminPin },
}
S.AdminAuth = { type = "object", required = { "admin_pin" }, properties = { admin_pin = S.AdminPin } }
S.CreateClient = {
  type = "object", required = { "serial_number" },
  properties = { serial_number = S.ClientSerialNumber, metadata = S.Metadata },
}
S.UpdateClient = {
  type = "object", required = { "state" },
  properties = { state = { type = "string", enum = { "REGISTERED", "DEREGISTERED" } }, metadata = S.Metadata },
}

S.Receipt = {
  type = "object", required = { "receipt_type", "amounts_per_vat_rate" },
  properties = {
    receipt_type = { type = "string", enum = { "RECEIPT", "TRAINING", "TRANSFER", "ORDER", "CANCELLATION",
      "ABORT", "BENEFIT_IN_KIND", "INVOICE", "OTHER", "ANNULATION" } },
    amounts_per_vat_rate = {
      type = "array",
      items = {
        type = "object", required = { "vat_rate", "amount" },
        properties = {
          -- oneOf: the names, or the deprecated quoted decimals
          vat_rate = { type = "string", enum = { "NORMAL", "REDUCED_1", "SPECIAL_RATE_1", "SPECIAL_RATE_2", "NULL",
            "19", "7", "10.7", "5.5", "0" } },
          amount = { type = "string", pattern = AMOUNT },
        },
      },
    },
    amounts_per_payment_type = {
      type = "array",
      items = {
        type = "object", required = { "payment_type", "amount" },
        properties = {
          payment_type = { type = "string", enum = { "CASH", "NON_CASH" } },
          amount = { type = "string", pattern = AMOUNT },
          currency_code = { type = "string", pattern = "^[a-zA-Z]{3}$" },
        },
      },
    },
  },
}
S.Order = {
  type = "object", required = { "line_items" },
  properties = {
    line_items = {
      type = "array",
      items = {
        type = "object", required = { "quantity", "text", "price_per_unit" },
        properties = {
          quantity = { type = "string", pattern = "^-?\\d+(\\.\\d{1,5})?$" },
          text = { type = "string", maxLength = 255 },
          price_per_unit = { type = "string", pattern = AMOUNT },
        },
      },
    },
  },
}
S.StandardV1 = {
  type = "object", one_key_of = { "receipt", "order", "other" },
  properties = { receipt = S.Receipt, order = S.Order, other = { type = "object" } },
}
S.Raw = {
  type = "object", required = { "process_type", "process_data" },
  properties = { process_type = { type = "string" }, process_data = { type = "string" } },
}
S.TxSchema = {
  type = "object", one_key_of = { "standard_v1", "dsfinvtw_v1", "raw" },
  properties = { standard_v1 = S.StandardV1, dsfinvtw_v1 = { type = "object" }, raw = S.Raw },
}
S.Tx = {
  type = "object", required = { "state", "client_id" },
  properties = {
    state = { type = "string", enum = { "ACTIVE", "CANCELLED", "FINISHED" } },
    client_id = { type = "string", format = "uuid" },
    schema = S.TxSchema,
    metadata = S.Metadata,
  },
}

-- Management API v0 (no official OpenAPI; field rules from fiskaly-api.md §12).
S.CreateOrganization = {
  type = "object", required = { "name", "address_line1", "zip", "town", "country_code" },
  properties = {
    name = { type = "string", minLength = 1, maxLength = 255 },
    display_name = { type = "string" },
    address_line1 = { type = "string", minLength = 1 },
    address_line2 = { type = "string" },
    zip = { type = "string", minLength = 1 },
    town = { type = "string", minLength = 1 },
    state = { type = "string" },
    country_code = { type = "string", pattern = "^[A-Z]{3}$" },
    vat_id = { type = "string" },
    tax_number = { type = "string" },
    economy_id = { type = "string" },
    contact_person_id = { type = "string", format = "uuid" },
    billing_address_id = { type = "string", format = "uuid" },
    billing_options = { type = "object" },
    managed_by_organization_id = { type = "string", format = "uuid" },
    metadata = S.Metadata,
  },
}
S.CreateApiKey = {
  type = "object", required = { "name" },
  properties = {
    name = { type = "string", minLength = 1, maxLength = 255 },
    status = { type = "string", enum = { "enabled", "disabled" } },
    managed_by_organization_id = { type = "string", format = "uuid" },
    metadata = S.Metadata,
  },
}

return M
