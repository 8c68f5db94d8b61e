-- Configuration of the bakery plugin (see handler.lua for the mapping).
-- `typedefs` (vat_rate, payment_type, currency, cents, percent) is provided by the engine.
return {
  description = "Bakery with a cafe corner: product groups, eat-in vs take-away, day-old discount.",
  fields = {
    { groups = { type = "map", required = true,
        default = {
          bread  = { takeaway = "REDUCED_1", eat_in = "REDUCED_1" },
          pastry = { takeaway = "REDUCED_1", eat_in = "NORMAL" },
          coffee = { takeaway = "NORMAL", eat_in = "NORMAL" },
          milk   = { takeaway = "REDUCED_1", eat_in = "NORMAL" },
        },
        values = { type = "record", fields = {
          { takeaway = typedefs.vat_rate { required = true } },
          { eat_in = typedefs.vat_rate { required = true } },
        } },
        description = "POS product group -> VAT rate to take away and to eat in" } },
    { day_old_percent = { type = "integer", between = { 0, 90 }, default = 0,
        description = "discount on items flagged day_old (per line, rounded half up)" } },
    { day_old_groups = { type = "array", default = {}, len_max = 20,
        elements = { type = "string", len_min = 1 },
        description = "groups the day-old discount may apply to" } },
    { payment_methods = { type = "map", default = { cash = "CASH", card = "NON_CASH" },
        values = typedefs.payment_type() } },
  },
  custom_validator = function(conf)
    for _, g in ipairs(conf.day_old_groups) do
      if conf.groups[g] == nil then
        return nil, ("day_old_groups: %q is not a configured group"):format(g)
      end
    end
    if conf.day_old_percent > 0 and #conf.day_old_groups == 0 then
      return nil, "day_old_percent is set but day_old_groups is empty"
    end
    return true
  end,
}
