"""Every test runs in its own directory with its own data dir and fresh
process-wide state (settings, backends, plugins, global hooks)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nuvom.backends import set_backends
from nuvom.backends.memory import MemoryJobQueue, MemoryResultBackend
from nuvom.testing import reset_process_state


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    for var in ("NUVOM_QUEUE_BACKEND", "NUVOM_RESULT_BACKEND", "NUVOM_MAX_WORKERS", "NUVOM_BATCH_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NUVOM_DATA_DIR", str(tmp_path / ".nuvom"))
    reset_process_state()
    yield tmp_path
    reset_process_state()


@pytest.fixture
def mem() -> tuple[MemoryJobQueue, MemoryResultBackend]:
    """In-memory backends installed as this process's backends."""
    queue, results = MemoryJobQueue(), MemoryResultBackend()
    set_backends(queue, results)
    return queue, results
