#!/bin/sh
# iim-agent: after removal (deb postrm, rpm %postun).
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
