--[[ retail: a shop till with mixed VAT.

Sale input: the POS sale format of docs/plugins.md. What this plugin does:

* Items: line gross = unit_price x qty (qty may have up to 3 decimals, rounded
  half away from zero to the cent) minus the line's own `discount`. The rate is
  the item's `vat` (a rate name, a deprecated percentage like "7", or one of
  the POS codes in conf.vat_codes), else conf.default_vat.
* kind = "deposit": Pfand charged with a beverage. A deposit is part of the
  consideration for the drink, so it takes the item's (the drink's) rate.
  kind = "deposit_return": empties taken back; the same rate, negative amount.
  Deposits are never discounted.
* kind = "voucher": selling a multi-purpose voucher (Mehrzweck-Gutschein,
  UStG 3 (15)) is not a taxable supply: its amount goes to the NULL rate.
  Redeeming one is a payment (method "voucher", NON_CASH by default); the
  goods bought with it carry their normal rates. Vouchers are not discounted.
* Receipt-level discounts ({percent = "10"} or {amount = "2.00"}) are spread
  over the VAT rates in proportion to the discountable goods per rate, by
  largest remainder, so every cent lands in exactly one rate.
* Payments: method -> CASH/NON_CASH via conf.payment_methods. A foreign
  currency payment carries `currency` and `amount_eur` (the EUR value the till
  credited); process_data shows it as "<amount>:Bar:CHF". Change is given in
  EUR cash: `change` in the sale, or else tendered minus total when positive.
* sale.type: "sale" -> RECEIPT; "refund" -> RECEIPT with the returned items as
  negative quantities and the money paid back as negative payments;
  "annulation" (Storno of an earlier receipt, sent as that receipt's items and
  payments) -> ANNULATION with every amount negated; "void" (receipt aborted
  before payment) -> CANCELLATION without payments; "training" -> TRAINING.
]]
local Handler = { VERSION = "1.0.0" }

local TYPES = { sale = "RECEIPT", refund = "RECEIPT", annulation = "ANNULATION",
  void = "CANCELLATION", training = "TRAINING" }

-- cents from integer cents or a "0.00" string; `what` (a format, with `i`)
-- names the field in the error, built only when there is one
local function amount(m, v, what, i)
  local c, err = m.coerce(v)
  if not c then error(what:format(i) .. ": " .. err, 0) end
  return c
end

local function rate_of(api, conf, item, i)
  local key = item.vat
  if key == nil then return conf.default_vat end
  if conf.vat_codes[key] then return conf.vat_codes[key] end
  local r, err = api.vat_rate(key)
  if not r then error(("items[%d].vat: %s"):format(i, err), 0) end
  return r
end

-- "10" / "12.5" / "12.50" percent -> basis points
local function basis_points(p)
  if math.type(p) == "integer" then return p * 100 end
  if type(p) == "string" then
    local int, frac = p:match("^(%d+)%.?(%d?%d?)$")
    if int and #int <= 3 then return tonumber(int) * 100 + tonumber((frac .. "00"):sub(1, 2)) end
  end
  error("discount percent must be an integer or a string with up to 2 decimals", 0)
end

function Handler.map(sale, conf, api)
  local m = api.money
  local kind = sale.type or "sale"
  local receipt_type = TYPES[kind]
  if not receipt_type then error("unknown sale type " .. tostring(kind), 0) end
  local items = sale.items or {}
  if #items > conf.max_items then error("too many items", 0) end
  if sale.currency ~= nil and sale.currency ~= "EUR" then
    error("prices must be in EUR (sale.currency)", 0)
  end

  local vat, order = {}, {}            -- rate -> cents; rates in first-seen order
  local goods, goods_total = {}, 0     -- discountable goods per rate
  local function add(rate, cents)
    if vat[rate] == nil then vat[rate] = 0; order[#order + 1] = rate end
    vat[rate] = m.add(vat[rate], cents)
  end

  for i, item in ipairs(items) do
    local qty = m.parse_qty(item.qty == nil and 1 or item.qty)
    if not qty then error(("items[%d].qty: invalid quantity"):format(i), 0) end
    local line = m.times(amount(m, item.unit_price, "items[%d].unit_price", i), qty)
    if item.discount ~= nil then
      line = line - amount(m, item.discount, "items[%d].discount", i)
    end
    local k = item.kind or "goods"
    if k == "goods" then
      local rate = rate_of(api, conf, item, i)
      add(rate, line)
      goods[rate] = (goods[rate] or 0) + line
      goods_total = goods_total + line
    elseif k == "deposit" then
      add(rate_of(api, conf, item, i), line)
    elseif k == "deposit_return" then
      add(rate_of(api, conf, item, i), -line)
    elseif k == "voucher" then
      add("NULL", line)
    else
      error(("items[%d].kind: unknown kind %q"):format(i, tostring(k)), 0)
    end
  end

  -- receipt-level discounts, spread over the rates of the discountable goods
  for i, d in ipairs(sale.discounts or {}) do
    local cut
    if d.percent ~= nil then
      local bp = basis_points(d.percent)
      if bp > conf.max_discount_percent * 100 then
        error(("discounts[%d]: %s%% exceeds the configured maximum"):format(i, tostring(d.percent)), 0)
      end
      cut = m.percent(goods_total, bp)
    else
      cut = amount(m, d.amount, "discounts[%d].amount", i)
    end
    if cut ~= 0 then
      local rates, weights = {}, {}
      for _, r in ipairs(order) do
        if (goods[r] or 0) ~= 0 then rates[#rates + 1] = r; weights[#weights + 1] = goods[r] end
      end
      if #rates == 0 then error(("discounts[%d]: nothing to discount"):format(i), 0) end
      local shares = m.allocate(cut, weights)
      for j, r in ipairs(rates) do
        add(r, -shares[j])
        goods[r] = goods[r] - shares[j]
      end
      goods_total = goods_total - cut
    end
  end

  local total = 0
  for _, r in ipairs(order) do total = m.add(total, vat[r]) end

  local sign = receipt_type == "ANNULATION" and -1 or 1
  local payments, tendered = {}, 0
  if receipt_type ~= "CANCELLATION" then
    for i, p in ipairs(sale.payments or {}) do
      local ptype = conf.payment_methods[p.method]
      if not ptype then error(("payments[%d].method: unknown method %q"):format(i, tostring(p.method)), 0) end
      local a = amount(m, p.amount, "payments[%d].amount", i)
      local cur = p.currency or "EUR"
      local base = a
      if cur ~= "EUR" then
        base = amount(m, p.amount_eur, "payments[%d].amount_eur", i)
      end
      tendered = tendered + base
      payments[#payments + 1] = { type = ptype, amount = sign * a, currency = cur,
        base_amount = cur ~= "EUR" and sign * base or nil }
    end
  end

  local change = 0
  if sale.change ~= nil then
    change = amount(m, sale.change, "change")
  elseif receipt_type ~= "CANCELLATION" and tendered > total and total >= 0 then
    change = tendered - total
  end
  if receipt_type == "ANNULATION" and change ~= 0 then
    -- the original's change was paid out; in the Storno it comes back
    payments[#payments + 1] = { type = "CASH", amount = change }
    change = 0
  end

  local out = {}
  for _, r in ipairs(order) do out[r] = sign * vat[r] end
  return {
    receipt_type = receipt_type,
    total = sign * total,
    vat = out,
    payments = payments,
    change = change,
  }
end

return Handler
