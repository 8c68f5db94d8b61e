-- Runs every ```lua block of docs/client.md, in order, as one script against a
-- fresh sandbox (the first block starts it, the last stops it), so the
-- documentation's examples cannot drift from the code.
local lu = require "luaunit"

local function doc_chunk()
  local dir = os.getenv("FISKALY_SOURCE_DIR") or "."
  local f = assert(io.open(dir .. "/docs/client.md", "r"))
  local text = f:read("a")
  f:close()
  local blocks = {}
  for code in text:gmatch("```lua\n(.-)```") do blocks[#blocks + 1] = code end
  return blocks
end

TestClientDocs = {}

function TestClientDocs.test_examples_run()
  local blocks = doc_chunk()
  lu.assertTrue(#blocks >= 5, "docs/client.md has its examples")
  local printed = {}
  local env = setmetatable({
    print = function(...)
      local t = table.pack(...)
      for i = 1, t.n do t[i] = tostring(t[i]) end
      printed[#printed + 1] = table.concat(t, "\t")
    end,
  }, { __index = _G })
  local fn = assert(load(table.concat(blocks, "\n"), "=docs/client.md", "t", env))
  fn()
  local out = table.concat(printed, "\n")
  -- the outputs the page shows in comments
  lu.assertStrContains(out, "V0;POS 001;Kassenbeleg-V1;Beleg^10.00_0.00_0.00_0.00_0.00^10.00:Bar;")
  lu.assertStrContains(out, 'amounts_per_vat_rate[0].amount: "10.0" is not a valid amount')
  lu.assertStrContains(out, "fiskaly api error 401 E_UNAUTHORIZED: wrong admin_pin")
  lu.assertStrContains(out, "fiskaly api error 401: Invalid credentials (check the API key and secret) (POST /auth, request-id ")
end

os.exit(lu.LuaUnit.run())
