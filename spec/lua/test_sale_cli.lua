-- `fiskaly provision` then `fiskaly sale` and `fiskaly verify`, as an operator
-- would run them, against the sandbox.
local lu = require "luaunit"
local H = require "provision.helpers"
local json = require "fiskaly.json"

local SOURCE = os.getenv("FISKALY_SOURCE_DIR") or "."
local CASES = SOURCE .. "/spec/plugins/retail/cases/"

TestSaleCli = {}

function TestSaleCli:test_provision_sale_verify_recover()
  local h = H.start_sandbox()
  local dir = H.tmpdir()
  local env = { FISKALY_STORE = dir .. "/t.db", FISKALY_PLUGIN_PATH = SOURCE .. "/plugins" }
  local how, code, out = H.run_cli(h, { "provision", "--org-name", "CLI Shop", "--address", "Markt 1",
    "--zip", "04109", "--town", "Leipzig", "--serial", "KASSE-1", "--quiet" }, env, dir)
  lu.assertEquals({ how, code }, { "exit", 0 }, out)

  how, code, out = H.run_cli(h, { "sale", "--plugin", "retail", "--json", CASES .. "mixed_vat/sale.json" }, env, dir)
  lu.assertEquals({ how, code }, { "exit", 0 }, out)
  local res = assert(json.decode(out))
  lu.assertEquals(res.state, "FINISHED")
  lu.assertTrue(res.verified)
  lu.assertEquals(res.process_data, "Beleg^12.39_15.11_0.00_0.00_0.00^27.50:Unbar")

  how, code, out = H.run_cli(h, { "verify", "--qr", res.qr_code_data }, env, dir)
  lu.assertEquals({ how, code }, { "exit", 0 }, out)

  -- a sale that does not balance: refused with the amounts named, exit 1
  how, code, out = H.run_cli(h, { "sale", "--plugin", "retail", CASES .. "error_underpaid/sale.json" }, env, dir)
  lu.assertEquals({ how, code }, { "exit", 1 }, out)
  lu.assertStrContains(out, "but the sale total is")

  how, code, out = H.run_cli(h, { "sale", "--recover" }, env, dir)
  lu.assertEquals({ how, code }, { "exit", 0 }, out)
  lu.assertStrContains(out, "checked 0 open sales")

  how, code, out = H.run_cli(h, { "sale", "--sweep", "--min-age", "0" }, env, dir)
  lu.assertEquals({ how, code }, { "exit", 0 }, out)
  lu.assertStrContains(out, "0 ACTIVE transactions of this client")

  -- TSE gone: the sale still completes, exit 3, "TSE ausgefallen"
  h.stop()
  how, code, out = H.run_cli(h, { "sale", "--plugin", "retail", CASES .. "mixed_vat/sale.json" }, env, dir)
  lu.assertEquals({ how, code }, { "exit", 3 }, out)
  lu.assertStrContains(out, "TSE ausgefallen")
  -- no secret of the store in any output
  lu.assertNotStrContains(out, h.api_secret)
  H.rmdir(dir)
end

function TestSaleCli:test_usage_errors()
  local h = { base_url = "http://127.0.0.1:9", api_key = "k", api_secret = "s", organization_id = "o" }
  local how, code, out = H.run_cli(h, { "sale", "--plugin", "retail" }, { FISKALY_STORE = "/tmp/none.db" })
  lu.assertEquals({ how, code }, { "exit", 2 }, out)
  lu.assertStrContains(out, "no sale file given")
  how, code, out = H.run_cli(h, { "sale", "--help" }, {})
  lu.assertEquals({ how, code }, { "exit", 0 }, out)
  lu.assertStrContains(out, "TSE ausgefallen")
end

os.exit(lu.LuaUnit.run())
