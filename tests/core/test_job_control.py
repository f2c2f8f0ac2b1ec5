"""Job control and workflows (issue 29) on the memory store: the shared
checks of tests/scenarios/job_control.py, which every store runs."""

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
def app() -> Iterator[App]:
    app = App(Settings(queue_backend="memory", result_backend="memory"))
    yield app
    app.close()


@pytest.mark.parametrize("check", job_control.CHECKS, ids=job_control.check_id)
def test_job_control_on_the_memory_store(app: App, check) -> None:
    check(app)
