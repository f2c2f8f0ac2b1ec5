"""Job control and workflows (issue 29) on a real SQLite file: the shared
checks of tests/scenarios/job_control.py, each on an app of its own file."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from nuvom.app import App
from nuvom.config import Settings

sys.path.insert(0, str(Path(__file__).parents[1]))
from scenarios import job_control


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    app = App(Settings(queue_backend="sqlite", result_backend="sqlite", data_dir=tmp_path / "store"))
    yield app
    app.close()


@pytest.mark.parametrize("check", job_control.CHECKS, ids=job_control.check_id)
def test_job_control_on_the_sqlite_store(app: App, check) -> None:
    check(app)
