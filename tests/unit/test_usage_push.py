"""The usage outbox: growth becomes records once, unconfirmed records go again under the same id."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from data_plane.contract.schemas import UsageReceipt, UsageReport
from data_plane.usage.ledger import MAX_KEYS_PER_RECORD, UsageLedger
from data_plane.usage.push import InProcessUsageSink, UsagePusher
from kernel.errors import Unavailable

AT = dt.datetime(2026, 5, 4, 13, 45, tzinfo=dt.UTC)


class Desk:
    """A control plane that counts each record id once, and can be down."""

    def __init__(self) -> None:
        self.down = False
        self.seen: dict[str, object] = {}
        self.deliveries = 0

    async def take(self, report: UsageReport) -> UsageReceipt:
        self.deliveries += 1
        if self.down:
            raise Unavailable("control plane unreachable", code="control_plane_unreachable")
        new = [r for r in report.records if r.id not in self.seen]
        for record in new:
            self.seen[record.id] = record
        return UsageReceipt(stored=len(new), duplicates=len(report.records) - len(new))

    def events(self, tenant: str) -> int:
        """Events received (billed events follow the pipeline's outcomes, see test_usage_reports)."""
        return sum(r.value for r in self.seen.values() if r.tenant_id == tenant and r.metric == "events_received")  # type: ignore[attr-defined]

    def users(self, tenant: str) -> set[str]:
        return {k for r in self.seen.values() if r.tenant_id == tenant and r.metric == "tracked_users" for k in r.keys}  # type: ignore[attr-defined]


def test_usage_reaches_the_control_plane_once_through_outages(tmp_path):
    async def scenario() -> None:
        ledger = UsageLedger(tmp_path / "usage.db")
        desk = Desk()
        pusher = UsagePusher(ledger, InProcessUsageSink(desk.take), "cell-1", batch=3)
        await ledger.accepted("t1", AT, 100, {"u1", "u2"})
        await ledger.accepted("t2", AT, 7, {"x"})
        assert await pusher.push() == 4  # two events records, two users records
        assert (desk.events("t1"), desk.users("t1"), desk.events("t2")) == (100, {"u1", "u2"}, 7)
        assert await pusher.push() == 0  # nothing new

        # The control plane is down: usage keeps accumulating in the outbox, nothing is lost.
        desk.down = True
        await ledger.accepted("t1", AT, 50, {"u2", "u3"})
        with pytest.raises(Unavailable):
            await pusher.push()
        await ledger.accepted("t1", AT + dt.timedelta(hours=1), 5, {"u1"})
        with pytest.raises(Unavailable):
            await pusher.push()
        assert await ledger.unconfirmed() > 0
        desk.down = False
        await pusher.push()
        assert await ledger.unconfirmed() == 0
        assert desk.events("t1") == 155
        assert desk.users("t1") == {"u1", "u2", "u3"}
        await ledger.close()

    asyncio.run(scenario())


def test_a_report_whose_answer_was_lost_is_sent_again_under_the_same_ids(tmp_path):
    async def scenario() -> None:
        ledger = UsageLedger(tmp_path / "usage.db")
        await ledger.accepted("t1", AT, 10, {"a"})
        first = await ledger.take_reports()
        # The answer never came (crash, timeout): the next attempt carries the very same records.
        again = await ledger.take_reports()
        assert [r.id for r in again] == [r.id for r in first]
        await ledger.confirm([r.id for r in first])
        assert await ledger.take_reports() == []
        await ledger.close()
        # And across a restart.
        reopened = UsageLedger(tmp_path / "usage.db")
        await reopened.accepted("t1", AT, 1, set())
        [record] = await reopened.take_reports()
        assert (record.metric, record.value) == ("events_received", 1)
        await reopened.close()
        reopened = UsageLedger(tmp_path / "usage.db")
        assert [r.id for r in await reopened.take_reports()] == [record.id]
        await reopened.close()

    asyncio.run(scenario())


def test_many_users_are_split_into_bounded_records(tmp_path):
    async def scenario() -> None:
        ledger = UsageLedger(tmp_path / "usage.db")
        keys = {f"user-{i}" for i in range(MAX_KEYS_PER_RECORD * 2 + 1)}
        await ledger.accepted("t1", AT, len(keys), keys)
        records = await ledger.take_reports(limit=10_000)
        users = [r for r in records if r.metric == "tracked_users"]
        assert len(users) == 3
        assert all(len(r.keys) <= MAX_KEYS_PER_RECORD for r in users)
        assert {k for r in users for k in r.keys} == keys
        assert {r.timestamp for r in records} == {dt.datetime(2026, 5, 4, 13, tzinfo=dt.UTC)}
        await ledger.close()

    asyncio.run(scenario())


def test_purge_drops_reported_user_rows_of_closed_hours_only(tmp_path):
    async def scenario() -> None:
        ledger = UsageLedger(tmp_path / "usage.db")
        old, recent = AT - dt.timedelta(hours=5), AT
        await ledger.accepted("t1", old, 2, {"a", "b"})
        await ledger.confirm([r.id for r in await ledger.take_reports()])  # reported: a and b of the old hour
        await ledger.accepted("t1", old, 1, {"c"})  # not reported yet: must stay
        await ledger.accepted("t1", recent, 1, {"d"})
        await ledger.confirm([r.id for r in await ledger.take_reports()])  # reports c and d
        await ledger.accepted("t1", old, 1, {"e"})  # unreported again
        assert await ledger.purge(now=AT + dt.timedelta(minutes=30)) == 3  # a, b, c
        hours = {h.hour: h for h in await ledger.hours("t1")}
        assert hours[dt.datetime(2026, 5, 4, 8, tzinfo=dt.UTC)].users == 1  # e, still to report
        assert hours[dt.datetime(2026, 5, 4, 13, tzinfo=dt.UTC)].users == 1  # the current hour keeps d
        assert hours[dt.datetime(2026, 5, 4, 8, tzinfo=dt.UTC)].accepted == 4  # counts are untouched
        [record] = [r for r in await ledger.take_reports() if r.metric == "tracked_users"]
        assert record.keys == ["e"]
        await ledger.close()

    asyncio.run(scenario())
