-- `fiskaly receipt check|list` through the real CLI wrapper (FISKALY_CLI).
local lu = require "luaunit"
local json = require "fiskaly.json"

local CLI = assert(os.getenv("FISKALY_CLI"), "FISKALY_CLI must point at build/bin/fiskaly")

local function sh(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Runs the CLI; returns stdout, exit code.
local function run(...)
  local cmd = { sh(CLI) }
  for _, a in ipairs { ... } do cmd[#cmd + 1] = sh(a) end
  local p = assert(io.popen(table.concat(cmd, " ") .. " 2>/dev/null"))
  local out = p:read("a")
  local _, _, code = p:close()
  return out, code
end

local CASES = "spec/plugins/"

TestReceiptCli = {}

function TestReceiptCli.test_check_prints_body_and_process_data()
  local out, code = run("receipt", "check", "retail", CASES .. "retail/cases/mpv_redeem_mixed_payment_change/sale.json",
    "--plugins", "plugins")
  lu.assertEquals(code, 0)
  lu.assertStrContains(out, "OK plugin retail 1.0.0\n")
  lu.assertStrContains(out, "process_data  Beleg^89.80_1.49_0.00_0.00_0.00^16.29:Bar_75.00:Unbar\n")
  lu.assertStrContains(out, "change        3.71 (given in EUR cash)\n")
  lu.assertStrContains(out, '"amounts_per_payment_type":[')
end

function TestReceiptCli.test_check_json_matches_golden()
  local dir = CASES .. "restaurant/cases/tip_employer/"
  local out, code = run("receipt", "check", "restaurant", dir .. "sale.json", "--conf", dir .. "conf.json", "--json")
  lu.assertEquals(code, 0)
  local r = assert(json.decode(out))
  local f = assert(io.open(dir .. "receipt.json"))
  local expected = assert(json.decode(f:read("a")))
  f:close()
  lu.assertTrue(r.ok)
  lu.assertEquals(r.schema.standard_v1.receipt, expected.receipt)
  lu.assertEquals(r.process_data, expected.process_data)
  lu.assertEquals(r.process_type, "Kassenbeleg-V1")
  lu.assertEquals(r.totals.total, 3030)
end

function TestReceiptCli.test_check_rejects_with_exact_errors()
  local out, code = run("receipt", "check", "retail", CASES .. "retail/cases/error_underpaid/sale.json")
  lu.assertEquals(code, 1)
  lu.assertEquals(out, 'REJECTED plugin "retail": payments: payments 5.00 minus change 0.00 = 5.00, '
    .. "but the sale total is 10.00\n")
  local tmp = os.tmpname()
  local f = assert(io.open(tmp, "w"))
  f:write('{"max_items": 0, "colour": "red"}')
  f:close()
  out, code = run("receipt", "check", "retail", CASES .. "retail/cases/mixed_vat/sale.json", "--conf", tmp)
  lu.assertEquals(code, 1)
  lu.assertEquals(out, 'REJECTED (2 errors) plugin "retail":\n'
    .. "  conf.max_items: value should be between 1 and 10000\n"
    .. "  conf.colour: unknown field\n")
  out, code = run("receipt", "check", "retail", CASES .. "retail/cases/mixed_vat/sale.json", "--conf", tmp, "--json")
  lu.assertEquals(code, 1)
  local r = assert(json.decode(out))
  lu.assertFalse(r.ok)
  lu.assertEquals(r.error.kind, "validation")
  lu.assertEquals(r.error.errors, {
    { field = "conf.max_items", message = "value should be between 1 and 10000" },
    { field = "conf.colour", message = "unknown field" } })
  os.remove(tmp)
end

function TestReceiptCli.test_usage_errors_exit_2()
  local _, code = run("receipt", "check", "retail")
  lu.assertEquals(code, 2)
  _, code = run("receipt", "check", "retail", "/nonexistent/sale.json")
  lu.assertEquals(code, 2)
  _, code = run("receipt", "frobnicate")
  lu.assertEquals(code, 2)
  _, code = run("receipt", "check", "retail", CASES .. "retail/cases/mixed_vat/sale.json", "--bogus")
  lu.assertEquals(code, 2)
  local out
  out, code = run("receipt", "--help")
  lu.assertEquals(code, 0)
  lu.assertStrContains(out, "usage: fiskaly receipt check <plugin> <sale.json>")
end

function TestReceiptCli.test_hostile_plugin_is_rejected_not_fatal()
  local out, code = run("receipt", "check", "hostile_loop", CASES .. "retail/cases/mixed_vat/sale.json",
    "--plugins", "spec/fixtures/plugins")
  lu.assertEquals(code, 1)
  lu.assertEquals(out, 'REJECTED plugin "hostile_loop": map failed: instruction budget exceeded (5000000 instructions)\n')
end

function TestReceiptCli.test_list()
  local out, code = run("receipt", "list", "--plugins", "plugins", "--json")
  lu.assertEquals(code, 0)
  local l = assert(json.decode(out))
  local names = {}
  for i, p in ipairs(l) do names[i] = p.name .. "@" .. p.version end
  lu.assertEquals(names, { "bakery@1.0.0", "restaurant@1.0.0", "retail@1.0.0" })
  _, code = run("receipt", "list", "--plugins", "spec/fixtures/plugins")
  lu.assertEquals(code, 1)                   -- hostile_loop_at_load cannot be loaded
end

os.exit(lu.LuaUnit.run())
