"""Loading and validating blueprints: ``blueprints/{name}/v{version}.toml``, parents folded in."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import msgspec

from tenant_templates.schema import Blueprint, PlanDefaults, RateLimits, Resources, Starter, Template

BLUEPRINTS = Path(__file__).resolve().parent / "blueprints"
_FILE = re.compile(r"v([1-9][0-9]*)\.toml")
_AT = re.compile(r"\s*-\s*at `(\$[^`]*)`")


class TemplateError(ValueError):
    """A blueprint that does not validate: which file, which field (a JSON path), and why."""

    def __init__(self, file: str, field: str, message: str) -> None:
        super().__init__(f"{file}: {field}: {message}")
        self.file = file
        self.field = field
        self.message = message


def parse(path: Path) -> Blueprint:
    """Read one data file into a ``Blueprint``; shape errors name the field's path (``$.resources.…``)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TemplateError(str(path), "$", f"not valid TOML: {exc}") from None
    try:
        blueprint = msgspec.convert(raw, Blueprint)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _AT.search(message)
        raise TemplateError(str(path), match.group(1) if match else "$", _AT.sub("", message)) from None
    found = _FILE.fullmatch(path.name)
    if found and int(found.group(1)) != blueprint.version:
        raise TemplateError(str(path), "$.version", f"is {blueprint.version} but the file is named {path.name}")
    if path.parent.name != blueprint.name and path.parent != BLUEPRINTS:
        raise TemplateError(str(path), "$.name", f"is {blueprint.name!r} but the file is in {path.parent.name}/")
    return blueprint


def _unique(file: str, where: str, names: Iterable[str]) -> None:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            raise TemplateError(file, f"{where}[{index}].name", f"{name!r} appears twice")
        seen.add(name)


def _merge(parent: list[Any], own: list[Any], key: str) -> list[Any]:
    """The parent's items, then the child's; a child item with the same key replaces the parent's."""
    mine = {getattr(item, key): item for item in own}
    return [mine.pop(getattr(item, key), item) for item in parent] + list(mine.values())


def resolve(blueprint: Blueprint, parent: Template | None, file: str) -> Template:
    """Fold ``parent`` in and check what the schema alone cannot: references and uniqueness."""
    if blueprint.extends and parent is None:
        raise TemplateError(file, "$.extends", f"no template {blueprint.extends!r}")
    resources: Resources | None = blueprint.resources or (parent.resources if parent else None)
    rate_limits: RateLimits | None = blueprint.rate_limits or (parent.rate_limits if parent else None)
    plan_defaults: PlanDefaults | None = blueprint.plan_defaults or (parent.plan_defaults if parent else None)
    for field, value in (("resources", resources), ("rate_limits", rate_limits), ("plan_defaults", plan_defaults)):
        if value is None:
            raise TemplateError(file, f"$.{field}", "required in a template that extends none")
    assert resources is not None and rate_limits is not None and plan_defaults is not None
    if "profiles" not in resources.stores:
        raise TemplateError(file, "$.resources.stores", "must include 'profiles'")
    if rate_limits.burst_events < rate_limits.events_per_second:
        raise TemplateError(file, "$.rate_limits.burst_events", "must be at least events_per_second")
    own = blueprint.starter
    _unique(file, "$.starter.tracking_plan", (e.event for e in own.tracking_plan))
    for section in ("segments", "dashboards", "crm_pipelines", "journeys"):
        _unique(file, f"$.starter.{section}", (item.name for item in getattr(own, section)))
    base = parent.starter if parent else Starter()
    starter = Starter(
        tracking_plan=_merge(base.tracking_plan, own.tracking_plan, "event"),
        segments=_merge(base.segments, own.segments, "name"),
        dashboards=_merge(base.dashboards, own.dashboards, "name"),
        crm_pipelines=_merge(base.crm_pipelines, own.crm_pipelines, "name"),
        journeys=_merge(base.journeys, own.journeys, "name"),
    )
    planned = {event.event for event in starter.tracking_plan}

    def check_event(where: str, event: str) -> None:
        if event not in planned:
            raise TemplateError(file, where, f"event {event!r} is not in the tracking plan")

    for i, segment in enumerate(own.segments):
        for j, condition in enumerate(segment.conditions):
            check_event(f"$.starter.segments[{i}].conditions[{j}].event", condition.event)
    for i, dashboard in enumerate(own.dashboards):
        for j, widget in enumerate(dashboard.widgets):
            for k, event in enumerate(widget.events):
                check_event(f"$.starter.dashboards[{i}].widgets[{j}].events[{k}]", event)
    for i, journey in enumerate(own.journeys):
        check_event(f"$.starter.journeys[{i}].trigger", journey.trigger)
        for j, step in enumerate(journey.steps):
            if step.kind == "exit_if":
                check_event(f"$.starter.journeys[{i}].steps[{j}].value", step.value)
            elif step.kind == "wait" and not (step.value.isdigit() and 0 < int(step.value) <= 24 * 365):
                raise TemplateError(file, f"$.starter.journeys[{i}].steps[{j}].value", "a wait is whole hours, 1…8760")
    return Template(
        name=blueprint.name,
        version=blueprint.version,
        title=blueprint.title,
        description=blueprint.description,
        resources=resources,
        rate_limits=rate_limits,
        plan_defaults=plan_defaults,
        starter=starter,
    )


@dataclass(frozen=True)
class Catalog:
    """Every template version in a folder, resolved. ``get(name)`` is the latest version."""

    templates: dict[str, dict[int, Template]]

    @classmethod
    def load(cls, root: Path = BLUEPRINTS, extra: Iterable[Path] = ()) -> Catalog:
        """Parse and resolve every blueprint under ``root`` (and ``extra`` files); the first bad one raises."""
        blueprints: dict[str, dict[int, tuple[Blueprint, str]]] = {}
        for path in [*sorted(root.glob("*/v*.toml")), *extra]:
            blueprint = parse(path)
            if blueprint.version in blueprints.get(blueprint.name, {}):
                raise TemplateError(str(path), "$.version", f"{blueprint.name} v{blueprint.version} is defined twice")
            blueprints.setdefault(blueprint.name, {})[blueprint.version] = (blueprint, str(path))
        resolved: dict[str, dict[int, Template]] = {}
        resolving: list[str] = []

        def latest(name: str) -> Template | None:
            if name in resolved:
                return resolved[name][max(resolved[name])]
            if name not in blueprints:
                return None
            if name in resolving:
                chain = " → ".join([*resolving, name])
                bad = blueprints[name][max(blueprints[name])][1]
                raise TemplateError(bad, "$.extends", f"templates extend each other in a loop: {chain}")
            resolving.append(name)
            versions = {}
            for version, (blueprint, file) in sorted(blueprints[name].items()):
                parent = latest(blueprint.extends) if blueprint.extends else None
                versions[version] = resolve(blueprint, parent, file)
            resolving.pop()
            resolved[name] = versions
            return versions[max(versions)]

        for name in sorted(blueprints):
            latest(name)
        return cls(resolved)

    def names(self) -> list[str]:
        return sorted(self.templates)

    def versions(self, name: str) -> list[int]:
        return sorted(self.templates.get(name, {}))

    def get(self, name: str, version: int | None = None) -> Template:
        """The template (its latest version unless ``version``); ``KeyError`` names what exists."""
        versions = self.templates.get(name)
        if not versions:
            raise KeyError(f"no template {name!r}; templates: {', '.join(self.names())}")
        chosen = max(versions) if version is None else version
        if chosen not in versions:
            raise KeyError(f"template {name!r} has no version {chosen}; versions: {self.versions(name)}")
        return versions[chosen]

    def __iter__(self) -> Iterator[Template]:
        for name in self.names():
            yield from (self.templates[name][v] for v in self.versions(name))


@cache
def shipped() -> Catalog:
    """The templates shipped with Livora (loaded once per process)."""
    return Catalog.load()


def to_builtins(template: Template) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.to_builtins(template)
    return result
