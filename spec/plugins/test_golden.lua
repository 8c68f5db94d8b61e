-- Golden cases: spec/plugins/<plugin>/cases/<case>/{sale.json, conf.json?, receipt.json}.
-- receipt.json holds the hand-calculated standard_v1 body and process_data
-- (with a note showing the arithmetic), or {"error": "<exact message>"}.
local lu = require "luaunit"
local receipt = require "fiskaly.receipt"
local json = require "fiskaly.json"

local files = require "helpers.files"
local read, ls = files.read, files.ls

local engine = receipt.new { paths = { "plugins" } }

TestGolden = {}

local count, per_plugin = 0, {}
for _, plugin in ipairs(ls("spec/plugins")) do
  for _, case in ipairs(ls("spec/plugins/" .. plugin .. "/cases")) do
    local dir = ("spec/plugins/%s/cases/%s/"):format(plugin, case)
    local sale = assert(json.decode(assert(read(dir .. "sale.json"), dir .. "sale.json")))
    local expected = assert(json.decode(assert(read(dir .. "receipt.json"), dir .. "receipt.json")))
    local conf_text = read(dir .. "conf.json")
    local conf = conf_text and assert(json.decode(conf_text)) or nil
    count = count + 1
    per_plugin[plugin] = (per_plugin[plugin] or 0) + 1
    TestGolden["test_" .. plugin .. "_" .. case] = function()
      local r, err = engine:map(plugin, sale, conf)
      if expected.error then
        lu.assertNil(r, "expected an error")
        lu.assertEquals(tostring(err), expected.error)
        return
      end
      lu.assertNotNil(r, tostring(err))
      lu.assertEquals(r.standard_v1.receipt, expected.receipt)
      lu.assertEquals(r.process_data, expected.process_data)
      lu.assertEquals(r.process_type, "Kassenbeleg-V1")
      -- the body encodes with [] for empty arrays and validates on its own
      local body = json.encode(r.standard_v1)
      lu.assertStrContains(body, '"amounts_per_vat_rate":[')
      lu.assertStrContains(body, '"amounts_per_payment_type":[')
      lu.assertTrue(receipt.validate(json.decode(body).receipt))
      lu.assertEquals(receipt.process_data(json.decode(body).receipt), expected.process_data)
      -- totals in cents agree with the body
      local vat_sum = 0
      for _, v in pairs(r.totals.vat) do vat_sum = vat_sum + v end
      lu.assertEquals(vat_sum, r.totals.total)
    end
  end
end

function TestGolden.test_every_plugin_has_cases()
  for _, name in ipairs(ls("plugins")) do
    lu.assertTrue((per_plugin[name] or 0) >= 5, "plugin " .. name .. " needs golden cases")
  end
  lu.assertTrue(count >= 30, "golden cases: " .. count)
end

os.exit(lu.LuaUnit.run())
