"""A host-wide CPU budget for guest input, shared fairly between channels.

Sans-I/O: the caller measures the CPU time it spent on one channel's input
(``time.thread_time()`` around decoding it and feeding the detector) and
charges it here with ``now`` passed in; this module only does the sums.

Every channel has a :class:`CpuAccount`: a bucket of CPU seconds that refills
at the channel's fair rate and may go into debt (a chunk is decoded whole,
then paid for).  A channel reads only while its balance is positive; in debt,
it waits ``debt / rate`` seconds without reading, so the kernel's socket
buffer fills and QEMU holds that guest back.  Nothing is dropped.

The fair rate is recomputed once per window (1 s) by max-min fairness over
what each channel used in the last window: channels that never had to wait
keep what they used, and what is left of ``[channels] decode_budget`` (a
fraction of one core) is split evenly between those that did.  So a quiet
instance is never slowed down by 60 flooding ones, and the flooders together
get at most the budget, whatever they send.  The CPU a read costs the event
loop outside the measured part (waking up, waiting, timers) is covered by
comparing the loop thread's CPU over each window with what was charged: the
budget shrinks by that ratio while channels contend.  Until the shares catch up with
a flood that just started, a host-wide balance holds back every channel
that used more than a trickle in the current window.  A channel within its
trickle (``TRICKLE`` CPU s per window, many heartbeats' worth) is never held
back, however many instances share the host: only what a channel uses beyond
it draws on the budget.  No wait is longer than a window when it comes from
the host-wide balance or from a channel that was within its trickle in the
last window: a one-off spike charged to an honest channel (a garbage
collection that ran while it was read) is not slept off at a 2,000-way share.
"""

from __future__ import annotations

from typing import Callable, Optional

WINDOW = 1.0  # seconds between recomputations of the fair rate
BURST = 0.25  # seconds of its fair rate a channel may bank while idle
MAX_OVERHEAD = 20.0  # loop CPU per charged CPU s: a bound on the correction
# CPU s per window a channel may use whatever the budget says: many heartbeats'
# worth (one costs well under 1 ms), so 2,000 honest instances are never held
# back; only what a channel uses beyond it draws on the budget.
TRICKLE = 0.003


def fair_rate(light: list[float], heavy: int, capacity: float) -> float:
    """Max-min fair rate (CPU s/s) for ``capacity`` between channels.

    ``light``: what each channel that never had to wait used (its whole need);
    ``heavy``: how many channels wanted more than they got.  With nobody
    wanting more, any channel may use the whole capacity.
    """
    remaining = capacity
    n = len(light) + heavy
    for i, used in enumerate(sorted(light)):
        if used * (n - i) >= remaining:
            return remaining / (n - i)
        remaining -= used
    return remaining / heavy if heavy else capacity


class CpuAccount:
    """One channel's share of the budget; ``wait(now)`` says how long it must not read."""

    def __init__(self, budget: DecodeBudget, now: float) -> None:
        self._budget = budget
        self.balance = budget.rate * BURST
        self._stamp = now
        self.used = 0.0  # CPU seconds this window
        self.waited = False  # had to wait this window
        self.cpu_total = 0.0  # CPU seconds charged since the account was opened
        self.waits = 0  # times it had to stop reading
        self.light_before = True  # within its trickle in the last window (new: yes)

    def _refill(self, now: float) -> float:
        rate = self._budget.rollover(now)
        self.balance = min(rate * BURST, self.balance + (now - self._stamp) * rate)
        self._stamp = now
        return rate

    def wait(self, now: float) -> float:
        """Seconds to wait before reading again (0: read now)."""
        rate = self._refill(now)
        if self.used <= TRICKLE:
            # An honest agent's heartbeats never cost this much: however many
            # instances share the host, a quiet channel is never held back.
            return 0.0
        window = self._budget.window
        if self.balance <= 0:
            wait = -self.balance / rate
        else:
            # Shares lag one window behind (a flood that just started): the
            # host-wide balance then holds back every channel past its trickle,
            # for at most that window: then the shares say who pays.
            wait = min(self._budget.overdrawn(now), window)
            if wait <= 0:
                return 0.0
        self.waited = True
        self.waits += 1
        if self.light_before:
            # A channel that stayed within its trickle in the last window (or is
            # new) went over it at once: a one-off spike charged to an honest
            # channel (a garbage collection that ran while it was read, its
            # first hello's logging), or the first chunk of a flood.  Paying that
            # off at a 2,000-way fair share can take minutes (0.25 of a core /
            # 2,000 channels: 8 ms of debt is 64 s), a silence that would report
            # a healthy guest hung (seen once in 5 runs of relay_scale).  So it
            # waits at most a window; its trickle is then renewed.  A flooder's
            # next window is not light, and it waits its debt off as before.
            wait = min(wait, window)
        return wait + 1e-3

    def charge(self, cpu: float, now: float) -> None:
        """``cpu`` seconds were spent on this channel's input."""
        self._refill(now)
        cpu = max(0.0, cpu)
        self.balance -= cpu
        self.used += cpu
        self.cpu_total += cpu
        self._budget.spend(cpu, now, counted=self.used > TRICKLE)

    def open(self) -> None:
        """Count this account in the fair shares (again); idempotent."""
        self._budget.adopt(self)

    def close(self) -> None:
        """Stop counting it (its channel stopped reading); idempotent."""
        self._budget.release(self)


class DecodeBudget:
    """``fraction`` of one core for all channels' input together."""

    def __init__(self, fraction: float, now: float, window: float = WINDOW,
                 loop_cpu: Optional[Callable[[], float]] = None) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"decode budget must be within (0, 1], got {fraction}")
        self.fraction = fraction
        self.window = window
        self.rate = fraction  # fair rate per channel, CPU s per s
        # What the measured reads cost does not include the loop's own work per
        # read (waiting, waking, timers): the CPU of the loop's thread over a
        # window, against what was charged, scales the budget down to cover it.
        self._loop_cpu = loop_cpu
        self._loop_mark = loop_cpu() if loop_cpu is not None else 0.0
        self._charged_mark = 0.0
        self._counted_mark = 0.0
        self.overhead = 1.0  # loop CPU per charged CPU s, last window (1: not measured)
        self.cpu_total = 0.0
        self.counted_total = 0.0  # of which beyond the channels' trickles
        self.balance = fraction * BURST  # host-wide, for the window before shares are known
        self._stamp = now
        self._window_start = now
        self._accounts: set[CpuAccount] = set()

    def _refill(self, now: float) -> None:
        self.balance = min(self.fraction * BURST,
                           self.balance + (now - self._stamp) * self.fraction)
        self._stamp = now

    def spend(self, cpu: float, now: float, counted: bool = True) -> None:
        """``cpu`` s were charged; ``counted``: beyond a channel's trickle (draws on the budget)."""
        self.cpu_total += cpu
        if counted:
            self._refill(now)
            self.balance -= cpu
            self.counted_total += cpu

    def overdrawn(self, now: float) -> float:
        """Seconds until the host-wide balance is positive again (0: it is)."""
        self._refill(now)
        return 0.0 if self.balance > 0 else -self.balance / self.fraction

    def account(self, now: float) -> CpuAccount:
        acc = CpuAccount(self, now)
        self._accounts.add(acc)
        return acc

    def adopt(self, account: CpuAccount) -> None:
        self._accounts.add(account)

    def release(self, account: CpuAccount) -> None:
        self._accounts.discard(account)

    @property
    def channels(self) -> int:
        return len(self._accounts)

    @property
    def heavy(self) -> int:
        """Channels that had to wait in the current window."""
        return sum(1 for a in self._accounts if a.waited)

    def rollover(self, now: float) -> float:
        """The fair rate, recomputed when a window has passed."""
        if now - self._window_start < self.window:
            return self.rate
        span = now - self._window_start
        light: list[float] = []
        heavy = 0
        for acc in self._accounts:
            if acc.waited:
                heavy += 1
            elif acc.used > 0:
                light.append(acc.used / span)
            acc.light_before = acc.used <= TRICKLE
            acc.used = 0.0
            acc.waited = False
        if self._loop_cpu is not None:
            loop = self._loop_cpu() - self._loop_mark
            counted = self.counted_total - self._counted_mark
            free = (self.cpu_total - self._charged_mark) - counted  # within trickles
            if counted > 0 and heavy:
                self.overhead = min(max((loop - free) / counted, 1.0), MAX_OVERHEAD)
            else:
                self.overhead = 1.0
            self._loop_mark += loop
            self._charged_mark, self._counted_mark = self.cpu_total, self.counted_total
        capacity = self.fraction / self.overhead
        self.rate = max(fair_rate(light, heavy, capacity), self.fraction * 1e-4)
        self._window_start = now
        return self.rate
