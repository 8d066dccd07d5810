"""The pipeline worker: stream → dedup → enrich → identity → sessions → lake, acking only what is durable."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import msgspec
import structlog

from data_plane.events import Event, decode_entry, decode_event, encode_event
from data_plane.lake.compactor import Compaction, Compactor
from data_plane.lake.store import ObjectStore, open_lake_store
from data_plane.lake.writer import LakeWriter
from data_plane.pipeline.dedup import Deduplicator, Sighting
from data_plane.pipeline.enrich import DEFAULT_POLICY, Enricher, EnrichmentPolicy
from data_plane.pipeline.identity import Resolution
from data_plane.pipeline.sessions import Sessionizer
from data_plane.pipeline.settings import (
    PipelineSettings,
    build_deduplicator,
    build_enricher,
    build_sessionizer,
    load_pipeline_settings,
)
from data_plane.profiles.port import ProfileStore, create_profile_store, load_profiles_settings
from data_plane.settings import CellSettings
from data_plane.stream.port import Entry, Stream
from data_plane.usage.ledger import Outcome, OutcomeKind, UsageLedger, open_ledger
from kernel.errors import Unavailable

log = structlog.get_logger("livora.pipeline")

GROUP = "pipeline"
# A read asks for about this many events (an entry carries one request's events of one partition).
DEFAULT_BATCH_EVENTS = 4_000
# Pending entries of partitions outside a worker's shard are taken over after this many idle
# periods only: their own worker, restarted, gets the first chance (one user stays in one worker).
FOREIGN_RECLAIM_FACTOR = 2

# Splits an entry into its events without validating them, to find the one that does not decode.
_raw_entry = msgspec.json.Decoder(list[msgspec.Raw] | msgspec.Raw)


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Stats:
    """What this worker did since it started, in events (reconciliation counts durable state, not these)."""

    read: int = 0
    written: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)


def delivery_id(entry_id: str, index: int) -> str:
    """One event's delivery: its entry's id and its place in the entry.

    Deterministic, so a redelivered entry yields the same ids: the lake writer names files by them,
    dedup keeps a redelivery of the same delivery, and the ledger counts each outcome once.
    """
    return f"{entry_id}#{index}"


def entry_of(delivery: str) -> str:
    return delivery.rpartition("#")[0]


def shard_partitions(shard: str, partitions: int) -> list[int] | None:
    """The partitions of shard ``"i/n"`` (those ``p`` with ``p % n == i``); ``None`` for ``""`` (all).

    ``ValueError`` for anything else, or when the shard would own no partition.
    """
    if not shard:
        return None
    index, sep, count = shard.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not int(index) < int(count):
        raise ValueError(f"a worker shard is 'i/n' with 0 <= i < n, got {shard!r}")
    owned = [p for p in range(partitions) if p % int(count) == int(index)]
    if not owned:
        raise ValueError(f"shard {shard!r} owns none of the stream's {partitions} partitions")
    return owned


@dataclass
class _Poison:
    """An event of an entry that goes to the dead letters once its good siblings are durable."""

    payload: bytes
    reason: str
    tenant_id: str
    received_at: dt.datetime
    delivery: str
    # Set when dedup recorded the event's first sighting under this delivery: released before the
    # event is dead-lettered, so that a replay of it is not taken for a duplicate.
    message_id: str | None = None


@dataclass
class _InFlight:
    """One stream entry being handled. Settled once none of its events waits for the lake: acked,
    or moved to the dead letters carrying just its poison events."""

    entry: Entry
    since: float = 0.0  # loop time it was taken
    size: int = 0
    waiting: set[str] = field(default_factory=set)
    poison: list[_Poison] = field(default_factory=list)
    # Delivery id -> (tenant, received_at, outcome) of the events settled so far (a dict: noting
    # the same delivery again, as a retried flush does, changes nothing).
    done: dict[str, tuple[str, dt.datetime, OutcomeKind]] = field(default_factory=dict)
    # The payload could not even be split into events: it is dead-lettered as it is.
    unreadable: bool = False


def _tenant_of(entry: Entry) -> str:
    return entry.partition_key.split("/", 1)[0]


def _poison_payload(poison: Sequence[_Poison]) -> bytes:
    """The poison events as one entry payload (a JSON array), which a replay appends as they are."""
    return b"[" + b",".join(p.payload for p in poison) + b"]"


class PipelineWorker:
    """At least once in, exactly once into the lake (and into profiles, which are idempotent per message).

    A stream entry carries several events. Each event has a delivery id (``delivery_id``); the
    entry is acked only when every one of its events is in a Parquet file the lake writer reports
    durable, or is a duplicate of an event already seen, or is poison (then the entry moves to the
    dead letters with just the poison events, after its good ones are durable). A worker killed at
    any point leaves its entries pending; ``reclaim`` hands them to the next worker, and the lake's
    deterministic file names plus dedup's delivery rule keep every event exactly once.

    ``partitions``: the stream partitions this worker reads (its shard). One user's events stay in
    one partition, so workers with disjoint shards never see the same user and keep their order
    and sessions; pending entries of other partitions are taken over only after
    ``FOREIGN_RECLAIM_FACTOR`` idle periods (their own worker, restarted, comes first).
    """

    def __init__(
        self,
        stream: Stream,
        dedup: Deduplicator,
        enricher: Enricher,
        profiles: ProfileStore,
        sessions: Sessionizer,
        lake: LakeWriter,
        *,
        lake_store: ObjectStore | None = None,
        group: str = GROUP,
        consumer: str | None = None,
        batch_size: int = 1000,
        batch_events: int = DEFAULT_BATCH_EVENTS,
        partitions: Collection[int] | None = None,
        block_ms: int = 200,
        reclaim_idle_ms: int = 10_000,
        max_deliveries: int = 5,
        policy_for: Callable[[str], EnrichmentPolicy] = lambda tenant_id: DEFAULT_POLICY,
        ledger: UsageLedger | None = None,
        max_session_profiles: int = 100_000,
        housekeeping_s: float = 300.0,
    ) -> None:
        self.stream = stream
        self.dedup = dedup
        self.enricher = enricher
        self.profiles = profiles
        self.sessions = sessions
        self.lake = lake
        self.lake_store = lake_store
        self.group = group
        self.consumer = consumer or default_consumer_name()
        self.batch_size = batch_size
        self.batch_events = batch_events
        self.partitions = sorted(partitions) if partitions is not None else None
        self.block_ms = block_ms
        self.reclaim_idle_ms = reclaim_idle_ms
        self.max_deliveries = max_deliveries
        self.policy_for = policy_for
        self.ledger = ledger
        self.max_session_profiles = max_session_profiles
        self.housekeeping_s = housekeeping_s
        self._housekept_at = 0.0
        # Tenants written lately (monotonic time of the last write): their closed hours get compacted.
        self._recent_tenants: dict[str, float] = {}
        self.stats = Stats()
        self._reclaimed_at = float("-inf")
        # The last reclaim came back full: more is waiting, reclaim again on the next step.
        self._reclaim_more = False
        # A sharded worker starts by taking over every entry still pending in its partitions,
        # whoever holds them (its shard's previous worker is gone), before it reads anything new:
        # one user's events are then handled in stream order across a restart.
        self._taking_over = self.partitions is not None
        # Events per entry lately: a read asks for about ``batch_events`` events. It starts high (a
        # full request's worth) so that a first read of big entries cannot take a huge batch, whose
        # processing would outlast the reclaim idle time.
        self._entry_events = 100.0
        # Delivery id -> (tenant, received_at) of what sits in the lake writer's buffers.
        self._buffered: dict[str, tuple[str, dt.datetime]] = {}
        # Written to the lake, not counted and settled yet (a later step of the flush failed).
        self._durable: list[str] = []
        self._inflight: dict[str, _InFlight] = {}

    async def _count(self, outcomes: list[Outcome]) -> None:
        if self.ledger is not None and outcomes:
            await self.ledger.outcomes(outcomes)

    # --- reading -----------------------------------------------------------------------------

    def _read_count(self) -> int:
        return max(1, min(self.batch_size, round(self.batch_events / self._entry_events)))

    async def _reclaim(self, count: int) -> list[Entry]:
        """Entries a dead (or slow) consumer held: of this worker's shard after ``reclaim_idle_ms``
        (at once while taking over), of any partition after ``FOREIGN_RECLAIM_FACTOR`` times that."""
        idle = 0 if self._taking_over else self.reclaim_idle_ms
        entries = await self.stream.reclaim(
            self.group, self.consumer, min_idle_ms=idle, count=count, partitions=self.partitions
        )
        if self._taking_over:
            self._taking_over = len(entries) >= count
            if entries:
                return entries
        if self.partitions is not None and len(entries) < count:
            entries += await self.stream.reclaim(
                self.group,
                self.consumer,
                min_idle_ms=self.reclaim_idle_ms * FOREIGN_RECLAIM_FACTOR,
                count=count - len(entries),
            )
        return entries

    async def _next_entries(self) -> list[Entry]:
        loop = asyncio.get_running_loop()
        count = self._read_count()
        entries: list[Entry] = []
        # NOTE: while a reclaim comes back full the next step reclaims again, so a dead worker's
        # backlog drains at the pace of processing instead of one batch per idle period.
        if self._taking_over or self._reclaim_more or loop.time() - self._reclaimed_at >= self.reclaim_idle_ms / 1000:
            self._reclaimed_at = loop.time()
            entries = await self._reclaim(count)
            # Our own entries still waiting in the lake's buffer do not mean a backlog.
            self._reclaim_more = sum(entry.id not in self._inflight for entry in entries) >= count
        if len(entries) < count:
            # Wait for new entries, but not past the moment the lake's buffer is due.
            due_in = self._flush_due_in()
            block = 0 if entries else self.block_ms if due_in is None else int(min(self.block_ms, due_in * 1000))
            entries += await self.stream.read(
                self.group, self.consumer, count=count - len(entries), block_ms=block, partitions=self.partitions
            )
        return entries

    def _decode(self, entry: Entry, track: _InFlight) -> list[tuple[str, Event]]:
        """The entry's events with their delivery ids; undecodable ones become ``track``'s poison."""
        try:
            events = decode_entry(entry.payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return self._decode_each(entry, track, exc)
        track.size = len(events)
        return [(delivery_id(entry.id, index), event) for index, event in enumerate(events)]

    def _decode_each(self, entry: Entry, track: _InFlight, error: Exception) -> list[tuple[str, Event]]:
        now = dt.datetime.now(dt.UTC)
        try:
            decoded = _raw_entry.decode(entry.payload)
        except msgspec.DecodeError:
            track.size, track.unreadable = 1, True
            delivery = delivery_id(entry.id, 0)
            track.poison.append(_Poison(entry.payload, f"undecodable: {error}", _tenant_of(entry), now, delivery))
            return []
        raws = decoded if isinstance(decoded, list) else [decoded]
        track.size = len(raws)
        good = []
        for index, raw in enumerate(raws):
            delivery = delivery_id(entry.id, index)
            try:
                good.append((delivery, decode_event(raw)))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                track.poison.append(_Poison(bytes(raw), f"undecodable: {exc}", _tenant_of(entry), now, delivery))
        return good

    # --- one batch ---------------------------------------------------------------------------

    async def step(self) -> int:
        """Process one read's worth of entries; flush the lake when due. Returns how many events this
        worker took on (0 when nothing new came)."""
        entries = await self._next_entries()
        tracks: list[_InFlight] = []
        try:
            await self._handle(entries, tracks)
        except BaseException:
            # Entries of this read that did not settle stay pending in the stream and come back by
            # reclaim; forgetting them here lets that happen (events already buffered for the lake
            # are written and counted once, by delivery id, whichever delivery writes them).
            for track in tracks:
                self._inflight.pop(track.entry.id, None)
            raise
        # While taking over, each batch is settled before the next reclaim, which would otherwise
        # hand this worker's own unsettled entries back to it (idle 0), counting a delivery each time.
        if self._taking_over or self._flush_due_in() == 0.0:
            await self.flush()
        return sum(track.size for track in tracks)

    def _flush_due_in(self) -> float | None:
        """Seconds until a flush is due: when the lake writer says so, and at the latest when the
        oldest entry held has waited half the reclaim idle time. NOTE: an entry held past that idle
        time is reclaimed, by this worker too, and every reclaim counts as a delivery; flushing
        sooner keeps a busy worker's own entries from ever nearing ``max_deliveries``."""
        due_in = self.lake.seconds_until_due()
        if not self._inflight:
            return due_in
        oldest = next(iter(self._inflight.values())).since  # insertion order: the oldest first
        held = max(0.0, oldest + self.reclaim_idle_ms / 2000 - asyncio.get_running_loop().time())
        return held if due_in is None else min(due_in, held)

    async def _handle(self, entries: list[Entry], tracks: list[_InFlight]) -> None:
        items: list[tuple[str, Event]] = []
        for entry in entries:
            if entry.id in self._inflight:
                continue  # ours, reclaimed while its events wait in the lake's buffer
            if entry.deliveries > self.max_deliveries:
                await self._give_up(entry, f"too_many_deliveries: {entry.deliveries} attempts")
                continue
            track = self._inflight[entry.id] = _InFlight(entry, asyncio.get_running_loop().time())
            tracks.append(track)
            items += self._decode(entry, track)
        if tracks:
            events = sum(track.size for track in tracks)
            self.stats.read += events
            self._entry_events = 0.7 * self._entry_events + 0.3 * (events / len(tracks))
        if items:
            keep = await self.dedup.filter_new(
                Sighting(event.tenant_id, event.message_id, event.received_at, delivery) for delivery, event in items
            )
            duplicates = [(d, event) for (d, event), new in zip(items, keep, strict=True) if not new]
            for d, event in duplicates:
                self._inflight[entry_of(d)].done[d] = (event.tenant_id, event.received_at, "duplicate")
            self.stats.duplicates += len(duplicates)
            fresh = [item for item, new in zip(items, keep, strict=True) if new]
            for delivery, _ in fresh:
                self._inflight[entry_of(delivery)].waiting.add(delivery)
            await self._process(fresh)
        await self._settle([track for track in tracks if not track.waiting])

    def _poison(self, delivery: str, event: Event, reason: str) -> None:
        """Set one fresh event aside for the dead letters (dedup saw it: release it then)."""
        track = self._inflight[entry_of(delivery)]
        track.waiting.discard(delivery)
        track.poison.append(
            _Poison(encode_event(event), reason, event.tenant_id, event.received_at, delivery, event.message_id)
        )

    async def _process(self, batch: list[tuple[str, Event]]) -> None:
        by_tenant: dict[str, list[tuple[str, Event]]] = {}
        enrich = self.enricher.enrich
        policies: dict[str, EnrichmentPolicy] = {}  # looked up once per tenant and batch
        for delivery, event in batch:
            policy = policies.get(event.tenant_id)
            if policy is None:
                policy = policies[event.tenant_id] = self.policy_for(event.tenant_id)
            try:
                enriched = enrich(event, policy)
            except Exception as exc:  # a poison event must not stop the pipeline
                self._poison(delivery, event, f"enrichment_failed: {type(exc).__name__}: {exc}")
                continue
            by_tenant.setdefault(event.tenant_id, []).append((delivery, enriched))
        add, buffered = self.lake.add, self._buffered
        assign, rekey = self.sessions.assign, self.sessions.rekey
        for tenant_id, items in by_tenant.items():
            resolved = await self._resolve(tenant_id, items)
            await self._load_sessions(tenant_id, [resolution for _, _, resolution in resolved if resolution])
            for delivery, event, resolution in resolved:
                if resolution is not None:
                    for merge in resolution.merges:
                        rekey(tenant_id, merge.from_profile, merge.into_profile)
                    profile_id = resolution.profile_id
                    session_id = assign(tenant_id, profile_id, event)
                    # One copy of the event with both ids (sessions and the lake read context).
                    context = {**event.context, "profile_id": profile_id, "session_id": session_id}
                    event = msgspec.structs.replace(event, context=context)
                add(event, delivery)
                buffered[delivery] = (tenant_id, event.received_at)

    async def _resolve(
        self, tenant_id: str, items: list[tuple[str, Event]]
    ) -> list[tuple[str, Event, Resolution | None]]:
        """Fold the tenant's events into their profiles in one call; isolate a poison event."""
        named = [(delivery, event) for delivery, event in items if event.user_id or event.anonymous_id]
        try:
            resolutions = await self.profiles.apply(tenant_id, [event for _, event in named])
        except ValueError:
            # The batch was refused whole: apply one by one (idempotent) to find the bad events.
            resolutions = []
            kept = []
            for delivery, event in named:
                try:
                    resolutions += await self.profiles.apply(tenant_id, [event])
                    kept.append((delivery, event))
                except ValueError as exc:
                    self._poison(delivery, event, f"profile_refused: {exc}")
            named = kept
        found = {delivery: resolution for (delivery, _), resolution in zip(named, resolutions, strict=True)}
        return [
            (delivery, event, found.get(delivery))
            for delivery, event in items
            if delivery in found or not (event.user_id or event.anonymous_id)
        ]

    async def _load_sessions(self, tenant_id: str, resolutions: list[Resolution]) -> None:
        """Bring the persisted sessions of the batch's profiles (and of profiles merged away) into memory."""
        wanted = {r.profile_id for r in resolutions} | {m.from_profile for r in resolutions for m in r.merges}
        unknown = self.sessions.unknown(tenant_id, wanted)
        if unknown:
            self.sessions.load(tenant_id, await self.profiles.load_sessions(tenant_id, unknown))

    # --- settling entries --------------------------------------------------------------------

    async def _settle(self, tracks: list[_InFlight]) -> None:
        """Count the entries' outcomes, then ack those whose events are all durable or duplicates
        and dead-letter the poison of the others. Counted first, once per entry id with all its
        events' outcomes, so a crash before the ack counts nothing twice when it comes back."""
        if not tracks:
            return
        outcomes: list[Outcome] = []
        for track in tracks:
            for p in track.poison:
                track.done[p.delivery] = (p.tenant_id, p.received_at, "dead_lettered")
            tally = Counter(track.done.values())
            outcomes += [Outcome(track.entry.id, t, at, kind, n) for (t, at, kind), n in tally.items()]
        await self._count(outcomes)
        clean = [track.entry.id for track in tracks if not track.poison]
        if clean:
            await self.stream.ack(self.group, clean)
            for entry_id in clean:
                del self._inflight[entry_id]
        for track in tracks:
            if track.poison:
                await self._dead_letter(track)

    async def _dead_letter(self, track: _InFlight) -> None:
        poison = track.poison
        for p in poison:
            if p.message_id is not None:
                await self.dedup.release(p.tenant_id, p.message_id, p.delivery)
        reasons = list(dict.fromkeys(p.reason for p in poison))
        reason = reasons[0] if len(reasons) == 1 else f"{reasons[0]} (and {len(reasons) - 1} other reasons)"
        # The whole entry as it was when every event of it is poison; else just the poison events.
        whole = track.unreadable or len(poison) == track.size
        payload = None if whole else _poison_payload(poison)
        if await self.stream.dead_letter(self.group, track.entry, reason, payload=payload) is not None:
            self.stats.dead_lettered += len(poison)
            for p in poison:
                self.stats.by_reason[p.reason.split(":", 1)[0]] += 1
            log.warning(
                "events_dead_lettered",
                entry_id=track.entry.id,
                tenant_id=poison[0].tenant_id,
                events=len(poison),
                of=track.size,
                reason=reason,
            )
        self._inflight.pop(track.entry.id, None)

    async def _give_up(self, entry: Entry, reason: str) -> None:
        """Dead-letter a whole entry (delivered too often), every event of it."""
        track = _InFlight(entry)
        now = dt.datetime.now(dt.UTC)
        try:
            events = decode_entry(entry.payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            track.size, track.unreadable = 1, True
            track.poison.append(_Poison(entry.payload, reason, _tenant_of(entry), now, delivery_id(entry.id, 0)))
        else:
            track.size = len(events)
            # Released too: a replay must be able to bring back an event that never reached the lake.
            track.poison = [
                _Poison(b"", reason, e.tenant_id, e.received_at, delivery_id(entry.id, i), e.message_id)
                for i, e in enumerate(events)
            ]
        await self._settle([track])

    # --- flushing ----------------------------------------------------------------------------

    async def flush(self) -> int:
        """Write the lake's buffers, then persist sessions and count, then settle entries: in that
        order, so an ack never comes before what it confirms is durable. Returns events written."""
        self._durable += await self.lake.flush()
        if not self._durable:
            return 0
        changes = self.sessions.take_changes()
        try:
            for tenant_id, states in changes.items():
                await self.profiles.save_sessions(tenant_id, states)
        except BaseException:
            self.sessions.restore_changes(changes)
            raise
        self.sessions.shrink(self.max_session_profiles)
        for delivery in self._durable:
            track = self._inflight.get(entry_of(delivery))
            written = self._buffered.get(delivery)
            if track is not None:
                if written is not None:
                    track.done[delivery] = (*written, "written")
                track.waiting.discard(delivery)
        # Every entry with nothing left waiting, also those a failed earlier settle left behind.
        await self._settle([track for track in self._inflight.values() if not track.waiting])
        durable, self._durable = self._durable, []
        now = asyncio.get_running_loop().time()
        for delivery in durable:
            written = self._buffered.pop(delivery, None)
            if written is not None:
                self._recent_tenants[written[0]] = now
        self.stats.written += len(durable)
        return len(durable)

    async def housekeeping(self) -> list[Compaction]:
        """Compact the closed hours of tenants written in the last two hours; forget expired dedup
        records and counted entry ids. Safe to run from several workers at once."""
        now = asyncio.get_running_loop().time()
        self._recent_tenants = {t: at for t, at in self._recent_tenants.items() if now - at < 7200}
        done: list[Compaction] = []
        if self.lake_store is not None:
            compactor = Compactor(self.lake_store)
            for tenant_id in sorted(self._recent_tenants):
                done += await compactor.compact_closed(tenant_id)
        # An hour behind the wall clock, as Deduplicator.purge asks.
        await self.dedup.purge(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
        if self.ledger is not None:
            await self.ledger.purge()
        if done:
            log.info("lake_compacted", partitions=len(done), files=sum(c.files for c in done))
        return done

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set; then flush what is buffered. Backs off while a dependency is down."""
        delay = 0.1
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                await self.step()
                if loop.time() - self._housekept_at >= self.housekeeping_s:
                    self._housekept_at = loop.time()
                    await self.housekeeping()
                delay = 0.1
            except Unavailable as exc:
                log.warning("pipeline_dependency_down", error=exc.detail, retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        try:
            await self.flush()
        except Unavailable as exc:
            log.warning("pipeline_final_flush_failed", error=exc.detail)

    async def close(self) -> None:
        if self.ledger is not None:
            await self.ledger.close()
        await self.dedup.close()
        await self.profiles.close()
        if self.lake_store is not None:
            await self.lake_store.close()


def create_worker(stream: Stream, cell: CellSettings, pipeline: PipelineSettings | None = None) -> PipelineWorker:
    """A worker wired from settings; embedded state (dedup, profiles) lives beside the cell's other state."""
    pipeline = pipeline or load_pipeline_settings()
    profiles = load_profiles_settings()
    if "LIVORA_PROFILES_SQLITE_ROOT" not in os.environ:
        profiles = msgspec.structs.replace(profiles, profiles_sqlite_root=str(cell.cell_dir))
    if "LIVORA_DEDUP_SQLITE_PATH" not in os.environ:
        pipeline = msgspec.structs.replace(pipeline, dedup_sqlite_path=str(cell.cell_dir / "dedup.db"))
    store = open_lake_store(cell)
    return PipelineWorker(
        stream,
        build_deduplicator(pipeline),
        build_enricher(pipeline),
        create_profile_store(profiles),
        build_sessionizer(pipeline),
        LakeWriter(store, max_rows=cell.lake_flush_rows, max_age_s=cell.lake_flush_seconds),
        lake_store=store,
        ledger=open_ledger(cell, stream),
        reclaim_idle_ms=int(pipeline.reclaim_idle_seconds * 1000),
        partitions=shard_partitions(pipeline.worker_shard, stream.partitions),
        batch_events=pipeline.worker_batch_events,
    )
