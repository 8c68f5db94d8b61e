--[[ restaurant: food in-house vs take-away, drinks, tips.

Sale input: the POS sale format of docs/plugins.md, with per item a
`category` ("food", "drink" or a key of conf.category_vat) and `takeaway`
(true/false; default: sale.takeaway, else false).

VAT: food eaten on the premises is a restaurant service (conf.inhouse_food_vat,
19 % by default), food to take away is a supply of food (conf.takeaway_food_vat,
7 %), drinks are 19 % either way (conf.drink_vat).

Tips (sale.tip, paid on top of the bill with the payment named by
sale.tip_method, default "card"):
  * "null_rate" (default): a tip for the staff is not the business's turnover
    (it is not consideration for the meal), but it passes through the till and
    the card terminal, so the payments include it. Recording it at the NULL
    rate keeps VAT buckets = payments without putting VAT on it. This is what
    most German POS systems do ("Trinkgeld Arbeitnehmer").
  * "exclude": the tip is kept off the fiscal record entirely; the plugin takes
    it out of the payment that carried it, so only the bill is signed.
  * "employer": the business keeps the tip; then it is additional consideration
    for the meal and follows the bill's rates, split by largest remainder.
Change is given in EUR cash (sale.change, or tendered minus total).
]]
local Handler = { VERSION = "1.0.0" }

local TYPES = { sale = "RECEIPT", void = "CANCELLATION", training = "TRAINING" }

-- cents from integer cents or a "0.00" string; `what` (a format, with `i`)
-- names the field in the error, built only when there is one
local function amount(m, v, what, i)
  local c, err = m.coerce(v)
  if not c then error(what:format(i) .. ": " .. err, 0) end
  return c
end

function Handler.map(sale, conf, api)
  local m = api.money
  local receipt_type = TYPES[sale.type or "sale"]
  if not receipt_type then error("unknown sale type " .. tostring(sale.type), 0) end

  local vat, order = {}, {}
  local function add(rate, cents)
    if vat[rate] == nil then vat[rate] = 0; order[#order + 1] = rate end
    vat[rate] = m.add(vat[rate], cents)
  end

  for i, item in ipairs(sale.items or {}) do
    local qty = m.parse_qty(item.qty == nil and 1 or item.qty)
    if not qty then error(("items[%d].qty: invalid quantity"):format(i), 0) end
    local line = m.times(amount(m, item.unit_price, "items[%d].unit_price", i), qty)
    if item.discount ~= nil then line = line - amount(m, item.discount, "items[%d].discount", i) end
    local takeaway = item.takeaway
    if takeaway == nil then takeaway = sale.takeaway == true end
    local cat = item.category or "food"
    local rate
    if cat == "food" then
      rate = takeaway and conf.takeaway_food_vat or conf.inhouse_food_vat
    elseif cat == "drink" then
      rate = conf.drink_vat
    else
      rate = conf.category_vat[cat]
      if not rate then error(("items[%d].category: unknown category %q"):format(i, tostring(cat)), 0) end
    end
    add(rate, line)
  end

  local bill = 0
  for _, r in ipairs(order) do bill = m.add(bill, vat[r]) end

  local tip = sale.tip ~= nil and amount(m, sale.tip, "tip") or 0
  if tip < 0 then error("tip must not be negative", 0) end
  local tip_method = sale.tip_method or "card"
  if receipt_type == "CANCELLATION" then tip = 0 end

  local total = bill
  if tip > 0 then
    if conf.tip_mode == "null_rate" then
      add("NULL", tip)
      total = total + tip
    elseif conf.tip_mode == "employer" then
      local rates, weights = {}, {}
      for _, r in ipairs(order) do
        if vat[r] > 0 then rates[#rates + 1] = r; weights[#weights + 1] = vat[r] end
      end
      if #rates == 0 then error("an employer tip needs a bill to follow", 0) end
      local shares = m.allocate(tip, weights)
      for j, r in ipairs(rates) do add(r, shares[j]) end
      total = total + tip
    end
  end

  local payments, tendered, tip_left = {}, 0, tip
  if receipt_type ~= "CANCELLATION" then
    for i, p in ipairs(sale.payments or {}) do
      local ptype = conf.payment_methods[p.method]
      if not ptype then error(("payments[%d].method: unknown method %q"):format(i, tostring(p.method)), 0) end
      local a = amount(m, p.amount, "payments[%d].amount", i)
      if conf.tip_mode == "exclude" and tip_left > 0 and p.method == tip_method then
        local cut = tip_left < a and tip_left or a
        a = a - cut
        tip_left = tip_left - cut
      end
      tendered = tendered + a
      payments[#payments + 1] = { type = ptype, amount = a }
    end
    if conf.tip_mode == "exclude" and tip_left > 0 then
      error(("tip %s is larger than the %s payments"):format(m.format(tip), tip_method), 0)
    end
  end

  local change = 0
  if sale.change ~= nil then
    change = amount(m, sale.change, "change")
  elseif tendered > total then
    change = tendered - total
  end

  local out = {}
  for _, r in ipairs(order) do out[r] = vat[r] end
  return { receipt_type = receipt_type, total = total, vat = out, payments = payments, change = change }
end

return Handler
