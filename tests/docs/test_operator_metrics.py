"""The metrics table in docs/operator.md is what a running relay serves at /metrics.

A real relay (in-process, as tests/host_relay/test_metrics.py runs it) with
two guests, one of them failed, is scraped over HTTP; the table is compared
with the families in that scrape, both ways: every `iim_relay_*` family the
relay serves has a row, with its type and labels, and every metric the guide
names anywhere is served.  Nothing here lists metric names: a metric added to
the relay without a row, or a row left behind by a removed one, fails.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")  # the relay's side

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from iim_protocol.codec import encode  # noqa: E402
from iim_protocol.messages import Failure, Heartbeat  # noqa: E402
from tests.host_relay.relay_testing import FakeGuest, short_dir, wait_until  # noqa: E402
from tests.host_relay.test_metrics import (  # noqa: E402
    HELLO,
    UUID_A,
    UUID_B,
    WAIT,
    fetch,
    free_port,
    make_relay,
)
from tests.host_relay.test_service import Running  # noqa: E402

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operator.md"
PREFIX = "iim_relay_"
# Sample suffixes of a family, by type (the exposition format's own).
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum",
                                                             "_created")}


@dataclass
class Served:
    type: str
    labels: set[str] = field(default_factory=set)
    samples: int = 0


@dataclass
class Row:
    names: list[str]
    type: str
    labels: set[str]


@pytest.fixture(scope="module")
def scrape() -> dict[str, Served]:
    """{family name: what it carried} from a relay with a healthy and a failed guest."""
    dirs = short_dir()
    state_dir = next(dirs)
    port = free_port()
    relay, settings = make_relay(state_dir, listen=f"127.0.0.1:{port}")

    async def main() -> str:
        async with Running(relay):
            a = await FakeGuest(settings.channels.socket_dir, UUID_A).start()
            b = await FakeGuest(settings.channels.socket_dir, UUID_B).start()
            await a.wait_connected()
            await b.wait_connected()
            corrupt = bytearray(encode(Heartbeat(seq=2)))
            corrupt[-1] ^= 0xFF  # a bad CRC: a rejected frame, counted by reason
            await a.send(HELLO, Heartbeat(seq=1))
            await a.send_raw(b"\x00garbage\x00" + bytes(corrupt))
            await b.send(HELLO, Failure(seq=1, check="db", reason="postgres exited"))
            await wait_until(lambda: relay.outbox.latest_for(UUID_B) is not None, WAIT)
            await wait_until(lambda: relay.channels[UUID_A].counters["heartbeats"] >= 1, WAIT)
            text = await asyncio.to_thread(fetch_when_up, port)
            await a.stop()
            await b.stop()
            return text

    try:
        text = asyncio.run(main())
    finally:
        dirs.close()  # removes the directory
    families: dict[str, Served] = {}
    for family in text_string_to_metric_families(text):
        served = families.setdefault(family.name, Served(family.type))
        for sample in family.samples:
            served.samples += 1
            served.labels |= set(sample.labels) - {"le"}
    # prometheus_client writes a histogram's or counter's creation time as a gauge
    # family `<name>_created` of its own: part of <name>, not a metric to document.
    return {name: s for name, s in families.items()
            if not (name.endswith("_created") and name[: -len("_created")] in families)}


def fetch_when_up(port: int) -> str:
    """The scrape, once the metrics server answers (bounded: 100 tries, 5 s)."""
    for _ in range(100):
        try:
            return fetch(f"http://127.0.0.1:{port}/metrics")
        except OSError:  # not listening yet (URLError is an OSError)
            time.sleep(0.05)
    return fetch(f"http://127.0.0.1:{port}/metrics")


def table() -> list[Row]:
    """The rows of the table under "## Metrics" (metric | type | labels | what)."""
    section = GUIDE.read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("metric", "") or set(cells[0]) <= {"-"}:
            continue
        rows.append(Row(names=re.findall(r"`(\w+)`", cells[0]), type=cells[1],
                        labels=set(re.findall(r"`(\w+)`", cells[2]))))
    assert rows, "no metrics table under '## Metrics' in docs/operator.md"
    return rows


def family_of(name: str, type_: str) -> str:
    """The family a documented name belongs to (`x_total` is the counter `x`)."""
    for suffix in SUFFIXES.get(type_, ()):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_every_served_family_has_a_row_with_its_type(scrape) -> None:
    ours = {name: s for name, s in scrape.items() if name.startswith(PREFIX)}
    documented = {family_of(n, row.type): row for row in table() for n in row.names}
    missing = sorted(set(ours) - set(documented))
    assert not missing, f"docs/operator.md has no row for the served metrics {missing}"
    for name, served in ours.items():
        assert documented[name].type == served.type, (
            f"docs/operator.md: {name} is a {served.type}, not a {documented[name].type}")


def test_every_row_names_served_families_with_their_labels(scrape) -> None:
    unchecked = []
    for row in table():
        families = [family_of(n, row.type) for n in row.names]
        for name, family in zip(row.names, families):
            assert family in scrape, f"docs/operator.md names {name}: the relay does not serve it"
            assert name == family or name[len(family):] == SUFFIXES[row.type][0], (
                f"docs/operator.md: write {name} as the metric a query uses")
        served = [scrape[f] for f in families if scrape[f].samples]
        if not served:
            unchecked += row.names
            continue
        labels = set().union(*(s.labels for s in served))
        assert labels == row.labels, (
            f"docs/operator.md: {', '.join(row.names)} carry labels {sorted(labels)}, "
            f"the table says {sorted(row.labels)}")
    # The scrape has samples for every row but one (part restarts: none without a crash),
    # so the label check is not vacuous.
    assert len(unchecked) <= 1, f"no samples to check the labels of: {unchecked}"


def test_every_metric_named_in_the_guide_is_served(scrape) -> None:
    samples = set()
    for name, served in scrape.items():
        samples.add(name)
        samples.update(name + s for s in SUFFIXES.get(served.type, ()))
    named = set(re.findall(rf"`({PREFIX}\w+)", GUIDE.read_text()))
    assert named, "docs/operator.md names no metric"
    unknown = sorted(named - samples)
    assert not unknown, f"docs/operator.md names metrics the relay does not serve: {unknown}"
