"""The pipeline README's structural claims: plain modules importing only kernel and data_plane, no I/O layers."""

from __future__ import annotations

from pathlib import Path

from tests.architecture.test_boundaries import imports_of

PIPELINE = Path(__file__).resolve().parents[2] / "data_plane" / "pipeline"
FIRST_PARTY = ("kernel", "livora", "control_plane", "data_plane", "provisioning", "billing", "tenant_templates")
# Wiring to the stream and HTTP happens in workers, not in the steps.
FORBIDDEN = ("litestar", "uvicorn", "httpx", "data_plane.stream", "data_plane.ingest")


def test_pipeline_imports_only_kernel_and_data_plane_and_no_io_layers() -> None:
    sources = sorted(PIPELINE.glob("*.py"))
    assert len(sources) >= 8
    for path in sources:
        for imported in imports_of(path):
            top = imported.module.partition(".")[0]
            if top in FIRST_PARTY:
                assert top in ("kernel", "data_plane"), imported
            if path.name != "worker.py":  # the worker is the wiring
                assert not imported.module.startswith(FORBIDDEN), imported


def test_every_module_has_a_one_line_docstring() -> None:
    for path in PIPELINE.glob("*.py"):
        first = path.read_text().splitlines()[0]
        assert first.startswith('"""') and first.endswith('"""') and len(first) > 6, path
