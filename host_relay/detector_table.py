"""The failure detector's states, inputs and its one transition table.

Read ``host_relay/detector.py`` first: it holds the theory of operation and the
handlers that the table names.  This module is data only, so the whole
behaviour can be reviewed as one table.

``TABLE[(state, input)]`` is either a :class:`State` (a pure transition, no
data changes) or the name of a ``Detector._on_<name>`` handler, which updates
the detector's data and returns the next state (``None`` = stay).  A pair that
is not in the table means the input is meaningless in that state: the
detector ignores it and counts it (``iim_detector_ignored_total``).
"""

from __future__ import annotations

import enum
from typing import Union


class State(enum.Enum):
    #: Not watching: no hello yet in this incarnation of the guest, or the
    #: channel dropped.  A heartbeat after a reconnect re-arms if a previous
    #: hello gave the interval; otherwise only a hello arms.
    UNKNOWN = "unknown"
    #: Watching heartbeats.  The hang timer runs only while the domain is
    #: running and min_uptime after hello has passed.
    ARMED = "armed"
    #: All but the last allowed interval passed without a heartbeat.  Status
    #: only: it never notifies by itself.
    SUSPECT = "suspect"
    #: A failure was found but not (or no longer) being recovered: the cooldown
    #: is over or the storm cap dropped the notification.  Waits for evidence
    #: that the incident is over: a hello, a heartbeat after a hang, or the
    #: failed check recovering.
    FAILED = "failed"
    #: Masakari was notified and is recovering the instance: nothing notifies
    #: until the cooldown ends.  Hello/goodbye/pause/recovery are recorded and
    #: decide the state the cooldown ends in.
    COOLDOWN = "cooldown"
    #: The guest asked for a maintenance pause: no notifications until it ends
    #: (timer) or the guest resumes.
    PAUSED = "paused"
    #: The agent said goodbye: the silence that follows is expected.  A hello
    #: arms again.
    DEPARTED = "departed"


class Input(enum.Enum):
    # Messages from the guest: the value is the message's wire TYPE.
    HELLO = "hello"
    HEARTBEAT = "heartbeat"
    FAILURE = "failure"
    RECOVERED = "recovered"
    GOODBYE = "goodbye"
    PAUSE = "pause"
    RESUME = "resume"
    # The relay's socket to the guest's channel.
    CONNECTED = "channel_connected"
    CLOSED = "channel_closed"
    # The domain's state from libvirt, folded into what matters here.
    DOMAIN_UP = "domain_running"  # RUNNING/UNKNOWN after any other state
    DOMAIN_HOLD = "domain_held"  # PAUSED or MIGRATING: the guest cannot (or may not) talk
    DOMAIN_STOP = "domain_stopped"  # SHUTDOWN, SHUTOFF, CRASHED: this incarnation is over
    # Timers, fed by tick() at their deadline.
    LAST_INTERVAL = "last_interval"  # missed_heartbeats - 1 intervals silent
    HANG_DEADLINE = "hang_deadline"  # missed_heartbeats intervals silent
    PAUSE_EXPIRED = "pause_expired"
    COOLDOWN_EXPIRED = "cooldown_expired"


Handler = Union[State, str]

S = State
I = Input  # noqa: E741 - short names keep the table one row per line

# fmt: off
TABLE: dict[tuple[State, Input], Handler] = {
    # --- UNKNOWN: not watching -------------------------------------------------
    (S.UNKNOWN, I.HELLO):            "arm",
    (S.UNKNOWN, I.HEARTBEAT):        "rearm",      # only if an earlier hello gave the interval
    (S.UNKNOWN, I.FAILURE):          "rearm",      # ... and then handles the message as ARMED would
    (S.UNKNOWN, I.RECOVERED):        "rearm",
    (S.UNKNOWN, I.PAUSE):            "rearm",
    (S.UNKNOWN, I.RESUME):           "rearm",
    (S.UNKNOWN, I.GOODBYE):          "depart",
    (S.UNKNOWN, I.CONNECTED):        "noop",       # wait for the guest to speak
    (S.UNKNOWN, I.CLOSED):           "noop",
    (S.UNKNOWN, I.DOMAIN_UP):        "noop",
    (S.UNKNOWN, I.DOMAIN_HOLD):      "noop",
    (S.UNKNOWN, I.DOMAIN_STOP):      "end_incarnation",
    # --- ARMED: watching heartbeats -------------------------------------------
    (S.ARMED, I.HELLO):              "arm",        # agent restart/reconnect: min_uptime again
    (S.ARMED, I.HEARTBEAT):          "beat",
    (S.ARMED, I.FAILURE):            "failure",    # notifies (process_failure)
    (S.ARMED, I.RECOVERED):          "recovered",
    (S.ARMED, I.GOODBYE):            "depart",
    (S.ARMED, I.PAUSE):              "pause",
    # (S.ARMED, I.RESUME): ignored - not paused
    (S.ARMED, I.CONNECTED):          "noop",
    (S.ARMED, I.CLOSED):             "disarm",     # not a failure: QEMU restart, migration
    (S.ARMED, I.DOMAIN_UP):          "fresh_timer",
    (S.ARMED, I.DOMAIN_HOLD):        "noop",       # the hang timer stops (see _pending)
    (S.ARMED, I.DOMAIN_STOP):        "end_incarnation",
    (S.ARMED, I.LAST_INTERVAL):      S.SUSPECT,
    (S.ARMED, I.HANG_DEADLINE):      "hang",       # when min_uptime set the deadline
    # --- SUSPECT: one interval from a hang ------------------------------------
    (S.SUSPECT, I.HELLO):            "arm",
    (S.SUSPECT, I.HEARTBEAT):        "beat",       # back to ARMED
    (S.SUSPECT, I.FAILURE):          "failure",
    (S.SUSPECT, I.RECOVERED):        "recovered",
    (S.SUSPECT, I.GOODBYE):          "depart",
    (S.SUSPECT, I.PAUSE):            "pause",
    # (S.SUSPECT, I.RESUME): ignored - not paused
    (S.SUSPECT, I.CONNECTED):        "noop",
    (S.SUSPECT, I.CLOSED):           "disarm",
    (S.SUSPECT, I.DOMAIN_UP):        "fresh_timer",
    (S.SUSPECT, I.DOMAIN_HOLD):      S.ARMED,      # timer restarts fresh on DOMAIN_UP
    (S.SUSPECT, I.DOMAIN_STOP):      "end_incarnation",
    (S.SUSPECT, I.HANG_DEADLINE):    "hang",       # notifies (guest_hang)
    # --- PAUSED: maintenance announced by the guest ----------------------------
    (S.PAUSED, I.HELLO):             "arm",        # cancels the pause (re-sent after hello)
    (S.PAUSED, I.HEARTBEAT):         "beat",
    (S.PAUSED, I.FAILURE):           "suppressed",
    (S.PAUSED, I.RECOVERED):         "recovered",
    (S.PAUSED, I.GOODBYE):           "depart",
    (S.PAUSED, I.PAUSE):             "pause",      # replaces the end time (extend or shorten)
    (S.PAUSED, I.RESUME):            "resume",
    (S.PAUSED, I.CONNECTED):         "noop",
    (S.PAUSED, I.CLOSED):            "disarm",     # the pause's end time is kept
    (S.PAUSED, I.DOMAIN_UP):         "fresh_timer",
    (S.PAUSED, I.DOMAIN_HOLD):       "noop",
    (S.PAUSED, I.DOMAIN_STOP):       "end_incarnation",
    (S.PAUSED, I.PAUSE_EXPIRED):     "pause_expired",
    # --- COOLDOWN: Masakari is recovering the instance -------------------------
    (S.COOLDOWN, I.HELLO):           "note_hello",  # came back: ARMED after the cooldown
    (S.COOLDOWN, I.HEARTBEAT):       "incident_beat",
    (S.COOLDOWN, I.FAILURE):         "suppressed",
    (S.COOLDOWN, I.RECOVERED):       "incident_recovered",
    (S.COOLDOWN, I.GOODBYE):         "note_goodbye",
    (S.COOLDOWN, I.PAUSE):           "note_pause",
    (S.COOLDOWN, I.RESUME):          "note_resume",
    (S.COOLDOWN, I.CONNECTED):       "noop",
    (S.COOLDOWN, I.CLOSED):          "noop",
    (S.COOLDOWN, I.DOMAIN_UP):       "noop",
    (S.COOLDOWN, I.DOMAIN_HOLD):     "noop",
    (S.COOLDOWN, I.DOMAIN_STOP):     "forget_incarnation",
    (S.COOLDOWN, I.COOLDOWN_EXPIRED): "cooldown_expired",
    # --- FAILED: incident open, nobody recovering it ---------------------------
    (S.FAILED, I.HELLO):             "arm",
    (S.FAILED, I.HEARTBEAT):         "incident_beat",       # ends a hang incident
    (S.FAILED, I.FAILURE):           "suppressed",
    (S.FAILED, I.RECOVERED):         "incident_recovered",  # ends a process_failure incident
    (S.FAILED, I.GOODBYE):           "depart",
    (S.FAILED, I.PAUSE):             "note_pause",
    (S.FAILED, I.RESUME):            "note_resume",
    (S.FAILED, I.CONNECTED):         "noop",
    (S.FAILED, I.CLOSED):            "noop",
    (S.FAILED, I.DOMAIN_UP):         "noop",
    (S.FAILED, I.DOMAIN_HOLD):       "noop",
    (S.FAILED, I.DOMAIN_STOP):       "forget_incarnation",
    # --- DEPARTED: the agent said goodbye --------------------------------------
    (S.DEPARTED, I.HELLO):           "arm",
    # heartbeat, failure, recovered, goodbye, pause, resume: ignored until hello
    (S.DEPARTED, I.CONNECTED):       "noop",
    (S.DEPARTED, I.CLOSED):          "noop",
    (S.DEPARTED, I.DOMAIN_UP):       "noop",
    (S.DEPARTED, I.DOMAIN_HOLD):     "noop",
    (S.DEPARTED, I.DOMAIN_STOP):     "forget_incarnation",
}
# fmt: on

#: The states in which the detector watches the guest (ready to notify).
WATCHING = frozenset({State.ARMED, State.SUSPECT, State.PAUSED})
