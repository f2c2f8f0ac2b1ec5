"""Fixtures for nuvom-discovery: throw-away projects on disk, each with its own
package name so that modules imported by one test never leak into another."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from nuvom.config import reset_settings
from nuvom.registry import get_registry


class Project:
    """A project folder with helpers to write source files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        #: A package name unique to this test: import names never collide.
        self.pkg = f"proj_{uuid.uuid4().hex[:10]}"
        self.manifest = root / ".nuvom" / "manifest.json"

    def write(self, rel: str, source: str) -> Path:
        path = self.root / rel.replace("{pkg}", self.pkg)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip("\n").replace("{pkg}", self.pkg), encoding="utf-8")
        return path

    def package(self) -> None:
        """Create ``{pkg}/__init__.py``."""
        self.write("{pkg}/__init__.py", "")

    def task_module(self, rel: str, body: str) -> Path:
        return self.write(rel, "from nuvom.task import task\n\n" + textwrap.dedent(body).lstrip("\n"))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.delenv("NUVOM_MANIFEST_PATH", raising=False)
    reset_settings()
    proj = Project(root.resolve())
    registry = get_registry()
    before = set(registry.names())
    path_before = list(sys.path)
    yield proj
    for name in list(sys.modules):
        if name == proj.pkg or name.startswith(proj.pkg + "."):
            del sys.modules[name]
    for name in set(registry.names()) - before:
        registry.unregister(name)
    sys.path[:] = path_before
    reset_settings()
