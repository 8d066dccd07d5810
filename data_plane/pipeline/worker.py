"""The pipeline worker: stream → dedup → enrich → identity → sessions → lake, acking only what is durable."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import structlog

from data_plane.events import Event, decode_event
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
from data_plane.usage.ledger import Outcome, UsageLedger
from kernel.errors import Unavailable

log = structlog.get_logger("livora.pipeline")

GROUP = "pipeline"


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Stats:
    """What this worker did since it started (reconciliation counts durable state, not these)."""

    read: int = 0
    written: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)


class PipelineWorker:
    """At least once in, exactly once into the lake (and into profiles, which are idempotent per message).

    An entry is acked only when its event is in a Parquet file the lake writer reports durable,
    or when it is a duplicate of an event already seen, or once it is dead-lettered. A worker
    killed at any point leaves its entries pending; ``reclaim`` hands them to the next worker, and
    the lake's deterministic file names plus dedup's delivery rule keep every event exactly once.
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
        block_ms: int = 200,
        reclaim_idle_ms: int = 30_000,
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
        self._reclaimed_at = 0.0
        # Stream id -> (tenant, received_at) of what sits in the lake writer's buffers.
        self._buffered: dict[str, tuple[str, dt.datetime]] = {}
        # Written to the lake, not acked yet (a later step of the flush failed): acked next time.
        self._durable: list[str] = []

    async def _count(self, outcomes: list[Outcome]) -> None:
        if self.ledger is not None and outcomes:
            await self.ledger.outcomes(outcomes)

    async def _dead_letter(self, entry: Entry, reason: str, event: Event | None = None, *, seen: bool = False) -> None:
        """Move the entry to the dead-letter store. Counted first (once per entry id, so a crash in
        between counts it once when the redelivery dead-letters it again). ``seen``: dedup recorded
        the event's first sighting, released so that a replay of it is not taken for a duplicate."""
        if event is not None:
            tenant_id, received_at = event.tenant_id, event.received_at
        else:
            tenant_id, received_at = entry.partition_key.split("/", 1)[0], dt.datetime.now(dt.UTC)
        await self._count([Outcome(entry.id, tenant_id, received_at, "dead_lettered")])
        if seen and event is not None:
            await self.dedup.release(event.tenant_id, event.message_id, entry.id)
        if await self.stream.dead_letter(self.group, entry, reason) is not None:
            self.stats.dead_lettered += 1
            self.stats.by_reason[reason.split(":", 1)[0]] += 1
            log.warning("event_dead_lettered", entry_id=entry.id, tenant_id=tenant_id, reason=reason)

    async def _next_entries(self) -> list[Entry]:
        loop = asyncio.get_running_loop()
        entries: list[Entry] = []
        # Entries a dead (or slow) consumer held come back after reclaim_idle_ms.
        if loop.time() - self._reclaimed_at >= self.reclaim_idle_ms / 1000:
            self._reclaimed_at = loop.time()
            entries = await self.stream.reclaim(
                self.group, self.consumer, min_idle_ms=self.reclaim_idle_ms, count=self.batch_size
            )
        if len(entries) < self.batch_size:
            # Wait for new entries, but not past the moment the lake's buffer is due.
            due_in = self.lake.seconds_until_due()
            block = 0 if entries else self.block_ms if due_in is None else int(min(self.block_ms, due_in * 1000))
            entries += await self.stream.read(
                self.group, self.consumer, count=self.batch_size - len(entries), block_ms=block
            )
        return entries

    async def step(self) -> int:
        """Process one read's worth of entries; flush the lake when due. Returns entries handled."""
        entries = await self._next_entries()
        self.stats.read += len(entries)
        decoded: list[tuple[Entry, Event]] = []
        for entry in entries:
            if entry.deliveries > self.max_deliveries:
                await self._dead_letter(entry, f"too_many_deliveries: {entry.deliveries} attempts")
                continue
            try:
                decoded.append((entry, decode_event(entry.payload)))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                await self._dead_letter(entry, f"undecodable: {exc}")
        if decoded:
            keep = await self.dedup.filter_new(
                Sighting(event.tenant_id, event.message_id, event.received_at, entry.id) for entry, event in decoded
            )
            duplicates = [(entry, event) for (entry, event), new in zip(decoded, keep, strict=True) if not new]
            if duplicates:
                await self._count(
                    [Outcome(entry.id, event.tenant_id, event.received_at, "duplicate") for entry, event in duplicates]
                )
                await self.stream.ack(self.group, [entry.id for entry, _ in duplicates])
                self.stats.duplicates += len(duplicates)
            await self._process([pair for pair, new in zip(decoded, keep, strict=True) if new])
        if self.lake.due():
            await self.flush()
        return len(entries)

    async def _process(self, batch: list[tuple[Entry, Event]]) -> None:
        enriched: list[tuple[Entry, Event]] = []
        for entry, event in batch:
            try:
                enriched.append((entry, self.enricher.enrich(event, self.policy_for(event.tenant_id))))
            except Exception as exc:  # a poison event must not stop the pipeline
                await self._dead_letter(entry, f"enrichment_failed: {type(exc).__name__}: {exc}", event, seen=True)
        by_tenant: dict[str, list[tuple[Entry, Event]]] = {}
        for entry, event in enriched:
            by_tenant.setdefault(event.tenant_id, []).append((entry, event))
        for tenant_id, items in by_tenant.items():
            resolved = await self._resolve(tenant_id, items)
            await self._load_sessions(tenant_id, [resolution for _, resolution in resolved if resolution is not None])
            for (entry, event), resolution in resolved:
                if resolution is not None:
                    for merge in resolution.merges:
                        self.sessions.rekey(tenant_id, merge.from_profile, merge.into_profile)
                    context = {**event.context, "profile_id": resolution.profile_id}
                    event = self.sessions.sessionize(
                        msgspec.structs.replace(event, context=context), resolution.profile_id
                    )
                self.lake.add(event, entry.id)
                self._buffered[entry.id] = (event.tenant_id, event.received_at)

    async def _resolve(
        self, tenant_id: str, items: list[tuple[Entry, Event]]
    ) -> list[tuple[tuple[Entry, Event], Resolution | None]]:
        """Fold the tenant's events into their profiles in one transaction; isolate a poison event."""
        named = [(entry, event) for entry, event in items if event.user_id or event.anonymous_id]
        try:
            resolutions = await self.profiles.apply(tenant_id, [event for _, event in named])
        except ValueError:
            # The batch was refused whole: apply one by one (idempotent) to find the bad events.
            resolutions = []
            kept = []
            for entry, event in named:
                try:
                    resolutions += await self.profiles.apply(tenant_id, [event])
                    kept.append((entry, event))
                except ValueError as exc:
                    await self._dead_letter(entry, f"profile_refused: {exc}", event, seen=True)
            named = kept
        found = {entry.id: resolution for (entry, _), resolution in zip(named, resolutions, strict=True)}
        alive = {entry.id for entry, _ in named} | {e.id for e, ev in items if not (ev.user_id or ev.anonymous_id)}
        return [((entry, event), found.get(entry.id)) for entry, event in items if entry.id in alive]

    async def _load_sessions(self, tenant_id: str, resolutions: list[Resolution]) -> None:
        """Bring the persisted sessions of the batch's profiles (and of profiles merged away) into memory."""
        wanted = {r.profile_id for r in resolutions} | {m.from_profile for r in resolutions for m in r.merges}
        unknown = self.sessions.unknown(tenant_id, wanted)
        if unknown:
            self.sessions.load(tenant_id, await self.profiles.load_sessions(tenant_id, unknown))

    async def flush(self) -> int:
        """Write the lake's buffers, then persist sessions and count, then ack: in that order, so an
        ack never comes before what it confirms is durable."""
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
        await self._count(
            [
                Outcome(stream_id, *self._buffered[stream_id], "written")
                for stream_id in self._durable
                if stream_id in self._buffered
            ]
        )
        await self.stream.ack(self.group, self._durable)
        durable, self._durable = self._durable, []
        now = asyncio.get_running_loop().time()
        for stream_id in durable:
            written = self._buffered.pop(stream_id, None)
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
        ledger=UsageLedger(cell.usage_path),
        reclaim_idle_ms=int(pipeline.reclaim_idle_seconds * 1000),
    )
