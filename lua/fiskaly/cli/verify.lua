-- `fiskaly verify`: offline verification of a German TSE receipt QR code.
local verify = require "fiskaly.verify"
local json = require "fiskaly.json"

local M = {
  summary = "verify a receipt QR code's TSE signature offline (any German TSE)",
  usage = [[
usage: fiskaly verify --qr 'V0;...' [--json]
       fiskaly verify --qr - [--json]        (read the QR string from stdin)

Rebuilds the signed TR-03151 log message from the DSFinV-K QR code and
verifies its ECDSA signature (P-256, brainpoolP256r1, P-384, brainpoolP384r1;
plain or DER signatures; unixTime, utcTime, generalizedTime). No network.

  --qr S     the QR code content ("V0;..."); "-" reads it from stdin
  --json     print the result as one JSON object

Exit status: 0 valid, 1 invalid, 2 usage error.
]],
}

local function parse_args(args)
  local o = {}
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--qr" then
      o.qr = args[i + 1]
      if o.qr == nil then return nil, "--qr needs a value" end
      i = i + 2
    elseif a == "--json" then
      o.json = true
      i = i + 1
    else
      return nil, "unknown option " .. a
    end
  end
  if not o.qr then return nil, "--qr is required" end
  return o
end

local function describe(r)
  if r.valid then
    return string.format("valid: signature verified (%s, %s, %s signature, TSE serial %s)",
      tostring(r.curve), tostring(r.sig_alg), tostring(r.signature_encoding), tostring(r.serial_number))
  end
  return "INVALID: " .. tostring(r.reason)
end

function M.run(args)
  local o, err = parse_args(args)
  if not o then
    io.stderr:write("fiskaly verify: ", err, "\n", M.usage)
    return 2
  end
  local qr = o.qr
  if qr == "-" then
    qr = io.stdin:read("a"):gsub("\r?\n$", "")
  end
  local r = verify.qr(qr)
  if o.json then
    io.stdout:write(assert(json.encode(r)), "\n")
  else
    io.stdout:write(describe(r), "\n")
  end
  return r.valid and 0 or 1
end

return M
