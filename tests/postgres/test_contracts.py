"""The optional contract methods the dashboard and the SDK read through (counts,
peek, cancel, query, job counts): tests/dashboard/test_contracts.py, whose
cases run on every store, run here again on PostgreSQL."""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from nuvom.testing import reset_process_state

DASHBOARD = Path(__file__).resolve().parents[1] / "dashboard"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_dashboard_pg_{name}", DASHBOARD / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_shared: dict[str, Any] = vars(_load("test_contracts"))
# Every case that runs on a store chosen by the ``backend`` fixture runs here on PostgreSQL.
for _name, _test in list(_shared.items()):
    if _name.startswith("test_") and list(inspect.signature(_test).parameters) == ["backend"]:
        globals()[_name] = _test


@pytest.fixture
def backend(pg_env: dict[str, str]) -> Iterator[str]:
    reset_process_state()
    yield "postgres"
