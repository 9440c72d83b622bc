#!/bin/sh
# iim-relay: before removal (deb prerm "remove", rpm %preun 0) or upgrade.
set -e
case "$1" in
    remove|0)
        if [ -d /run/systemd/system ]; then
            systemctl disable --now iim-relay.service >/dev/null 2>&1 || true
        fi
        ;;
esac
# Bytecode written at install (and by any later run): not in the package's file list.
find /usr/lib/iim-relay -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
exit 0
