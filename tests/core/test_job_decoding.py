"""``Job.from_bytes`` builds records of exactly the shape ``to_bytes`` writes
without pydantic (issue 19): what it returns must be what validation returns,
and whatever the fast path does not take must still be validated (coerced or
refused with SerializationError) as before."""

from __future__ import annotations

import math
from typing import Any

import pytest
from nuvom import serialization
from nuvom.errors import SerializationError
from nuvom.job import Attempt, Job, JobError, JobStatus


def validated(raw: dict[str, Any]) -> Job:
    """What from_bytes returned before the fast path: pydantic's validation."""
    return Job.model_validate(raw, context={"stored": True})


def same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, (Job, Attempt, JobError)):
        return a.model_fields_set == b.model_fields_set and same(dict(a.__dict__), dict(b.__dict__))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def finished(job: Job, *, failed: bool = False) -> Job:
    job.mark_claimed()
    attempt = job.mark_started("w1", 1000.5, executor="thread")
    if failed:
        job.mark_attempt_failed(
            attempt, JobError(type="ValueError", message="bad", traceback="tb"), timed_out=False, now=1001.0
        )
        job.mark_failed(None, 1001.0, "w1")
    else:
        job.mark_succeeded(attempt, {"ok": [1, 2.5, b"x"]}, 1001.0)
    return job


def jobs() -> list[Job]:
    return [
        Job(func_name="plain"),
        Job(
            func_name="full",
            args=[1, "a", None],
            kwargs={"k": [1.5]},
            tags=["t1", "t2"],
            executor="process",
            timeout_secs=3.0,
            timeout_policy="retry",
            not_before=2000.0,
            retry_of="abc",
            schedule_key="s",
        ),
        finished(Job(func_name="ok")),
        finished(Job(func_name="bad", max_retries=2), failed=True),
    ]


@pytest.mark.parametrize("job", jobs(), ids=lambda j: j.func_name)
def test_a_written_record_decodes_to_what_validation_gives(job: Job) -> None:
    data = job.to_bytes()
    fast = Job.from_bytes(data)
    assert same(fast, validated(serialization.loads(data)))
    assert isinstance(fast.status, JobStatus)
    assert all(isinstance(a, Attempt) for a in fast.history)
    assert fast.error is None or isinstance(fast.error, JobError)
    assert fast.to_bytes() == data  # and it encodes back to the same bytes


def _variants() -> list[tuple[str, Any]]:
    """Records that are not exactly what to_bytes writes: (field, value)."""
    return [
        ("retry_delay_secs", 0),  # an int where a float is written: pydantic coerces
        ("created_at", 5),
        ("attempts", True),  # bool for int
        ("attempts", 2.0),
        ("max_retries", "3"),
        ("status", "NOPE"),
        ("status", ["SUCCESS"]),
        ("executor", ["thread"]),  # unhashable where a name is expected
        ("executor", "gpu"),
        ("timeout_policy", {"a": 1}),
        ("kwargs", {1: "int key"}),
        ("kwargs", []),
        ("args", "not a list"),
        ("tags", ["a", 1]),
        ("store_result", 1),
        ("id", 42),
        ("func_name", None),
        ("error", {"type": "E", "message": "m"}),  # no traceback: the default
        ("error", {"type": "E", "message": 3, "traceback": None}),
        ("error", "text"),
        ("history", [{"number": 1, "started_at": 1.0}]),  # an older attempt: defaults
        ("history", [{"number": "x", "started_at": 1.0}]),
        ("history", "none"),
        ("finished_at", "soon"),
    ]


@pytest.mark.parametrize(("field", "value"), _variants(), ids=lambda v: repr(v))
def test_any_other_record_is_validated_as_before(field: str, value: Any) -> None:
    raw = serialization.loads(finished(Job(func_name="t")).to_bytes())
    raw[field] = value
    try:
        expected: Job | None = validated(serialization.loads(serialization.dumps(raw)))
    except Exception:
        expected = None
    if expected is None:
        with pytest.raises(SerializationError, match="stored job is malformed"):
            Job.from_bytes(serialization.dumps(raw))
    else:
        assert same(Job.from_bytes(serialization.dumps(raw)), expected)


def test_records_with_missing_or_extra_fields_are_validated() -> None:
    raw = serialization.loads(Job(func_name="t").to_bytes())
    older = {k: v for k, v in raw.items() if k not in ("executor", "schedule_key", "history")}
    assert same(Job.from_bytes(serialization.dumps(older)), validated(dict(older)))
    newer = {**raw, "from_the_future": 1}
    back = Job.from_bytes(serialization.dumps(newer))
    assert back.func_name == "t" and not hasattr(back, "from_the_future")


def test_garbage_is_refused() -> None:
    with pytest.raises(SerializationError):
        Job.from_bytes(b"\xc1not msgpack")
    with pytest.raises(SerializationError, match="not a mapping"):
        Job.from_bytes(serialization.dumps([1, 2]))
    with pytest.raises(SerializationError, match="malformed"):
        Job.from_bytes(serialization.dumps({"id": "x"}))
