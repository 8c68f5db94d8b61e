-- Property test: thousands of random sales (fixed seed) through the real
-- plugins. Every mapped receipt must validate against standard_v1, balance to
-- the cent (VAT buckets = payments - change = sale total), match an
-- independent per-rate oracle computed here, and yield a process_data string
-- consistent with the body. Deliberately unbalanced sales must be refused.
local lu = require "luaunit"
local receipt = require "fiskaly.receipt"
local json = require "fiskaly.json"

local RATES = { "NORMAL", "REDUCED_1", "SPECIAL_RATE_1", "SPECIAL_RATE_2", "NULL" }
local IDX = {}
for i, r in ipairs(RATES) do IDX[r] = i end

local engine = receipt.new { paths = { "plugins" } }
local random = math.random

-- independent helpers (not fiskaly.money)
local function fmt2(c)
  local s = c < 0 and "-" or ""
  c = math.abs(c)
  return s .. string.format("%d.%02d", c // 100, c % 100)
end
local function parse2(s)
  local neg, i, f = s:match("^(%-?)(%d+)%.(%d%d)$")
  assert(i, "bad amount " .. tostring(s))
  local v = tonumber(i) * 100 + tonumber(f)
  return neg == "-" and -v or v
end
local function round_div(n, d)            -- n/d half away from zero, d > 0
  local a = math.abs(n)
  local q, r = a // d, a % d
  if 2 * r >= d then q = q + 1 end
  return n < 0 and -q or q
end
local function price_edge(c)             -- the POS may send cents or a "0.00" string
  if random(2) == 1 then return c end
  return fmt2(c)
end

-- Checks a result against the oracle; returns nothing, asserts.
local function check_result(r, oracle_vat, total, ctx)
  local body = r.standard_v1.receipt
  local ok, err = receipt.validate(body)
  lu.assertTrue(ok, ctx .. ": " .. tostring(err))
  -- body amounts per rate == oracle, and sum == total
  local got, sum = {}, 0
  for _, e in ipairs(body.amounts_per_vat_rate) do
    got[e.vat_rate] = parse2(e.amount)
    sum = sum + got[e.vat_rate]
  end
  for _, rate in ipairs(RATES) do
    lu.assertEquals(got[rate] or 0, oracle_vat[rate] or 0, ctx .. " rate " .. rate)
  end
  lu.assertEquals(sum, total, ctx .. ": VAT sum")
  lu.assertEquals(r.totals.total, total, ctx)
  -- payments: EUR amounts plus the EUR value of foreign ones == total
  local paid = 0
  for i, e in ipairs(body.amounts_per_payment_type) do
    local t = r.totals.payments[i]
    lu.assertEquals(parse2(e.amount), t.amount, ctx)
    lu.assertEquals(e.currency_code, t.currency_code, ctx)
    paid = paid + (e.currency_code == "EUR" and parse2(e.amount) or t.base_amount)
    lu.assertNotEquals(t.amount, 0, ctx .. ": zero payment bucket")
  end
  if #body.amounts_per_payment_type > 0 then lu.assertEquals(paid, total, ctx .. ": payments") end
  -- process_data: five gross totals in fixed order, then the payments
  local vt, rates, pays = r.process_data:match("^(%a+)%^([^%^]*)%^(.*)$")
  lu.assertEquals(vt, r.standard_v1.receipt.receipt_type == "RECEIPT" and "Beleg" or vt, ctx)
  local i, pd_sum = 0, 0
  for a in rates:gmatch("[^_]+") do
    i = i + 1
    lu.assertEquals(parse2(a), oracle_vat[RATES[i]] or 0, ctx .. " process_data rate " .. i)
    pd_sum = pd_sum + parse2(a)
  end
  lu.assertEquals(i, 5, ctx)
  lu.assertEquals(pd_sum, total, ctx)
  local n = 0
  for _ in pays:gmatch("[^_]+") do n = n + 1 end
  lu.assertEquals(n, #body.amounts_per_payment_type, ctx)
  lu.assertEquals(receipt.process_data(body), r.process_data, ctx)
  -- the JSON the library sends round-trips to the same body
  lu.assertEquals(json.decode(json.encode(r.standard_v1)).receipt, body, ctx)
end

-- Random payments for `total` cents (EUR); may overpay in cash (change).
local function make_payments(total)
  local pays = {}
  if total == 0 then return pays, 0 end
  if total < 0 then
    pays[1] = { method = random(2) == 1 and "cash" or "card", amount = price_edge(total) }
    return pays, 0
  end
  local left = total
  local n = random(1, 4)
  for k = 1, n - 1 do
    if left <= 1 then break end
    local part = random(1, left - 1)
    local m = ({ "card", "voucher", "cash", "fx" })[random(4)]
    if m == "fx" then
      -- a foreign-currency cash payment worth `part` EUR cents
      local cur = ({ "CHF", "USD", "GBP" })[random(3)]
      pays[#pays + 1] = { method = "cash", currency = cur, amount = fmt2(random(1, part * 2)),
        amount_eur = fmt2(part) }
    else
      pays[#pays + 1] = { method = m, amount = price_edge(part) }
    end
    left = left - part
    if k > 6 then break end
  end
  local change = 0
  if random(3) == 1 then
    change = random(0, 5000)
    pays[#pays + 1] = { method = "cash", amount = price_edge(left + change) }
  else
    pays[#pays + 1] = { method = ({ "cash", "card" })[random(2)], amount = price_edge(left) }
  end
  return pays, change
end

TestProperty = {}

function TestProperty.test_retail_random_sales()
  math.randomseed(42)
  local N, refused = 2500, 0
  for s = 1, N do
    local items, oracle, goods, total = {}, {}, {}, 0
    local gtotal = 0
    for _ = 1, random(1, 12) do
      local rate = RATES[random(#RATES)]
      local unit = random(1, 50000)
      local qty_milli, qty
      if random(4) == 1 then
        qty_milli = random(1, 5000)
        qty = string.format("%d.%03d", qty_milli // 1000, qty_milli % 1000)
      else
        qty = random(1, 10); qty_milli = qty * 1000
      end
      local line = round_div(unit * qty_milli, 1000)
      local kind = ({ "goods", "goods", "goods", "goods", "deposit", "deposit_return", "voucher" })[random(7)]
      local item = { name = "x", qty = qty, unit_price = price_edge(unit), vat = rate, kind = kind }
      if kind == "goods" and random(5) == 1 and line > 1 then
        local d = random(1, line - 1)
        item.discount = price_edge(d)
        line = line - d
      end
      if kind == "goods" then
        goods[rate] = (goods[rate] or 0) + line
        gtotal = gtotal + line
      elseif kind == "deposit_return" then
        line = -line
      elseif kind == "voucher" then
        rate = "NULL"
      end
      oracle[rate] = (oracle[rate] or 0) + line
      total = total + line
      items[#items + 1] = item
    end
    local discounts, cut = {}, 0
    if gtotal > 0 and random(3) == 1 then
      if random(2) == 1 then
        local pct = random(1, 50)
        discounts[1] = { percent = tostring(pct) }
        cut = round_div(gtotal * pct * 100, 10000)
      else
        cut = random(1, gtotal)
        discounts[1] = { amount = fmt2(cut) }
      end
    end
    total = total - cut
    local sale = { items = items, discounts = discounts }
    local pays, change = make_payments(total)
    -- (with cash overpaid the plugin derives the change, so only exact payments can be short)
    local underpay = random(10) == 1 and total > 0 and change == 0
    sale.payments = pays
    if underpay then
      -- take one cent away from the last payment: must be refused
      local last = pays[#pays]
      local c = type(last.amount) == "string" and parse2(last.amount) or last.amount
      last.amount = fmt2(c - 1)
    end
    local ctx = "sale " .. s
    local r, err = engine:map("retail", sale)
    if underpay then
      lu.assertNil(r, ctx .. ": underpaid sale accepted")
      lu.assertEquals(err.kind, "validation", ctx)
      lu.assertStrContains(tostring(err), "but the sale total is " .. fmt2(total))
      refused = refused + 1
    else
      lu.assertNotNil(r, ctx .. ": " .. tostring(err))
      -- discount shares: each rate within one cent of its exact share, sum == cut
      local shares = 0
      for _, rate in ipairs(RATES) do
        local got = 0
        for _, e in ipairs(r.standard_v1.receipt.amounts_per_vat_rate) do
          if e.vat_rate == rate then got = parse2(e.amount) end
        end
        local share = (oracle[rate] or 0) - got
        if cut > 0 then
          local exact = cut * (goods[rate] or 0) / gtotal
          lu.assertTrue(math.abs(share - exact) < 1, ctx .. " share " .. rate)
        end
        shares = shares + share
        oracle[rate] = got
      end
      lu.assertEquals(shares, cut, ctx .. ": every cent of the discount allocated")
      check_result(r, oracle, total, ctx)
      lu.assertEquals(r.totals.change, change, ctx)
    end
  end
  lu.assertTrue(refused > 100, "refused " .. refused)
end

function TestProperty.test_restaurant_random_sales()
  math.randomseed(4242)
  local modes = { "null_rate", "exclude", "employer" }
  for s = 1, 800 do
    local conf = { tip_mode = modes[random(3)] }
    local items, oracle, bill = {}, {}, 0
    local sale_takeaway = random(3) == 1
    for _ = 1, random(1, 8) do
      local cat = random(2) == 1 and "food" or "drink"
      local unit, qty = random(50, 4000), random(1, 4)
      local item = { category = cat, unit_price = price_edge(unit), qty = qty }
      local takeaway = sale_takeaway
      if random(4) == 1 then takeaway = not takeaway; item.takeaway = takeaway end
      local rate = cat == "drink" and "NORMAL" or (takeaway and "REDUCED_1" or "NORMAL")
      oracle[rate] = (oracle[rate] or 0) + unit * qty
      bill = bill + unit * qty
      items[#items + 1] = item
    end
    local tip = random(2) == 1 and random(1, 1000) or 0
    local total = bill
    if tip > 0 and conf.tip_mode == "null_rate" then
      oracle.NULL = tip; total = bill + tip
    elseif tip > 0 and conf.tip_mode == "employer" then
      total = bill + tip
      -- oracle: largest remainder by hand for the (at most two) rates
      local rates = {}
      for _, r in ipairs(RATES) do if (oracle[r] or 0) > 0 then rates[#rates + 1] = r end end
      local given, rem, w = 0, {}, {}
      for _, r in ipairs(rates) do
        w[r] = oracle[r]
        local q = tip * oracle[r] // bill
        rem[r] = tip * oracle[r] % bill
        given = given + q
        oracle[r] = oracle[r] + q
      end
      if given < tip then
        local best = rates[1]
        for _, r in ipairs(rates) do
          if rem[r] > rem[best] or (rem[r] == rem[best] and w[r] > w[best]) then best = r end
        end
        oracle[best] = oracle[best] + 1
      end
    end
    local sale = { items = items, takeaway = sale_takeaway or nil }
    local pays, change
    if tip > 0 then
      -- the tip rides on the card; the rest may be split with cash and change
      pays, change = make_payments(bill)
      for i = #pays, 1, -1 do if pays[i].method == "voucher" or pays[i].currency then table.remove(pays, i) end end
      local rest = bill
      for _, p in ipairs(pays) do
        rest = rest - (type(p.amount) == "string" and parse2(p.amount) or p.amount)
      end
      pays[#pays + 1] = { method = "card", amount = fmt2(tip + math.max(rest, 0)) }
      change = math.max(-rest, 0)
      sale.tip = fmt2(tip)
    else
      pays, change = make_payments(bill)
      for i = #pays, 1, -1 do
        if pays[i].method == "voucher" or pays[i].currency then pays[i] = { method = "card", amount = pays[i].amount_eur or pays[i].amount } end
      end
    end
    sale.payments = pays
    local ctx = "restaurant sale " .. s .. " (" .. conf.tip_mode .. ")"
    local r, err = engine:map("restaurant", sale, conf)
    lu.assertNotNil(r, ctx .. ": " .. tostring(err))
    if conf.tip_mode == "exclude" then total = bill end
    check_result(r, oracle, total, ctx)
    lu.assertEquals(r.totals.change, change, ctx)
  end
end

-- Random drafts, valid or not, straight from a handler: the engine never
-- raises, and whatever it accepts validates and balances.
function TestProperty.test_engine_on_random_drafts()
  math.randomseed(7)
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir .. "/echo"))
  local f = assert(io.open(dir .. "/echo/handler.lua", "w"))
  f:write('return { VERSION = "1.0.0", map = function(sale) return sale.draft end }')
  f:close()
  f = assert(io.open(dir .. "/echo/schema.lua", "w"))
  f:write("return {}")
  f:close()
  local e = receipt.new { paths = { dir } }
  local TYPES = { "RECEIPT", "TRAINING", "CANCELLATION", "ANNULATION", "INVOICE", "SALE" }
  local function cents()
    local k = random(10)
    if k == 1 then return random(-100000, 100000) + 0.5 end   -- a float: refused
    if k == 2 then return "1.00" end                           -- a string: refused
    return random(-100000, 100000)
  end
  local accepted, refused = 0, 0
  for s = 1, 3000 do
    local vat, total = {}, 0
    for _ = 1, random(0, 4) do
      local rate = random(12) == 1 and "19" or RATES[random(#RATES)]
      local v = random(-50000, 50000)
      vat[rate] = v
      if type(total) == "number" then total = total + v end
    end
    if random(4) == 1 then total = cents() end
    local payments, paid = {}, 0
    local n = random(0, 3)
    for i = 1, n do
      local a = i < n and random(-30000, 30000) or (total - paid)
      if type(a) ~= "number" or math.type(a) ~= "integer" then a = 0 end
      local p = { type = random(8) == 1 and "CARD" or (random(2) == 1 and "CASH" or "NON_CASH"), amount = a }
      if random(6) == 1 then p.currency = "CHF"; p.base_amount = a; p.amount = random(1, 99999) end
      if random(15) == 1 then p.amount = cents() end
      payments[#payments + 1] = p
      paid = paid + a
    end
    local draft = { receipt_type = TYPES[random(#TYPES)], total = total, vat = vat, payments = payments }
    if random(5) == 1 then draft.change = random(0, 2000) end
    if random(20) == 1 then draft.extra = true end
    local ok, r, err = pcall(e.map, e, "echo", { draft = draft })
    lu.assertTrue(ok, "sale " .. s .. ": engine raised: " .. tostring(r))
    if r then
      accepted = accepted + 1
      local body = r.standard_v1.receipt
      lu.assertTrue(receipt.validate(body))
      local sum = 0
      for _, x in ipairs(body.amounts_per_vat_rate) do sum = sum + parse2(x.amount) end
      lu.assertEquals(sum, r.totals.total)
      if #body.amounts_per_payment_type > 0 then
        local p = 0
        for _, t in ipairs(r.totals.payments) do p = p + t.base_amount end
        lu.assertEquals(p, r.totals.total, "sale " .. s)
      end
      lu.assertEquals(receipt.process_data(body), r.process_data)
    else
      refused = refused + 1
      lu.assertTrue(err.kind == "validation" or err.kind == "plugin")
      lu.assertTrue(#tostring(err) > 0)
    end
  end
  io.stderr:write(("random drafts: %d accepted, %d refused\n"):format(accepted, refused))
  lu.assertTrue(accepted > 300, "accepted " .. accepted)
  lu.assertTrue(refused > 300, "refused " .. refused)
  os.execute("rm -rf " .. dir)
end

os.exit(lu.LuaUnit.run())
