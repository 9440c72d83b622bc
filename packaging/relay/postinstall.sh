#!/bin/sh
# iim-relay: after install or upgrade (deb postinst "configure", rpm %post 1|2).
# Not started on install: set up [masakari] in /etc/iim/relay.conf first, then
# `systemctl enable --now iim-relay`.
set -e
# Byte-compile once as root; the unit runs with a read-only /usr.
python3 -m compileall -q /usr/lib/iim-relay >/dev/null 2>&1 || true
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    # Upgrade: a running relay picks up the new code (its outbox is on disk).
    systemctl try-restart iim-relay.service || true
fi
exit 0
