"""Documents rendered from the code cannot drift from it: each committed file must be what
its module renders now (``python -m MODULE > docs/FILE`` brings it up to date)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
GENERATED = {
    "conformance.md": "station.conformance",  # the DICOM Conformance Statement
    "configuration.md": "station.config.reference",  # every config key, from the models
}


@pytest.mark.parametrize(("name", "module"), GENERATED.items())
def test_the_committed_document_is_what_the_code_renders(name: str, module: str) -> None:
    rendered = importlib.import_module(module).render()
    assert (DOCS / name).read_text() == rendered, (
        f"docs/{name} is out of date: python -m {module} > docs/{name}"
    )
