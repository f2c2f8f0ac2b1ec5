"""Every value the serializer accepts comes back from a store exactly as given
(issue 12, item 5): bytes, nan/inf, integer keys, deep nesting; what cannot
be stored fails the job once with a clear error."""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nuvom import serialization
from nuvom.app import App
from nuvom.backends.file import FileJobQueue, FileResultBackend
from nuvom.config import load_settings
from nuvom.errors import JobFailed, SerializationError
from nuvom.job import Job, JobStatus
from nuvom.worker import Worker

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.binary()
)
_keys = st.text() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.binary()
values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    """Equal with types kept (True is not 1) and nan equal to nan."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def encodable(value: Any) -> bool:
    try:
        serialization.dumps([[value]])
    except SerializationError:
        return False
    return True


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=st.lists(values, max_size=3), kwargs=st.dictionaries(st.text(), values, max_size=3), result=values)
def test_every_encodable_value_round_trips_through_a_job(args: list[Any], kwargs: dict[str, Any], result: Any) -> None:
    if not encodable([args, kwargs, result]):
        return  # refused at .delay() or when the result is stored, with SerializationError
    job = Job(func_name="t", args=args, kwargs=kwargs, result=result)
    back = Job.from_bytes(job.to_bytes())
    assert same(back.args, args) and same(back.kwargs, kwargs) and same(back.result, result)


def test_the_values_the_issue_names_round_trip() -> None:
    for value in (b"abc", os.urandom(64), math.nan, math.inf, -math.inf, {1: "a"}, {b"k": [1.5]}):
        job = Job(func_name="t", args=[value], result=value)
        back = Job.from_bytes(job.to_bytes())
        assert same(back.args[0], value) and same(back.result, value), value


def test_values_nested_1000_deep_round_trip() -> None:
    deep: Any = "leaf"
    for _ in range(1000):
        deep = [deep]
    back = Job.from_bytes(Job(func_name="t", args=[deep], result=deep).to_bytes())
    for got in (back.args[0], back.result):
        for _ in range(1000):
            assert isinstance(got, list) and len(got) == 1
            got = got[0]
        assert got == "leaf"


def test_too_deep_a_value_is_refused_at_delay_with_serialization_error() -> None:
    deep: Any = 1
    for _ in range(1100):
        deep = [deep]
    app = App(load_settings())
    t = app.task(lambda x: x, name="echo_deep")
    with pytest.raises(SerializationError, match="cannot be serialized"):
        t.delay(deep)


def _file_app(tmp_path: Any) -> App:
    settings = load_settings().model_copy(update={"data_dir": str(tmp_path / ".nuvom")})
    return App(settings, queue=FileJobQueue(settings), results=FileResultBackend(settings))


RUNS: dict[str, int] = {}


def test_random_bytes_from_a_worker_are_stored_exactly_and_run_once(tmp_path: Any) -> None:
    app = _file_app(tmp_path)
    payload = os.urandom(256)

    @app.task(name="random_bytes")
    def random_bytes(key: str) -> bytes:
        RUNS[key] = RUNS.get(key, 0) + 1
        return payload

    with Worker(max_workers=2, app=app):
        job = random_bytes.delay("rb")
        assert job.get(timeout=20) == payload
    assert RUNS["rb"] == 1
    record = app.results.get_full(job.id)
    assert record is not None and record.result == payload and record.attempts == 1


def test_a_result_too_deep_to_store_fails_the_job_once_with_a_clear_error(tmp_path: Any) -> None:
    app = _file_app(tmp_path)

    @app.task(name="too_deep")
    def too_deep(key: str) -> Any:
        RUNS[key] = RUNS.get(key, 0) + 1
        deep: Any = 1
        for _ in range(1024):  # fine alone, one level too deep inside a stored job
            deep = [deep]
        return deep

    with Worker(max_workers=2, app=app):
        job = too_deep.delay("td")
        with pytest.raises(JobFailed, match="cannot be serialized"):
            job.get(timeout=20)
    record = app.results.get_full(job.id)
    assert record is not None and record.status is JobStatus.FAILED
    assert RUNS["td"] == 1 and record.attempts == 1
    assert [a.outcome for a in record.history] == ["error"]


def test_every_field_of_a_job_and_its_attempts_survives_encoding() -> None:
    # A field added to Job or Attempt must be added to the encoding too.
    from nuvom.job import Attempt, Job, JobError

    error = JobError(type="E", message="m", traceback="tb")
    attempt = Attempt(number=1, started_at=1.0, finished_at=2.0, outcome="error", error=error, executor="process")
    job = Job(func_name="f", history=[attempt], error=error, schedule_key="k", executor="async", retry_of="r")
    back = Job.from_bytes(job.to_bytes())
    assert back.model_dump() == job.model_dump()
    assert set(Attempt.model_fields) == set(back.history[0].model_dump())
