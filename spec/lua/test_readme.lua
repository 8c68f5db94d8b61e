-- The README's Lua example runs as written (paths swapped for a test store
-- provisioned on the sandbox and the repository's plugins).
local lu = require "luaunit"
local H = require "provision.helpers"
local provision = require "fiskaly.provision"
local store = require "fiskaly.store"

local SOURCE = os.getenv("FISKALY_SOURCE_DIR") or "."

local function readme_block(marker)
  local text = assert(H.read_file(SOURCE .. "/README.md"))
  local at = assert(text:find(marker, 1, true), "README has no " .. marker)
  return assert(text:match("```lua\n(.-)```", at))
end

TestReadme = {}

function TestReadme:test_till_example()
  local h = H.start_sandbox()
  local dir = H.tmpdir()
  local st = assert(store.open{ path = dir .. "/pos.db" })
  assert(provision.run{ store = st, client = H.hub_client(h), config = {
    organization_id = h.organization_id, serial_number = "README-1",
    organization = { name = "README Shop", address_line1 = "Weg 1", zip = "20095", town = "Hamburg",
      country_code = "DEU" } } })
  st:close()
  local code = readme_block("A till that is already provisioned")
  code = code:gsub('"/var/lib/pos/fiskaly.db"', string.format("%q", dir .. "/pos.db"))
  code = code:gsub('"/etc/pos/fiskaly%-plugins"', string.format("%q", SOURCE .. "/plugins"))
  code = code:gsub('os.getenv%("FISKALY_BASE_URL"%)', string.format("%q", h.base_url))
  local printed = {}
  local env = setmetatable({ print = function(...) printed[#printed + 1] = table.concat({ ... }, "\t") end },
    { __index = _G })
  local chunk = assert(load(code, "=README", "t", env))
  chunk()
  lu.assertEquals(#printed, 1)
  lu.assertStrMatches(printed[1], "V0;README%-1;Kassenbeleg%-V1;Beleg^2%.49_2%.38_0%.00_0%.00_0%.00^4%.87:Bar;.*")  -- 5.00 cash given, 0.13 change
  h.stop()
  H.rmdir(dir)
end

os.exit(lu.LuaUnit.run())
