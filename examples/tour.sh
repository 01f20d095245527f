#!/bin/sh
# A walk through what the example policies decide, offline (no gateway running):
# each line is one `clrk check`; --hostname is what the agent's own
# DNS answer bound to the destination IP.
set -eu
cd "$(dirname "$0")"

show() {
  what=$1; shift
  printf '%-58s ' "$what"
  clrk check "$@" -o json | python3 -c 'import json, sys
d = json.load(sys.stdin)
print("{decision:<5} {reason:<16} route={r} listener={l}".format(
    r=d["route"] or "-", l=d["listener"] or "-", **d))'
}

echo "== prod-agents (deny-all): examples/prod-agents"
P="-f prod-agents --agent bot"
show "api.anthropic.com:443"                  $P --dst-ip 203.0.113.10 --port 443 --hostname api.anthropic.com
show "api.anthropic.com:444"                  $P --dst-ip 203.0.113.10 --port 444 --hostname api.anthropic.com
show "pg.prod.internal:5432"                  $P --dst-ip 198.51.100.20 --port 5432 --hostname pg.prod.internal
show "paste site by hard-coded IP"            $P --dst-ip 192.0.2.66 --port 443
show "SNI evil.com to api.anthropic.com's IP" $P --dst-ip 203.0.113.10 --port 443 --hostname api.anthropic.com --sni evil.com
show "api.anthropic.com bound to 169.254.169.254" $P --dst-ip 169.254.169.254 --port 443 --hostname api.anthropic.com

echo "== model-apis: wildcards, CIDRs, port ranges"
M="-f wildcards-cidrs-ranges.yaml --agent bot"
show "api.openai.com:443"                     $M --dst-ip 203.0.113.7 --port 443 --hostname api.openai.com
show "eu.api.openai.com:443"                  $M --dst-ip 203.0.113.7 --port 443 --hostname eu.api.openai.com
show "x.azure.openai.com:8042"                $M --dst-ip 203.0.113.8 --port 8042 --hostname x.azure.openai.com
show "::ffff:10.20.1.1:443 (IPv4-mapped)"     $M --dst-ip ::ffff:10.20.1.1 --port 443

echo "== open-agents (allow-all) with a deny policy on paste sites"
O="-f allow-all-deny-paste.yaml --agent bot"
show "example.org:443"                        $O --dst-ip 198.51.100.80 --port 443 --hostname example.org
show "pastebin.com:443"                       $O --dst-ip 192.0.2.66 --port 443 --hostname pastebin.com
show "127.0.0.1:8080"                         $O --dst-ip 127.0.0.1 --port 8080
