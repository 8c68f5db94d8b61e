-- Configuration of the restaurant plugin (see handler.lua for the mapping).
-- `typedefs` (vat_rate, payment_type, currency, cents, percent) is provided by the engine.
return {
  description = "Restaurants and cafes: food in-house vs take-away, drinks, tips.",
  fields = {
    { inhouse_food_vat = typedefs.vat_rate { default = "NORMAL",
        description = "food served to be eaten on the premises (a restaurant service); "
          .. "this rate has changed by law several times, so it is configuration" } },
    { takeaway_food_vat = typedefs.vat_rate { default = "REDUCED_1",
        description = "food sold to take away (a supply of food)" } },
    { drink_vat = typedefs.vat_rate { default = "NORMAL",
        description = "drinks, in-house and take-away" } },
    { category_vat = { type = "map", default = {}, values = typedefs.vat_rate(),
        description = "fixed rates for further POS categories (e.g. merchandise = NORMAL)" } },
    { tip_mode = { type = "string", one_of = { "null_rate", "exclude", "employer" }, default = "null_rate",
        description = "null_rate: staff tips pass through the till at the NULL rate; "
          .. "exclude: tips are kept off the receipt; employer: tips kept by the business "
          .. "are part of the price and follow the bill's rates" } },
    { payment_methods = { type = "map",
        default = { cash = "CASH", card = "NON_CASH", ec = "NON_CASH", credit = "NON_CASH", mobile = "NON_CASH" },
        values = typedefs.payment_type() } },
  },
  custom_validator = function(conf)
    if conf.takeaway_food_vat == "NULL" or conf.inhouse_food_vat == "NULL" then
      return nil, "food is never VAT-free: inhouse_food_vat and takeaway_food_vat must not be NULL"
    end
    return true
  end,
}
