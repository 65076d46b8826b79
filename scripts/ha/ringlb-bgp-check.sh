#!/bin/bash
# Announces this machine's service address over BGP only while ringlb is
# healthy: every INTERVAL seconds it asks ringlb's /healthz (1 s timeout) and
# enables BIRD's protocol PROTOCOL (the static route BIRD exports; see
# bird.conf.example) when it answers 200, disables it when it does not. BIRD
# then withdraws the route at once (a BGP UPDATE, not a hold-timer expiry),
# so the upstream router drops this next hop within about INTERVAL + 1 s of
# ringlb stopping, and adds it back as soon as ringlb answers again.
# Logs each change of state on stderr.
#
#   ringlb-bgp-check.sh [ADMIN] [BIRD_SOCKET] [PROTOCOL] [INTERVAL]
#   defaults:           127.0.0.1:9900 /run/bird/bird.ctl vip 1
#
# Run it beside BIRD (a systemd service with Restart=always, say).
set -u
admin=${1:-127.0.0.1:9900}
socket=${2:-/run/bird/bird.ctl}
protocol=${3:-vip}
interval=${4:-1}
host=${admin%:*}
port=${admin##*:}

healthy() {
  timeout 1 bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 1
    printf "GET /healthz HTTP/1.0\r\n\r\n" >&3
    read -r _ status _ <&3
    [ "$status" = 200 ]' "$host" "$port" 2>/dev/null
}

state=unknown
while true; do
  if healthy; then want=enable; else want=disable; fi
  if [ "$want" != "$state" ]; then
    if birdc -s "$socket" "$want" "$protocol" >/dev/null; then
      echo "ringlb-bgp-check: ringlb $( [ "$want" = enable ] && echo healthy || echo down ): $want $protocol" >&2
      state=$want
    fi
  fi
  sleep "$interval"
done
