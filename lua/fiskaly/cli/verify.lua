-- `fiskaly verify`: offline verification of German TSE signatures (receipt QR codes, TAR exports).
local verify = require "fiskaly.verify"
local json = require "fiskaly.json"

local M = {
  summary = "verify TSE signatures offline: a receipt QR code or a TAR export (any German TSE)",
  usage = [[
usage: fiskaly verify --qr 'V0;...' [--json]
       fiskaly verify --qr - [--json]                (read the QR string from stdin)
       fiskaly verify --export FILE.tar [--allow-gaps] [--json]

--qr rebuilds the signed TR-03151 log message from the DSFinV-K QR code and
verifies its ECDSA signature (P-256, brainpoolP256r1, P-384, brainpoolP384r1;
plain or DER signatures; unixTime, utcTime, generalizedTime).
--export verifies every log message of a TR-03153 TAR export (transaction,
system and audit logs) against the TSE certificate in the same archive, and
checks the signature counters for gaps and repeats. No network is used.

  --qr S          the QR code content ("V0;..."); "-" reads it from stdin
  --export FILE   a TAR export file
  --allow-gaps    counter gaps do not make an export invalid (filtered exports)
  --json          print the result as one JSON object

Exit status: 0 valid, 1 invalid, 2 usage error.
]],
}

local function parse_args(args)
  local o = {}
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--qr" or a == "--export" then
      local v = args[i + 1]
      if v == nil then return nil, a .. " needs a value" end
      o[a:sub(3)] = v
      i = i + 2
    elseif a == "--json" or a == "--allow-gaps" then
      o[a:sub(3):gsub("-", "_")] = true
      i = i + 1
    else
      return nil, "unknown option " .. a
    end
  end
  if (o.qr == nil) == (o.export == nil) then return nil, "give exactly one of --qr or --export" end
  return o
end

local function describe_qr(r)
  if r.valid then
    return string.format("valid: signature verified (%s, %s, %s signature, TSE serial %s)",
      tostring(r.curve), tostring(r.sig_alg), tostring(r.signature_encoding), tostring(r.serial_number))
  end
  return "INVALID: " .. tostring(r.reason)
end

local function describe_export(out, r)
  for _, m in ipairs(r.messages or {}) do
    if m.valid then
      out:write(string.format("ok    %s (%s log, counter %s)\n", m.name, m.log_type, tostring(m.signature_counter)))
    else
      out:write(string.format("FAIL  %s: %s\n", m.name, tostring(m.reason)))
    end
  end
  for _, g in ipairs(r.gaps or {}) do
    out:write(string.format("gap   TSE %s: signature counters %d to %d missing\n", g.serial_number, g.from, g.to))
  end
  for _, c in ipairs(r.repeats or {}) do
    out:write(string.format("again TSE %s: signature counter %d repeated\n", c.serial_number, c.counter))
  end
  local n = r.counts or { total = 0, valid = 0, transaction = 0, system = 0, audit = 0 }
  out:write(string.format("%s: %d of %d log messages verified (%d transaction, %d system, %d audit), %d certificate(s)%s\n",
    r.valid and "valid" or "INVALID", n.valid or 0, n.total or 0, n.transaction or 0, n.system or 0, n.audit or 0,
    #(r.certificates or {}), r.valid and "" or ("; " .. tostring(r.reason))))
end

function M.run(args)
  local o, err = parse_args(args)
  if not o then
    io.stderr:write("fiskaly verify: ", err, "\n", M.usage)
    return 2
  end
  local r
  if o.export then
    r = verify.export(o.export, { allow_gaps = o.allow_gaps })
  else
    local qr = o.qr
    if qr == "-" then qr = io.stdin:read("a"):gsub("\r?\n$", "") end
    r = verify.qr(qr)
  end
  if o.json then
    io.stdout:write(assert(json.encode(r)), "\n")
  elseif o.export then
    describe_export(io.stdout, r)
  else
    io.stdout:write(describe_qr(r), "\n")
  end
  return r.valid and 0 or 1
end

return M
