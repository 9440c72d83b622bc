"""Application probes: http, tcp, exec, heartbeat and file checks run inside the agent's loop.

:mod:`.options` holds the keys and limits (imported by the config loader, so
it stays light); :mod:`.state` the sans-I/O state of one probe check;
:mod:`.runners` the non-blocking tcp, http and file probes and
:mod:`.execprobe` the exec probe; :mod:`.offload` runs the calls that may
block in a thread; :mod:`.notify` is the heartbeat socket; :mod:`.probeset`
ties them to the agent's reactor.
"""
