"""Import boundaries between the top-level packages, read from the source with ``ast`` (nothing is imported)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("kernel", "livora", "control_plane", "data_plane", "provisioning", "billing", "tenant_templates")
# The one part of the data plane other packages may import: the typed interface between the planes.
CONTRACT = "data_plane.contract"


@dataclass(frozen=True)
class Import:
    module: str  # dotted name, absolute
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} imports {self.module}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_of(path: Path) -> str:
    """The package a relative import in ``path`` starts from (``__init__.py`` is its own package)."""
    name = _module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imports_of(path: Path, source: str | None = None) -> Iterator[Import]:
    """Every module ``path`` imports: top-level, lazy (inside functions), TYPE_CHECKING-only and
    ``importlib.import_module("…")``/``__import__("…")`` with a literal name.

    ``from package import name`` counts as importing ``package.name``: the name is a submodule or an
    attribute of the package, and either way it is what the code reaches for.
    """
    tree = ast.parse(source if source is not None else path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, path, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(path).split(".")
                if node.level > 1:
                    base = base[: -(node.level - 1)]
                prefix = ".".join([*base, *([node.module] if node.module else [])])
            else:
                prefix = node.module or ""
            for alias in node.names:
                yield Import(prefix if alias.name == "*" else f"{prefix}.{alias.name}", path, node.lineno)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            first = node.args[0]
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
                if isinstance(first.value, str):
                    yield Import(first.value, path, node.lineno)


def sources(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def first_party_imports(package: str) -> list[Import]:
    found = []
    for path in sources(package):
        for imported in imports_of(path):
            top = imported.module.partition(".")[0]
            if top in FIRST_PARTY and top != package:
                found.append(imported)
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _report(violations: list[Import], rule: str) -> str:
    return f"{rule}; found:\n  " + "\n  ".join(map(str, violations))


# --- the walker itself ---------------------------------------------------------------------


def test_walker_sees_every_kind_of_import() -> None:
    """A walker that finds nothing would pass every rule below; prove it finds what it should."""
    path = ROOT / "control_plane" / "tenants" / "example.py"
    source = (
        "import data_plane.ingest\n"
        "from data_plane import contract, lake\n"
        "from ..db import models\n"
        "from . import schemas\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from billing.rating import rate\n"
        "def later():\n"
        "    import provisioning\n"
        "    importlib.import_module('livora.cli')\n"
    )
    modules = {i.module for i in imports_of(path, source)}
    assert {
        "data_plane.ingest",
        "data_plane.contract",
        "data_plane.lake",
        "control_plane.db.models",
        "control_plane.tenants.schemas",
        "billing.rating.rate",
        "provisioning",
        "livora.cli",
    } <= modules
    package_init = ROOT / "control_plane" / "tenants" / "__init__.py"
    assert {i.module for i in imports_of(package_init, "from . import routes\n")} == {"control_plane.tenants.routes"}


def test_the_real_tree_is_read() -> None:
    assert any(within(i.module, "kernel") for i in first_party_imports("control_plane")), (
        "the control plane imports the kernel; if the walker no longer sees that, it sees nothing"
    )
    for package in FIRST_PARTY:
        assert (ROOT / package / "__init__.py").is_file(), f"{package} is not a package at the repository root"


# --- the rules (STYLE.md "Layout", ARCHITECTURE.md) ------------------------------------------------


def test_kernel_imports_none_of_ours() -> None:
    violations = first_party_imports("kernel")
    assert not violations, _report(violations, "kernel is shared infrastructure and imports no other Livora package")


def test_data_plane_imports_only_the_kernel() -> None:
    violations = [i for i in first_party_imports("data_plane") if not within(i.module, "kernel")]
    assert not violations, _report(
        violations, "a cell runs without the control plane: data_plane imports only kernel (and itself)"
    )


def test_control_plane_reaches_the_data_plane_only_through_its_contract() -> None:
    violations = [
        i
        for i in first_party_imports("control_plane")
        if within(i.module, "data_plane") and not within(i.module, CONTRACT)
    ]
    assert not violations, _report(violations, f"control_plane may import only {CONTRACT} from the data plane")


@pytest.mark.parametrize("package", ["billing", "provisioning"])
def test_billing_and_provisioning_stay_below_the_control_plane(package: str) -> None:
    violations = [
        i
        for i in first_party_imports(package)
        if within(i.module, "control_plane")
        or within(i.module, "livora")
        or (within(i.module, "data_plane") and not within(i.module, CONTRACT))
    ]
    assert not violations, _report(
        violations, f"{package} imports kernel, tenant_templates and {CONTRACT} only (never control_plane or livora)"
    )


@pytest.mark.parametrize("package", [p for p in FIRST_PARTY if p != "livora"])
def test_only_the_composition_root_imports_livora(package: str) -> None:
    violations = [i for i in first_party_imports(package) if within(i.module, "livora")]
    assert not violations, _report(violations, "livora composes the planes; nothing below it imports it")


def test_tenant_templates_are_data_and_import_none_of_ours() -> None:
    """Blueprints and their schema are read by provisioning, the control plane and the CLI alike."""
    violations = first_party_imports("tenant_templates")
    assert not violations, _report(violations, "tenant_templates is data plus its schema: it imports no other package")


def test_provisioning_reaches_cells_only_through_the_contract() -> None:
    """Provisioning acts on a cell over the cell contract; the data plane never sees provisioning."""
    allowed = ("kernel", "tenant_templates", CONTRACT)
    violations = [i for i in first_party_imports("provisioning") if not any(within(i.module, a) for a in allowed)]
    assert not violations, _report(violations, f"provisioning imports only {', '.join(allowed)}")
    imported = {i.module for i in first_party_imports("provisioning")}
    # The walker sees the driver's use of the contract: the rule above is not passing vacuously.
    assert any(within(module, CONTRACT) for module in imported), imported
