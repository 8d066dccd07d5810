"""Tenant templates: every shipped blueprint validates; broken ones are refused with the path of the bad field."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tenant_templates import Catalog, TemplateError, shipped
from tenant_templates.catalog import BLUEPRINTS

INDUSTRIES = ("ecommerce", "saas", "real_estate")


def test_every_shipped_template_validates_and_extends_base() -> None:
    catalog = Catalog.load()
    assert set(catalog.names()) >= {"base", *INDUSTRIES}
    base = catalog.get("base")
    base_events = {e.event for e in base.starter.tracking_plan}
    for name in INDUSTRIES:
        template = catalog.get(name)
        events = {e.event for e in template.starter.tracking_plan}
        # The base's tracking plan is folded into every industry's, plus events of its own.
        assert base_events < events, name
        starter = template.starter
        assert starter.segments and starter.dashboards and starter.crm_pipelines and starter.journeys, name
        assert "profiles" in template.resources.stores
        assert template.rate_limits.burst_events >= template.rate_limits.events_per_second


def test_versions_are_kept_and_the_latest_is_the_default() -> None:
    catalog = shipped()
    assert catalog.versions("ecommerce") == [1, 2]
    assert catalog.get("ecommerce").version == 2
    v1, v2 = catalog.get("ecommerce", 1), catalog.get("ecommerce", 2)
    assert "Order Refunded" in {e.event for e in v2.starter.tracking_plan}
    assert "Order Refunded" not in {e.event for e in v1.starter.tracking_plan}
    with pytest.raises(KeyError, match="no version 7"):
        catalog.get("ecommerce", 7)
    with pytest.raises(KeyError, match="no template 'casino'"):
        catalog.get("casino")


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "blueprints"
    shutil.copytree(BLUEPRINTS, root)
    return root


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


BROKEN = [
    # (file, old, new, field path, words of the message)
    ("saas/v1.toml", "stream_partitions = 2", 'stream_partitions = "two"', "$.resources.stream_partitions", "int"),
    ("saas/v1.toml", "stream_partitions = 2", "stream_partitions = 0", "$.resources.stream_partitions", ">= 1"),
    ("base/v1.toml", "seats = 5", "seats = 5\ncolour = 'red'", "$.plan_defaults", "unknown field"),
    (
        "ecommerce/v2.toml",
        '{ event = "Product Added", within_days = 3 }',
        '{ event = "Product Teleported", within_days = 3 }',
        "$.starter.segments[0].conditions[0].event",
        "not in the tracking plan",
    ),
    (
        "real_estate/v1.toml",
        'trigger = "Viewing Booked"',
        'trigger = "Moon Landing"',
        "$.starter.journeys[0].trigger",
        "not in the tracking plan",
    ),
    (
        "saas/v1.toml",
        '{ kind = "wait", value = "48" }',
        '{ kind = "wait", value = "soon" }',
        "$.starter.journeys[0].steps[1].value",
        "whole hours",
    ),
    (
        "saas/v1.toml",
        'kind = "retention"',
        'kind = "pie"',
        "$.starter.dashboards[0].widgets[1].kind",
        "Invalid enum value",
    ),
    ("saas/v1.toml", 'extends = "base"', 'extends = "nothing"', "$.extends", "no template"),
    ("saas/v1.toml", "version = 1", "version = 3", "$.version", "v1.toml"),
    ("base/v1.toml", 'stores = ["profiles", "warehouse"]', 'stores = ["warehouse"]', "$.resources.stores", "profiles"),
    ("base/v1.toml", "burst_events = 1000", "burst_events = 10", "$.rate_limits.burst_events", "at least"),
    (
        "real_estate/v1.toml",
        'name = "enquiry", title = "Enquiry", probability = 5',
        'name = "enquiry", title = "Enquiry", probability = 500',
        "$.starter.crm_pipelines[0].stages[0].probability",
        "<= 100",
    ),
    ("base/v1.toml", "[resources]", "[resources", "$", "not valid TOML"),
]


@pytest.mark.parametrize(("file", "old", "new", "field", "words"), BROKEN, ids=[b[3] + ":" + b[4] for b in BROKEN])
def test_a_broken_template_is_refused_with_the_path_of_the_bad_field(
    tmp_path: Path, file: str, old: str, new: str, field: str, words: str
) -> None:
    root = _tree(tmp_path)
    _edit(root / file, old, new)
    with pytest.raises(TemplateError) as caught:
        Catalog.load(root)
    assert caught.value.field == field, str(caught.value)
    assert words in caught.value.message, str(caught.value)
    assert caught.value.file.endswith(file)


def test_duplicate_names_and_loops_are_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    _edit(root / "saas/v1.toml", 'name = "churn_risk"', 'name = "activated_trials"')
    with pytest.raises(TemplateError) as caught:
        Catalog.load(root)
    assert caught.value.field == "$.starter.segments[1].name" and "twice" in caught.value.message

    root = _tree(tmp_path / "loop")
    _edit(root / "base/v1.toml", 'version = 1\ntitle = "Base"', 'version = 1\ntitle = "Base"\nextends = "saas"')
    with pytest.raises(TemplateError) as caught:
        Catalog.load(root)
    assert caught.value.field == "$.extends" and "loop" in caught.value.message


def _livora(*args: str) -> subprocess.CompletedProcess[str]:
    livora = Path(sys.executable).with_name("livora")
    return subprocess.run([str(livora), *args], capture_output=True, text=True, timeout=60, check=False)


def test_cli_lists_shows_and_validates(tmp_path: Path) -> None:
    listed = _livora("templates", "list")
    assert listed.returncode == 0, listed.stderr
    for name in ("base", *INDUSTRIES):
        assert name in listed.stdout
    assert "v1, v2" in listed.stdout
    shown = _livora("templates", "show", "real_estate@1")
    assert shown.returncode == 0 and '"name": "real_estate"' in shown.stdout and "Viewing Booked" in shown.stdout
    assert _livora("templates", "show", "casino").returncode == 1
    valid = _livora("templates", "validate")
    assert valid.returncode == 0 and "5 template versions are valid" in valid.stdout, valid.stdout + valid.stderr

    bad = tmp_path / "saas" / "v9.toml"
    bad.parent.mkdir()
    text = (BLUEPRINTS / "saas" / "v1.toml").read_text().replace("version = 1", "version = 9")
    bad.write_text(text.replace("monthly_tracked_users = 50000", "monthly_tracked_users = -3"))
    refused = _livora("templates", "validate", str(bad))
    assert refused.returncode == 1
    assert "$.plan_defaults.monthly_tracked_users" in refused.stderr and str(bad) in refused.stderr
