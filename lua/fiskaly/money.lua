-- fiskaly.money: money as integer minor units (cents). Parsing and formatting
-- happen only at the edges; everything in between is integer arithmetic.
-- Misuse (a float, a non-integer) raises; bad input text returns nil, err.
local math_type, tointeger = math.type, math.tointeger
local find, match, format, sub = string.find, string.match, string.format, string.sub
local type, tostring, error = type, tostring, error

local money = {}

-- Largest magnitude accepted anywhere: 2^53 cents, the range in which a JSON
-- number (a double) still represents every cent exactly.
money.MAX = 9007199254740992

local MAX = money.MAX

local function check_int(v, what)
  if math_type(v) ~= "integer" then
    error(format("fiskaly.money: %s must be an integer number of cents, got %s",
      what or "amount", math_type(v) or type(v)), 3)
  end
  if v > MAX or v < -MAX then
    error(format("fiskaly.money: %s %d exceeds 2^53", what or "amount", v), 3)
  end
  return v
end
money.check = function(v, what) return check_int(v, what) end

-- True when v is an integer number of cents within range.
function money.is_cents(v)
  return math_type(v) == "integer" and v <= MAX and v >= -MAX
end

-- Parses decimal text with exactly `decimals` (default 2) fraction digits:
-- "10.00" -> 1000, "-0.05" -> -5. Rejects "10", "10.0", "10.000", "1e3",
-- "+1.00", " 1.00", "1,00", and anything beyond 2^53 minor units.
function money.parse(s, decimals)
  decimals = decimals or 2
  if type(s) ~= "string" then
    return nil, format("expected a decimal string like \"10.00\", got %s", type(s))
  end
  local sign, int, frac = match(s, "^(%-?)(%d+)%.(%d+)$")
  if not int or #frac ~= decimals then
    return nil, format("invalid amount %q: expected digits with exactly %d decimals, like \"10.00\"",
      sub(s, 1, 40), decimals)
  end
  int = match(int, "^0*(%d-)$")          -- drop leading zeros ("007.50")
  local digits = int .. frac
  digits = match(digits, "^0*(%d-)$")
  if #digits > 16 then
    return nil, format("invalid amount %q: exceeds 2^53 minor units", sub(s, 1, 40))
  end
  local v = tointeger(tonumber(digits ~= "" and digits or "0"))
  if v > MAX then
    return nil, format("invalid amount %q: exceeds 2^53 minor units", sub(s, 1, 40))
  end
  if sign == "-" then v = -v end
  return v
end

-- Accepts either integer cents or a decimal string (the two forms a POS may send).
function money.coerce(v)
  if math_type(v) == "integer" then
    if v > MAX or v < -MAX then return nil, format("amount %d exceeds 2^53", v) end
    return v
  end
  if type(v) == "string" then return money.parse(v) end
  if math_type(v) == "float" then
    return nil, format("invalid amount %s: floats are not accepted, send integer cents or a \"0.00\" string",
      tostring(v))
  end
  return nil, format("invalid amount: expected integer cents or a \"0.00\" string, got %s", type(v))
end

-- 1000 -> "10.00", -5 -> "-0.05", 0 -> "0.00".
function money.format(v)
  check_int(v)
  local neg = v < 0
  if neg then v = -v end
  local s = format("%d.%02d", v // 100, v % 100)
  if neg then s = "-" .. s end
  return s
end

-- Checked addition: raises when the result leaves the 2^53 range.
function money.add(a, b)
  check_int(a, "a"); check_int(b, "b")
  local r = a + b
  if r > MAX or r < -MAX then error(format("fiskaly.money: sum %d + %d exceeds 2^53", a, b), 2) end
  return r
end

-- Sum of an array of cents (checked).
function money.sum(list)
  local s = 0
  for i = 1, #list do s = money.add(s, list[i]) end
  return s
end

-- For 0 <= a, 0 <= w <= W, 0 < W, all below 2^53: q = floor(a*w/W), r = a*w mod W,
-- exactly, without 128-bit products (binary long multiplication modulo W).
local function muldiv(a, w, W)
  local q, r = 0, 0
  for bit = 53, 0, -1 do
    q, r = q * 2, r * 2
    if r >= W then r = r - W; q = q + 1 end
    if (a >> bit) & 1 == 1 then
      r = r + w
      if r >= W then r = r - W; q = q + 1 end
    end
  end
  return q, r
end
money._muldiv = muldiv

-- Splits `total` cents across `weights` (integers, all >= 0 or all <= 0, not all
-- zero) in proportion, by largest remainder: every share is floor(total*w/W);
-- the cents still missing go one each to the largest remainders, ties to the
-- larger weight, then to the lower index. sum(result) == total, always.
function money.allocate(total, weights)
  check_int(total, "total")
  if type(weights) ~= "table" or #weights == 0 then
    error("fiskaly.money: allocate needs a non-empty array of weights", 2)
  end
  local n, W, sign = #weights, 0, 0
  local absw = {}
  for i = 1, n do
    local w = weights[i]
    check_int(w, "weight")
    if w ~= 0 then
      local s = w > 0 and 1 or -1
      if sign ~= 0 and s ~= sign then
        error("fiskaly.money: allocate weights must not mix signs", 2)
      end
      sign = s
    end
    absw[i] = w < 0 and -w or w
    W = W + absw[i]
    if W > MAX then error("fiskaly.money: allocate weights sum exceeds 2^53", 2) end
  end
  if W == 0 then error("fiskaly.money: allocate weights are all zero", 2) end
  local neg = total < 0
  local t = neg and -total or total
  local shares, rems, given = {}, {}, 0
  for i = 1, n do
    local q, r = muldiv(t, absw[i], W)
    shares[i], rems[i] = q, r
    given = given + q
  end
  local missing = t - given                  -- 0 <= missing < n
  if missing > 0 then
    local order = {}
    for i = 1, n do order[i] = i end
    table.sort(order, function(x, y)
      if rems[x] ~= rems[y] then return rems[x] > rems[y] end
      if absw[x] ~= absw[y] then return absw[x] > absw[y] end
      return x < y
    end)
    for k = 1, missing do
      local i = order[k]
      shares[i] = shares[i] + 1
    end
  end
  if neg then for i = 1, n do shares[i] = -shares[i] end end
  return shares
end

-- Rounds a*num/den half away from zero (den > 0). Used for percentages
-- (percent(1999, 1000) is 10.00 % of 19.99 -> 200) and quantities.
local function mulround(a, num, den)
  local neg = (a < 0) ~= (num < 0)
  local aa, nn = a < 0 and -a or a, num < 0 and -num or num
  -- a*num/den = (a*(num//den)) + a*(num%den)/den; num%den < den keeps muldiv exact.
  local whole = aa * (nn // den)
  local q, r = muldiv(aa, nn % den, den)
  q = whole + q
  if 2 * r >= den then q = q + 1 end
  if q > MAX then error("fiskaly.money: result exceeds 2^53", 3) end
  return neg and -q or q
end

-- `amount` * `basis_points` / 10000, half away from zero: percent(1999, 1500) is
-- 15.00 % of 19.99 = 3.00 (299.85 rounded).
function money.percent(amount, basis_points)
  check_int(amount); check_int(basis_points, "basis_points")
  return mulround(amount, basis_points, 10000)
end

-- Parses a quantity: an integer, or a decimal string with up to 3 decimals
-- ("0.250" kg). Returns thousandths: 2 -> 2000, "0.25" -> 250.
function money.parse_qty(q)
  if math_type(q) == "integer" then
    if q > MAX // 1000 or q < -(MAX // 1000) then return nil, "quantity too large" end
    return q * 1000
  end
  if type(q) == "string" then
    local sign, int, frac = match(q, "^(%-?)(%d+)%.?(%d*)$")
    if int and #frac <= 3 and #int <= 9 and not (find(q, "%.$")) then
      local v = tointeger(tonumber(int)) * 1000 + tointeger(tonumber((frac .. "000"):sub(1, 3)))
      return sign == "-" and -v or v
    end
    return nil, format("invalid quantity %q: expected an integer or up to 3 decimals", sub(q, 1, 40))
  end
  return nil, format("invalid quantity: expected an integer or a decimal string, got %s",
    math_type(q) or type(q))
end

-- unit price (cents) times a quantity in thousandths, rounded half away from zero.
function money.times(unit, qty_milli)
  check_int(unit, "unit"); check_int(qty_milli, "quantity")
  return mulround(unit, qty_milli, 1000)
end

return money
