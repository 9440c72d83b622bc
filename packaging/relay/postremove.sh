#!/bin/sh
# iim-relay: after removal (deb postrm, rpm %postun).
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
# deb purge: the outbox goes too (undelivered notifications with it).  The
# channel directory is removed only if empty: QEMU may still have sockets there.
if [ "$1" = purge ]; then
    rm -f /var/lib/iim/outbox.sqlite /var/lib/iim/outbox.sqlite-wal \
        /var/lib/iim/outbox.sqlite-shm /var/lib/iim/control.sock
    rmdir /var/lib/iim/channels /var/lib/iim 2>/dev/null || true
fi
exit 0
