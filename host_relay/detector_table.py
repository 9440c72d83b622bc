"""The failure detector's one transition table: data only.

``TABLE[(state, input)] = (handler, destination)``.  The handler (a function
from ``detector_rules``, or None) changes the facts; the destination is a
:class:`State`, a guard function that picks the state from the facts, or None
(stay).  A pair that is not in the table is an input that means nothing in
that state: the detector ignores it (``Ignored(what, "in_<state>")``).

The guards: ``watch`` (the state the facts call for - cooldown, goodbye, open
incident, not armed, a pause (guest's or host's), else armed - with the heartbeat timer fresh; the
restore uses the same ``settle`` without the timer) and ``after_notify``
(COOLDOWN, FAILED when storm-capped, else stay).
"""

from __future__ import annotations

from typing import Optional, Union

from host_relay.detector_inputs import Input
from host_relay.detector_rules import (
    Guard,
    Handler,
    State,
    after_agent_lost,
    after_notify,
    fresh_timer,
    on_agent_lost,
    on_confirmed_hang,
    on_cooldown_expired,
    on_domain_stop,
    on_failure,
    on_goodbye,
    on_hang,
    on_hang_released,
    on_heartbeat,
    on_hello,
    on_host_pause,
    on_host_resume,
    on_no_witness,
    on_pause,
    on_pause_expired,
    on_recovered,
    on_resume,
    on_start,
    on_suppressed_failure,
    watch,
)

__all__ = ["TABLE", "WATCHING", "Input", "State"]

Row = tuple[Optional[Handler], Union[State, Guard, None]]

S = State
I = Input  # noqa: E741 - short names keep the table one row per line

# fmt: off
TABLE: dict[tuple[State, Input], Row] = {
    # --- UNKNOWN: not armed (no interval, or the domain stopped) -----------------
    (S.UNKNOWN, I.START):            (on_start, watch),
    (S.UNKNOWN, I.HELLO):            (on_hello, watch),
    (S.UNKNOWN, I.HEARTBEAT):        (on_heartbeat, watch),     # arms if an interval is known
    (S.UNKNOWN, I.FAILURE):          (on_failure, after_notify),  # a failure needs no hello
    (S.UNKNOWN, I.RECOVERED):        (on_recovered, None),
    (S.UNKNOWN, I.GOODBYE):          (on_goodbye, S.DEPARTED),
    (S.UNKNOWN, I.PAUSE):            (on_pause, None),          # held until armed
    (S.UNKNOWN, I.RESUME):           (on_resume, None),
    (S.UNKNOWN, I.HOST_PAUSE):       (on_host_pause, None),     # held until armed
    (S.UNKNOWN, I.HOST_RESUME):      (on_host_resume, None),
    (S.UNKNOWN, I.CONNECTED):        (None, None),
    (S.UNKNOWN, I.CLOSED):           (None, None),
    (S.UNKNOWN, I.DOMAIN_UP):        (None, None),
    (S.UNKNOWN, I.DOMAIN_HOLD):      (None, None),
    (S.UNKNOWN, I.DOMAIN_STOP):      (on_domain_stop, None),
    # --- ARMED: watching heartbeats ---------------------------------------------
    (S.ARMED, I.START):              (on_start, watch),         # min_uptime again
    (S.ARMED, I.HELLO):              (on_hello, None),          # periodic hello: nothing changes
    (S.ARMED, I.HEARTBEAT):          (on_heartbeat, None),
    (S.ARMED, I.FAILURE):            (on_failure, after_notify),
    (S.ARMED, I.RECOVERED):          (on_recovered, None),
    (S.ARMED, I.GOODBYE):            (on_goodbye, S.DEPARTED),
    (S.ARMED, I.PAUSE):              (on_pause, S.PAUSED),
    # (S.ARMED, I.RESUME): ignored, not paused
    (S.ARMED, I.HOST_PAUSE):         (on_host_pause, S.PAUSED),
    (S.ARMED, I.HOST_RESUME):        (on_host_resume, None),    # not paused: ignored
    (S.ARMED, I.CONNECTED):          (fresh_timer, None),       # closed time is not silence
    (S.ARMED, I.CLOSED):             (None, None),              # the timer holds until reconnected
    (S.ARMED, I.DOMAIN_UP):          (fresh_timer, None),
    (S.ARMED, I.DOMAIN_HOLD):        (None, None),              # the timer holds
    (S.ARMED, I.DOMAIN_STOP):        (on_domain_stop, S.UNKNOWN),
    (S.ARMED, I.LAST_INTERVAL):      (None, S.SUSPECT),
    (S.ARMED, I.HANG_DEADLINE):      (on_hang, after_notify),   # when min_uptime set the deadline
    (S.ARMED, I.HANG_RELEASED):      (on_hang_released, after_notify),
    (S.ARMED, I.WITNESS_HUNG):       (on_confirmed_hang, after_notify),  # a panic event
    (S.ARMED, I.WITNESS_ALIVE):      (on_agent_lost, after_agent_lost),
    (S.ARMED, I.WITNESS_UNKNOWN):    (on_no_witness, None),
    # --- SUSPECT: one interval from a hang ---------------------------------------
    (S.SUSPECT, I.START):            (on_start, watch),
    (S.SUSPECT, I.HELLO):            (on_hello, S.ARMED),
    (S.SUSPECT, I.HEARTBEAT):        (on_heartbeat, S.ARMED),
    (S.SUSPECT, I.FAILURE):          (on_failure, after_notify),
    (S.SUSPECT, I.RECOVERED):        (on_recovered, None),
    (S.SUSPECT, I.GOODBYE):          (on_goodbye, S.DEPARTED),
    (S.SUSPECT, I.PAUSE):            (on_pause, S.PAUSED),
    (S.SUSPECT, I.HOST_PAUSE):       (on_host_pause, S.PAUSED),
    (S.SUSPECT, I.HOST_RESUME):      (on_host_resume, None),
    (S.SUSPECT, I.CONNECTED):        (fresh_timer, S.ARMED),
    (S.SUSPECT, I.CLOSED):           (None, S.ARMED),
    (S.SUSPECT, I.DOMAIN_UP):        (fresh_timer, S.ARMED),
    (S.SUSPECT, I.DOMAIN_HOLD):      (None, S.ARMED),
    (S.SUSPECT, I.DOMAIN_STOP):      (on_domain_stop, S.UNKNOWN),
    (S.SUSPECT, I.HANG_DEADLINE):    (on_hang, after_notify),   # notifies guest_hang, or held
    (S.SUSPECT, I.HANG_RELEASED):    (on_hang_released, after_notify),
    (S.SUSPECT, I.WITNESS_HUNG):     (on_confirmed_hang, after_notify),
    (S.SUSPECT, I.WITNESS_ALIVE):    (on_agent_lost, after_agent_lost),
    (S.SUSPECT, I.WITNESS_UNKNOWN):  (on_no_witness, None),
    # --- AGENT_LOST: silent, but the guest answers a witness (qemu-ga) ----------------
    (S.AGENT_LOST, I.START):         (on_start, watch),
    (S.AGENT_LOST, I.HELLO):         (on_hello, S.ARMED),       # the agent is back
    (S.AGENT_LOST, I.HEARTBEAT):     (on_heartbeat, S.ARMED),
    (S.AGENT_LOST, I.FAILURE):       (on_failure, after_notify),
    (S.AGENT_LOST, I.RECOVERED):     (on_recovered, None),
    (S.AGENT_LOST, I.GOODBYE):       (on_goodbye, S.DEPARTED),
    (S.AGENT_LOST, I.PAUSE):         (on_pause, S.PAUSED),
    (S.AGENT_LOST, I.HOST_PAUSE):    (on_host_pause, S.PAUSED),
    (S.AGENT_LOST, I.HOST_RESUME):   (on_host_resume, None),
    (S.AGENT_LOST, I.CONNECTED):     (fresh_timer, None),       # the witnesses decide again
    (S.AGENT_LOST, I.CLOSED):        (None, None),
    (S.AGENT_LOST, I.DOMAIN_UP):     (fresh_timer, None),
    (S.AGENT_LOST, I.DOMAIN_HOLD):   (None, None),
    (S.AGENT_LOST, I.DOMAIN_STOP):   (on_domain_stop, S.UNKNOWN),
    (S.AGENT_LOST, I.HANG_DEADLINE): (on_hang, after_notify),   # no witness renewed the hold
    (S.AGENT_LOST, I.HANG_RELEASED): (on_hang_released, after_notify),
    (S.AGENT_LOST, I.WITNESS_HUNG):  (on_confirmed_hang, after_notify),  # qemu-ga stopped too
    (S.AGENT_LOST, I.WITNESS_ALIVE): (on_agent_lost, after_agent_lost),  # holds it longer
    (S.AGENT_LOST, I.WITNESS_UNKNOWN): (on_no_witness, None),   # the hold runs out
    # --- PAUSED: the guest's maintenance pause ----------------------------------
    (S.PAUSED, I.START):             (on_start, watch),         # the level that follows decides
    (S.PAUSED, I.HELLO):             (on_hello, None),          # does NOT cancel the pause
    (S.PAUSED, I.HEARTBEAT):         (on_heartbeat, None),
    (S.PAUSED, I.FAILURE):           (on_suppressed_failure, None),
    (S.PAUSED, I.RECOVERED):         (on_recovered, None),
    (S.PAUSED, I.GOODBYE):           (on_goodbye, S.DEPARTED),
    (S.PAUSED, I.PAUSE):             (on_pause, None),          # replaces the end
    (S.PAUSED, I.RESUME):            (on_resume, watch),
    (S.PAUSED, I.HOST_PAUSE):        (on_host_pause, None),     # replaces the host's end
    (S.PAUSED, I.HOST_RESUME):       (on_host_resume, watch),   # the guest's pause may hold
    (S.PAUSED, I.CONNECTED):         (None, None),
    (S.PAUSED, I.CLOSED):            (None, None),
    (S.PAUSED, I.DOMAIN_UP):         (fresh_timer, None),
    (S.PAUSED, I.DOMAIN_HOLD):       (None, None),
    (S.PAUSED, I.DOMAIN_STOP):       (on_domain_stop, S.UNKNOWN),
    (S.PAUSED, I.PAUSE_EXPIRED):     (on_pause_expired, watch),
    # --- COOLDOWN: Masakari is recovering the instance ------------------------------
    (S.COOLDOWN, I.START):           (on_start, None),          # recovered: ends the incident
    (S.COOLDOWN, I.HELLO):           (on_hello, None),
    (S.COOLDOWN, I.HEARTBEAT):       (on_heartbeat, None),      # ends a hang incident
    (S.COOLDOWN, I.FAILURE):         (on_suppressed_failure, None),
    (S.COOLDOWN, I.RECOVERED):       (on_recovered, None),
    (S.COOLDOWN, I.GOODBYE):         (on_goodbye, None),        # DEPARTED when the cooldown ends
    (S.COOLDOWN, I.PAUSE):           (on_pause, None),          # honoured when the cooldown ends
    (S.COOLDOWN, I.RESUME):          (on_resume, None),
    (S.COOLDOWN, I.HOST_PAUSE):      (on_host_pause, None),     # honoured when the cooldown ends
    (S.COOLDOWN, I.HOST_RESUME):     (on_host_resume, None),
    (S.COOLDOWN, I.CONNECTED):       (None, None),
    (S.COOLDOWN, I.CLOSED):          (None, None),
    (S.COOLDOWN, I.DOMAIN_UP):       (None, None),
    (S.COOLDOWN, I.DOMAIN_HOLD):     (None, None),
    (S.COOLDOWN, I.DOMAIN_STOP):     (on_domain_stop, None),
    (S.COOLDOWN, I.COOLDOWN_EXPIRED): (on_cooldown_expired, watch),
    # --- FAILED: an incident is open and nobody recovers it ------------------------
    (S.FAILED, I.START):             (on_start, watch),
    (S.FAILED, I.HELLO):             (on_hello, watch),         # ends a hang incident
    (S.FAILED, I.HEARTBEAT):         (on_heartbeat, watch),     # ends a hang incident
    (S.FAILED, I.FAILURE):           (on_suppressed_failure, None),
    (S.FAILED, I.RECOVERED):         (on_recovered, watch),     # ends a process_failure incident
    (S.FAILED, I.GOODBYE):           (on_goodbye, S.DEPARTED),
    (S.FAILED, I.PAUSE):             (on_pause, None),
    (S.FAILED, I.RESUME):            (on_resume, None),
    (S.FAILED, I.HOST_PAUSE):        (on_host_pause, None),
    (S.FAILED, I.HOST_RESUME):       (on_host_resume, None),
    (S.FAILED, I.CONNECTED):         (None, None),
    (S.FAILED, I.CLOSED):            (None, None),
    (S.FAILED, I.DOMAIN_UP):         (None, None),
    (S.FAILED, I.DOMAIN_HOLD):       (None, None),
    (S.FAILED, I.DOMAIN_STOP):       (on_domain_stop, None),
    # --- DEPARTED: the agent said goodbye ------------------------------------------
    (S.DEPARTED, I.START):           (on_start, watch),
    (S.DEPARTED, I.HELLO):           (on_hello, watch),
    # heartbeat, failure, recovered, goodbye, pause, resume: ignored until it speaks up
    (S.DEPARTED, I.HOST_PAUSE):      (on_host_pause, None),     # the operator's word counts
    (S.DEPARTED, I.HOST_RESUME):     (on_host_resume, None),
    (S.DEPARTED, I.CONNECTED):       (None, None),
    (S.DEPARTED, I.CLOSED):          (None, None),
    (S.DEPARTED, I.DOMAIN_UP):       (None, None),
    (S.DEPARTED, I.DOMAIN_HOLD):     (None, None),
    (S.DEPARTED, I.DOMAIN_STOP):     (on_domain_stop, None),
}
# fmt: on

#: The states in which the detector watches the guest (ready to notify).
WATCHING = frozenset({State.ARMED, State.SUSPECT, State.AGENT_LOST, State.PAUSED})
