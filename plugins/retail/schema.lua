-- Configuration of the retail plugin (see handler.lua for the mapping).
-- `typedefs` (vat_rate, payment_type, currency, cents, percent) is provided by the engine.
return {
  description = "Shops with mixed VAT: discounts, deposits (Pfand), multi-purpose vouchers, "
    .. "mixed and foreign-currency payments, refunds, annulations and voids.",
  fields = {
    { default_vat = typedefs.vat_rate { default = "NORMAL",
        description = "VAT rate for items that carry no vat key" } },
    { vat_codes = { type = "map", default = {}, values = typedefs.vat_rate(),
        description = "the POS's own tax codes (e.g. A, B) mapped to SIGN DE rate names" } },
    { payment_methods = { type = "map",
        default = { cash = "CASH", card = "NON_CASH", ec = "NON_CASH", credit = "NON_CASH",
                    voucher = "NON_CASH", mobile = "NON_CASH" },
        values = typedefs.payment_type(),
        description = "POS payment method -> CASH or NON_CASH (a redeemed voucher is NON_CASH)" } },
    { max_discount_percent = typedefs.percent { default = 100,
        description = "reject receipt-level percentage discounts above this" } },
    { max_items = { type = "integer", between = { 1, 10000 }, default = 1000 } },
  },
}
