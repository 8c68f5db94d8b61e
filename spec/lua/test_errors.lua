-- fiskaly.errors: the code catalogue, retryable flags, response parsing, __tostring, scrubbing.
local lu = require "luaunit"
local errors = require "fiskaly.errors"
local json = require "fiskaly.json"

-- Every code of fiskaly-api.md §10.3 (the spec's catalogue), read from the reference
-- document itself so a code added there and missing here fails this test.
local function spec_codes()
  local dir = os.getenv("FISKALY_SHARED_DIR") or "../shared"
  local f = assert(io.open(dir .. "/reference/fiskaly-api.md", "r"))
  local doc = f:read("a")
  f:close()
  local section = doc:match("### 10%.3 The complete code catalogue found in the spec(.-)Codes seen in the wild")
  assert(section, "§10.3 not found in fiskaly-api.md")
  local codes = {}
  for code in section:gmatch("`([A-Z][A-Z0-9_]+)`") do codes[#codes + 1] = code end
  return codes
end

TestCatalogue = {}

function TestCatalogue.test_every_spec_code_is_mapped()
  local codes = spec_codes()
  lu.assertTrue(#codes >= 50, "expected the full catalogue, got " .. #codes)
  for _, code in ipairs(codes) do
    local c = errors.codes[code]
    lu.assertNotNil(c, code .. " is not in fiskaly.errors")
    lu.assertIsBoolean(c.retryable, code)
    lu.assertIsNumber(c.status, code)
  end
end

function TestCatalogue.test_retryable_follows_section_10_2()
  -- retryable: temporary conditions
  for _, code in ipairs{ "E_TSS_LOCKED", "E_EXPORT_TEMPORARILY_UNAVAILABLE", "E_BOOTSTRAP_FILE_NOT_AVAILABLE",
      "E_SMAERS_GATEWAY_CAPACITIES_DEPLETED", "SMAERS_GATEWAY_ERROR_PRECONDITION_UNEXPORTED_LOGS",
      "ERROR_IDENTIFY_ERS", "E_EXPORT_NOT_COMPLETED", "E_EXPORT_DUPLICATE_RATE_LIMITED", "E_TOO_MANY_EXPORTS",
      "E_MIDDLEWARE_PENDING_REQUEST" } do
    lu.assertTrue(errors.codes[code].retryable, code)
  end
  -- not retryable: caller errors, conflicts, locks, wrong host
  for _, code in ipairs{ "E_TX_UPSERT", "E_FAILED_SCHEMA_VALIDATION", "E_UNAUTHORIZED", "E_ACCESS_DENIED",
      "E_TSS_NOT_FOUND", "E_TSS_CONFLICT", "E_PENDING_TX_CONFLICT", "E_ADMIN_PIN_BLOCKED", "E_TSS_DEFECTIVE",
      "E_USE_MIDDLEWARE", "E_TSS_NOT_INITIALIZED", "E_CHANGE_ADMIN_PIN_FAILED", "E_TSS_LIMIT_REACHED" } do
    lu.assertFalse(errors.codes[code].retryable, code)
  end
  -- statuses without a known code
  lu.assertTrue(errors.retryable(429, nil))
  lu.assertTrue(errors.retryable(499, nil))
  lu.assertTrue(errors.retryable(503, "E_SOMETHING_NEW"))
  lu.assertFalse(errors.retryable(400, "E_SOMETHING_NEW"))
  lu.assertFalse(errors.retryable(401, nil))
  -- the code wins over the status
  lu.assertFalse(errors.retryable(503, "E_TSS_NOT_FOUND"))
  lu.assertTrue(errors.retryable(404, "E_EXPORT_NOT_COMPLETED"))
end

TestFromResponse = {}

local function response(status, body, headers)
  return { status = status, headers = headers or {}, body = body }
end

function TestFromResponse.test_fiskaly_error_body()
  local body = '{"status_code":400,"error":"Bad Request","code":"E_TSS_NOT_INITIALIZED","message":"TSS is not initialized"}'
  local res = response(400, body, { ["request-id"] = "req-123" })
  local e = errors.from_response(res, json.decode(body), "PUT", "/tss/abc/client/def")
  lu.assertTrue(errors.is(e))
  lu.assertEquals(e.kind, "state")  -- a wrong-state code
  lu.assertEquals(e.status, 400)
  lu.assertEquals(e.code, "E_TSS_NOT_INITIALIZED")
  lu.assertEquals(e.message, "TSS is not initialized")
  lu.assertEquals(e.request_id, "req-123")
  lu.assertFalse(e.retryable)
  lu.assertEquals(tostring(e),
    "fiskaly state error 400 E_TSS_NOT_INITIALIZED: TSS is not initialized (PUT /tss/abc/client/def, request-id req-123)")
end

function TestFromResponse.test_null_code_invalid_credentials()
  local body = '{"status_code":401,"error":"Unauthorized","code":null,"message":"Invalid credentials"}'
  local e = errors.from_response(response(401, body), json.decode(body), "POST", "/auth")
  lu.assertEquals(e.kind, "api")
  lu.assertNil(e.code)
  lu.assertEquals(e.status, 401)
  lu.assertStrContains(e.message, "Invalid credentials")
  lu.assertStrContains(e.message, "API key and secret")
  lu.assertEquals(tostring(e),
    "fiskaly api error 401: Invalid credentials (check the API key and secret) (POST /auth)")
end

function TestFromResponse.test_non_json_body_is_http_kind()
  local e = errors.from_response(response(502, "<html>Bad Gateway</html>"), nil, "GET", "/tss")
  lu.assertEquals(e.kind, "http")
  lu.assertEquals(e.status, 502)
  lu.assertTrue(e.retryable)
  lu.assertStrContains(e.message, "Bad Gateway")
end

function TestFromResponse.test_retry_after_header()
  local body = '{"status_code":429,"error":"Too Many Requests","code":null,"message":"slow down"}'
  local e = errors.from_response(response(429, body, { ["retry-after"] = "7" }), json.decode(body), "GET", "/tss/x/tx")
  lu.assertEquals(e.retry_after, 7)
  lu.assertTrue(e.retryable)
end

TestScrub = {}

function TestScrub.test_scrub_removes_every_occurrence()
  local secrets = { "s3cr3t-value", "1234567890" }
  local s = errors.scrub("pin 1234567890 and s3cr3t-value and again 1234567890", secrets)
  lu.assertEquals(s, "pin [REDACTED] and [REDACTED] and again [REDACTED]")
end

function TestScrub.test_server_message_with_secret_is_scrubbed()
  local body = '{"status_code":400,"error":"Bad Request","code":"E_X","message":"bad pin 98765432"}'
  local e = errors.from_response(response(400, body), json.decode(body), "POST", "/p", { "98765432" })
  lu.assertNotStrContains(tostring(e), "98765432")
  lu.assertStrContains(tostring(e), "[REDACTED]")
end

function TestScrub.test_transport_error()
  local e = errors.from_transport({ kind = "timeout", code = "OPERATION_TIMEDOUT", message = "timed out" }, "GET", "/tss")
  lu.assertEquals(e.kind, "timeout")
  lu.assertTrue(e.retryable)
  lu.assertEquals(tostring(e), "fiskaly timeout error OPERATION_TIMEDOUT: timed out (GET /tss)")
  local t = errors.from_transport({ kind = "tls", code = "PEER_FAILED_VERIFICATION", message = "bad cert" }, "GET", "/")
  lu.assertFalse(t.retryable)
end

function TestScrub.test_validation_names_field()
  local e = errors.validation("schema.standard_v1.receipt.amounts_per_vat_rate[0].amount", "bad")
  lu.assertEquals(e.kind, "validation")
  lu.assertEquals(e.field, "schema.standard_v1.receipt.amounts_per_vat_rate[0].amount")
  lu.assertEquals(tostring(e),
    "fiskaly validation error: schema.standard_v1.receipt.amounts_per_vat_rate[0].amount: bad")
end

os.exit(lu.LuaUnit.run())
