-- sandbox.tls: the certificates of `fiskaly-sandbox --tls`, made fresh for each
-- run with core.crypto: a CA (P-256, self-signed) and a server certificate
-- signed by it for IP:127.0.0.1 and DNS:localhost.  Returns the PEMs; the CA's
-- private key is closed here and never leaves this function.
local core = require "fiskaly.core"

local M = {}

-- days: validity of both certificates (default 7).
function M.generate(days)
  days = days or 7
  local crypto = core.crypto
  local ca_key <close> = crypto.generate_key("P-256")
  local tag = crypto.hex(crypto.random_bytes(4))
  local ca_pem = assert(crypto.issue_certificate{
    key = ca_key, common_name = "fiskaly-sandbox test CA " .. tag, days = days, ca = true,
  })
  local server_key <close> = crypto.generate_key("P-256")
  local cert_pem = assert(crypto.issue_certificate{
    key = server_key, common_name = "127.0.0.1", days = days,
    san = { "IP:127.0.0.1", "DNS:localhost" }, issuer_key = ca_key, issuer_cert = ca_pem,
  })
  return { ca_pem = ca_pem, cert_pem = cert_pem, key_pem = assert(server_key:private_pem()) }
end

return M
