--[[ bakery: product groups, eat-in vs take-away, day-old discount.

Sale input: the POS sale format of docs/plugins.md; each item names its
product `group` (a key of conf.groups) instead of a VAT rate, and may be
flagged `day_old`. sale.eat_in = true when the customer eats in the cafe
corner (then each group's eat_in rate applies: eating on the premises with
seating is a restaurant service, so pastries become 19 % while bread stays 7 %
by default).

Day-old goods: conf.day_old_percent off each flagged line of a group listed in
conf.day_old_groups, rounded half away from zero per line (the shelf label
shows the per-line price, so the discount is not spread across lines).
Payments: cash or card; change is given in cash (sale.change, or tendered
minus total).
]]
local Handler = { VERSION = "1.0.0" }

-- cents from integer cents or a "0.00" string; `what` (a format, with `i`)
-- names the field in the error, built only when there is one
local function amount(m, v, what, i)
  local c, err = m.coerce(v)
  if not c then error(what:format(i) .. ": " .. err, 0) end
  return c
end

function Handler.map(sale, conf, api)
  local m = api.money
  local vat, order = {}, {}
  local function add(rate, cents)
    if vat[rate] == nil then vat[rate] = 0; order[#order + 1] = rate end
    vat[rate] = vat[rate] + cents
  end
  local day_old = {}
  for _, g in ipairs(conf.day_old_groups) do day_old[g] = true end

  for i, item in ipairs(sale.items or {}) do
    local g = conf.groups[item.group]
    if not g then error(("items[%d].group: unknown group %q"):format(i, tostring(item.group)), 0) end
    local qty = m.parse_qty(item.qty == nil and 1 or item.qty)
    if not qty then error(("items[%d].qty: invalid quantity"):format(i), 0) end
    local line = m.times(amount(m, item.unit_price, "items[%d].unit_price", i), qty)
    if item.day_old and day_old[item.group] and conf.day_old_percent > 0 then
      line = line - m.percent(line, conf.day_old_percent * 100)
    end
    add(sale.eat_in and g.eat_in or g.takeaway, line)
  end

  local total = 0
  for _, r in ipairs(order) do total = m.add(total, vat[r]) end

  local payments, tendered = {}, 0
  for i, p in ipairs(sale.payments or {}) do
    local ptype = conf.payment_methods[p.method]
    if not ptype then error(("payments[%d].method: unknown method %q"):format(i, tostring(p.method)), 0) end
    local a = amount(m, p.amount, "payments[%d].amount", i)
    tendered = tendered + a
    payments[#payments + 1] = { type = ptype, amount = a }
  end
  local change = sale.change ~= nil and amount(m, sale.change, "change")
    or (tendered > total and tendered - total or 0)

  return { receipt_type = "RECEIPT", total = total, vat = vat, payments = payments, change = change }
end

return Handler
