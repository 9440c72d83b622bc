#!/bin/sh
# /sbin/iim-test-init: PID 1 of the real guest in tests/host_relay/test_libvirt_vm.py.
#
# No systemd, no udev: mount what the agent needs, load virtio_console (the
# iim port appears only when the relay hot-plugs it), start a demo process
# and the installed iim-agent watching it, wait until the agent says the host
# is connected and the check is ok, then kill -9 the demo process.  Lines
# starting with "IIM-TEST <event> <guest epoch seconds>" on the console
# (ttyS0) are what the test reads; the agent logs to the console too.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
READY_TRIES=150  # iim-agent status every ~1-2 s under TCG: a few minutes at most
ARMED_DELAY=4    # seconds after "ready" so the relay has armed its detector on hello

mark() { echo "IIM-TEST $1 $(date +%s.%N) $2"; }

# initramfs-tools moves /proc, /sys, /dev and /run over; mount any that are missing.
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mountpoint -q /run || mount -t tmpfs -o mode=0755 tmpfs /run
mark init "kernel $(uname -r)"
modprobe virtio_console || mark error "modprobe virtio_console failed"

cp /bin/sleep /usr/local/bin/iim-demo-app  # /run is noexec
/usr/local/bin/iim-demo-app 100000 &
DEMO=$!
mkdir -p /etc/iim
cat > /etc/iim/agent.yaml <<EOF
heartbeat_interval: 1s
checks:
  - name: demo
    process: iim-demo-app
    grace: 0s
EOF
/usr/bin/iim-agent run -c /etc/iim/agent.yaml 2>&1 &
AGENT=$!
mark agent-started "pid $AGENT demo $DEMO"

tries=0
while :; do
    st="$(iim-agent status --json -c /etc/iim/agent.yaml 2>/dev/null)"
    if echo "$st" | grep -q '"host_connected": true' && echo "$st" | grep -q '"state": "ok"'; then
        mark ready "$(echo "$st" | grep '"device"')"
        break
    fi
    tries=$((tries + 1))
    if [ "$tries" -ge "$READY_TRIES" ]; then
        mark not-ready "after $tries tries"
        echo "$st"
        ls -l /sys/class/virtio-ports/ /dev/vport* 2>&1
        while :; do sleep 3600; done
    fi
    sleep 1
done

sleep "$ARMED_DELAY"
mark kill "pid $DEMO"
kill -9 "$DEMO"
wait "$DEMO"
mark killed "demo exit status $?"
# Stay up (and reap) until the host destroys the domain.
while :; do sleep 3600; done
