-- fiskaly.money: parsing, formatting and largest-remainder allocation in cents.
local lu = require "luaunit"
local money = require "fiskaly.money"

TestMoneyParse = {}

function TestMoneyParse.test_valid()
  lu.assertEquals(money.parse("10.00"), 1000)
  lu.assertEquals(money.parse("0.01"), 1)
  lu.assertEquals(money.parse("-0.05"), -5)
  lu.assertEquals(money.parse("007.50"), 750)
  lu.assertEquals(money.parse("0.00"), 0)
  lu.assertEquals(money.parse("-0.00"), 0)
  lu.assertEquals(math.type(money.parse("12.34")), "integer")
end

function TestMoneyParse.test_limits()
  lu.assertEquals(money.parse("90071992547409.92"), 9007199254740992)     -- 2^53 cents
  lu.assertEquals(money.parse("-90071992547409.92"), -9007199254740992)
  local v, err = money.parse("90071992547409.93")
  lu.assertNil(v)
  lu.assertEquals(err, 'invalid amount "90071992547409.93": exceeds 2^53 minor units')
  lu.assertNil((money.parse("123456789012345678.00")))
end

function TestMoneyParse.test_rejects()
  for _, s in ipairs { "10", "10.0", "10.000", "1e3", "1E3", "+1.00", " 1.00", "1.00 ", "1,00", ".50",
      "1.", "-", "", "0x10.00", "1.0e1", "١.00", "10.00\n" } do
    local v, err = money.parse(s)
    lu.assertNil(v, s)
    lu.assertStrContains(err, "invalid amount", false)
  end
  local v, err = money.parse("10.0")
  lu.assertNil(v)
  lu.assertEquals(err, 'invalid amount "10.0": expected digits with exactly 2 decimals, like "10.00"')
  v, err = money.parse(10.5)
  lu.assertNil(v)
  lu.assertEquals(err, 'expected a decimal string like "10.00", got number')
end

function TestMoneyParse.test_coerce()
  lu.assertEquals(money.coerce(199), 199)
  lu.assertEquals(money.coerce("1.99"), 199)
  local v, err = money.coerce(1.99)
  lu.assertNil(v)
  lu.assertEquals(err, 'invalid amount 1.99: floats are not accepted, send integer cents or a "0.00" string')
  v, err = money.coerce(true)
  lu.assertNil(v)
  lu.assertEquals(err, 'invalid amount: expected integer cents or a "0.00" string, got boolean')
  lu.assertNil((money.coerce(money.MAX + 1)))
end

TestMoneyFormat = {}

function TestMoneyFormat.test_format()
  lu.assertEquals(money.format(1000), "10.00")
  lu.assertEquals(money.format(0), "0.00")
  lu.assertEquals(money.format(5), "0.05")
  lu.assertEquals(money.format(-5), "-0.05")
  lu.assertEquals(money.format(-1234), "-12.34")
  lu.assertEquals(money.format(9007199254740992), "90071992547409.92")
  lu.assertEquals(money.format(-9007199254740992), "-90071992547409.92")
end

function TestMoneyFormat.test_misuse_raises()
  lu.assertErrorMsgContains("must be an integer number of cents, got float", money.format, 10.0)
  lu.assertErrorMsgContains("must be an integer number of cents, got string", money.format, "10")
  lu.assertErrorMsgContains("exceeds 2^53", money.format, money.MAX + 1)
end

function TestMoneyFormat.test_roundtrip()
  math.randomseed(42)
  for _ = 1, 5000 do
    local v = math.random(-money.MAX, money.MAX)
    lu.assertEquals(money.parse(money.format(v)), v)
  end
end

TestMoneyAllocate = {}

local function sum(t) local s = 0 for _, v in ipairs(t) do s = s + v end return s end

function TestMoneyAllocate.test_examples()
  lu.assertEquals(money.allocate(100, { 1, 1, 1 }), { 34, 33, 33 })        -- tie: lowest index
  lu.assertEquals(money.allocate(-100, { 1, 1, 1 }), { -34, -33, -33 })
  lu.assertEquals(money.allocate(54, { 238, 299 }), { 24, 30 })             -- 23.93 / 30.07
  lu.assertEquals(money.allocate(5, { 100, 0, 100 }), { 3, 0, 2 })
  lu.assertEquals(money.allocate(0, { 3, 4 }), { 0, 0 })
  lu.assertEquals(money.allocate(10, { -3, -7 }), { 3, 7 })
  -- equal remainders: the larger weight wins before the index
  lu.assertEquals(money.allocate(1, { 1, 3 }), { 0, 1 })
end

function TestMoneyAllocate.test_large_values_exact()
  -- products far beyond 2^63 (2^53 * 2^52) are computed exactly
  local r = money.allocate(money.MAX, { money.MAX // 2, money.MAX // 2 })
  lu.assertEquals(r, { money.MAX // 2, money.MAX // 2 })
  r = money.allocate(money.MAX - 1, { 1, 2, money.MAX // 4 })
  lu.assertEquals(sum(r), money.MAX - 1)
end

function TestMoneyAllocate.test_property_every_cent_accounted()
  math.randomseed(42)
  for _ = 1, 3000 do
    local n = math.random(1, 6)
    local w, W = {}, 0
    for i = 1, n do w[i] = math.random(0, 100000); W = W + w[i] end
    if W == 0 then w[1] = 1; W = 1 end
    local total = math.random(-1000000, 1000000)
    local r = money.allocate(total, w)
    lu.assertEquals(sum(r), total)
    for i = 1, n do
      -- each share is within one cent of the exact proportional share
      local exact = total * w[i] / W
      lu.assertTrue(math.abs(r[i] - exact) < 1, string.format("share %d of %d: %d vs %f", i, total, r[i], exact))
      if w[i] == 0 then lu.assertEquals(r[i], 0) end
    end
  end
end

function TestMoneyAllocate.test_misuse()
  lu.assertErrorMsgContains("weights are all zero", money.allocate, 10, { 0, 0 })
  lu.assertErrorMsgContains("must not mix signs", money.allocate, 10, { 1, -1 })
  lu.assertErrorMsgContains("non-empty array", money.allocate, 10, {})
  lu.assertErrorMsgContains("got float", money.allocate, 10.5, { 1 })
end

TestMoneyArithmetic = {}

function TestMoneyArithmetic.test_percent_and_times()
  lu.assertEquals(money.percent(1999, 1500), 300)     -- 299.85 -> 300
  lu.assertEquals(money.percent(1999, 1000), 200)     -- 199.9  -> 200
  lu.assertEquals(money.percent(-1999, 1000), -200)   -- half away from zero, symmetric
  lu.assertEquals(money.percent(50, 1000), 5)
  lu.assertEquals(money.percent(5, 1000), 1)          -- 0.5 -> 1
  lu.assertEquals(money.times(199, 250), 50)          -- 0.250 kg x 1.99 = 0.4975
  lu.assertEquals(money.times(1290, 1500), 1935)
  lu.assertEquals(money.times(-199, 3000), -597)
end

function TestMoneyArithmetic.test_parse_qty()
  lu.assertEquals(money.parse_qty(2), 2000)
  lu.assertEquals(money.parse_qty("0.250"), 250)
  lu.assertEquals(money.parse_qty("1.5"), 1500)
  lu.assertEquals(money.parse_qty("-3"), -3000)
  lu.assertNil((money.parse_qty("0.2505")))
  lu.assertNil((money.parse_qty("1.")))
  lu.assertNil((money.parse_qty(1.5)))
  lu.assertNil((money.parse_qty("1e3")))
end

function TestMoneyArithmetic.test_add_overflow()
  lu.assertEquals(money.add(1, 2), 3)
  lu.assertErrorMsgContains("exceeds 2^53", money.add, money.MAX, 1)
  lu.assertEquals(money.sum { 1, 2, 3 }, 6)
end

os.exit(lu.LuaUnit.run())
