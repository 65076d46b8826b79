#!/bin/bash
# keepalived track script: healthy when ringlb's /healthz answers 200.
# Install as /etc/keepalived/ringlb-check.sh, mode 0755, owned by root.
exec 3<>/dev/tcp/127.0.0.1/9900 || exit 1
printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3
read -r _ status _ <&3
[ "$status" = 200 ]
