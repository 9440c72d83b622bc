#!/bin/sh
# iim-agent: after install or upgrade (deb postinst "configure", rpm %post 1|2).
set -e
# Byte-compile once as root; the unit runs with a read-only /usr.
python3 -m compileall -q /usr/lib/iim-agent >/dev/null 2>&1 || true
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    # Upgrade: a running agent picks up the new code.
    systemctl try-restart iim-agent.service || true
fi
if command -v udevadm >/dev/null 2>&1 && [ -d /run/udev ]; then
    udevadm control --reload-rules || true
    # Install: an iim port that is already there starts the agent, as at boot.
    udevadm trigger --action=add --subsystem-match=virtio-ports \
        --attr-match=name=org.openstack.iim.0 || true
fi
exit 0
