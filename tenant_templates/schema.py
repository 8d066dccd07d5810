"""The blueprint schema: what a tenant's cell space needs and the starter content it begins with."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,39}$", description="snake_case identifier")]
Title = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
EventName = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9 _.:-]+$")]
Positive = Annotated[int, msgspec.Meta(ge=1)]

Store = Literal["profiles", "warehouse", "crm", "campaigns"]
PropertyType = Literal["string", "number", "boolean", "datetime", "object", "array"]
Plan = Literal["free", "growth", "enterprise"]


class Resources(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What the tenant's cell space is made of."""

    # Stream partitions (Redis Streams keys or Kinesis shards) for the tenant's events.
    stream_partitions: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    # Days raw events stay in the lake before lifecycle rules expire them.
    lake_retention_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 395
    # Days before lake objects move to infrequent-access storage (AWS cells).
    lake_infrequent_access_days: Annotated[int, msgspec.Meta(ge=30, le=3650)] = 90
    stores: list[Store] = msgspec.field(default_factory=lambda: ["profiles"])


class RateLimits(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    events_per_second: Positive
    burst_events: Positive
    max_batch_events: Annotated[int, msgspec.Meta(ge=1, le=2500)]


class PlanDefaults(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    plan: Plan = "free"
    seats: Positive = 5
    monthly_tracked_users: Positive = 10_000


class TrackedProperty(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    type: PropertyType
    required: bool = False


class TrackedEvent(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One event the tracking plan expects, with its properties."""

    event: EventName
    description: str = ""
    properties: list[TrackedProperty] = []


class Condition(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``event`` performed at least ``min_count`` times in the last ``within_days`` days."""

    event: EventName
    min_count: Positive = 1
    within_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 30
    negate: bool = False


class Segment(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    title: Title
    # All conditions hold (AND).
    conditions: Annotated[list[Condition], msgspec.Meta(min_length=1)]


class Widget(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["count", "trend", "funnel", "retention", "top"]
    title: Title
    events: Annotated[list[EventName], msgspec.Meta(min_length=1)]


class Dashboard(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    title: Title
    widgets: Annotated[list[Widget], msgspec.Meta(min_length=1)]


class Stage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    title: Title
    # Probability of winning from this stage, in percent (pipeline forecasts).
    probability: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0


class Pipeline(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    title: Title
    stages: Annotated[list[Stage], msgspec.Meta(min_length=2)]


class JourneyStep(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["wait", "email", "sms", "whatsapp", "webhook", "exit_if"]
    # wait: hours; email/sms/whatsapp: a message template name; exit_if: an event name.
    value: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class Journey(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    title: Title
    trigger: EventName
    steps: Annotated[list[JourneyStep], msgspec.Meta(min_length=1)]


class Starter(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Content a new tenant starts with; kept with the tenant and used as each feature arrives."""

    tracking_plan: list[TrackedEvent] = []
    segments: list[Segment] = []
    dashboards: list[Dashboard] = []
    crm_pipelines: list[Pipeline] = []
    journeys: list[Journey] = []


class Blueprint(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One version of one template, as written in its data file."""

    name: Name
    version: Positive
    title: Title
    description: str = ""
    # Another template whose starter content this one starts from (its latest version).
    extends: Name | None = None
    # Omitted: the parent's resources.
    resources: Resources | None = None
    rate_limits: RateLimits | None = None
    plan_defaults: PlanDefaults | None = None
    starter: Starter = msgspec.field(default_factory=Starter)


class Template(msgspec.Struct, kw_only=True, frozen=True):
    """A blueprint with its parent folded in: everything a run needs, nothing left to resolve."""

    name: str
    version: int
    title: str
    description: str
    resources: Resources
    rate_limits: RateLimits
    plan_defaults: PlanDefaults
    starter: Starter
