"""The earlier nuvom's calls of ``BaseResultBackend.set_result`` / ``set_error``.

0.11 wrote ``set_result(job_id, func_name, result, *, args=None, kwargs=None,
retries_left=None, attempts=None, created_at=None, completed_at=None)`` (and
``set_error`` alike, with the exception); today's form is ``set_result(job,
result)``. Both are read here into the job record that ``store()`` writes.
"""

from __future__ import annotations

import time
from typing import Any

from nuvom.job import Job, validate_job_id

__all__ = ["LEGACY_META", "MISSING", "legacy_record"]

#: A value not given (``None`` is a result like any other).
MISSING: Any = object()

#: The earlier nuvom's keywords of ``set_result`` / ``set_error``.
LEGACY_META = frozenset({"args", "kwargs", "retries_left", "attempts", "created_at", "completed_at"})


def legacy_record(
    method: str,
    name: str,
    job: Job | str | None,
    positional: tuple[Any, ...],
    value: Any,
    job_id: str | None,
    func_name: str | None,
    meta: dict[str, Any],
) -> tuple[Job, Any]:
    """The job and value of a ``set_result`` / ``set_error`` call in today's
    form ``(job, value)`` or the earlier nuvom's ``(job_id, func_name, value, **meta)``."""
    rest = list(positional)
    target: Job | str | None = job if job is not None else job_id
    if not isinstance(target, Job) and func_name is None and rest:
        func_name = rest.pop(0)
    if value is MISSING and rest:
        value = rest.pop(0)
    unknown = sorted(set(meta) - LEGACY_META)
    if rest or unknown or value is MISSING or target is None or (not isinstance(target, Job) and not func_name):
        raise TypeError(
            f"{method}() takes (job, {name}) or the earlier (job_id, func_name, {name}, "
            f"args=, kwargs=, retries_left=, attempts=, created_at=, completed_at=)"
            + (f"; unknown keyword(s) {unknown}" if unknown else "")
        )
    now = time.time()
    attempts = meta.get("attempts")
    fields: dict[str, Any] = {
        key: given
        for key, given in (
            ("args", None if meta.get("args") is None else list(meta["args"])),
            ("kwargs", None if meta.get("kwargs") is None else dict(meta["kwargs"])),
            ("attempts", attempts),
            ("created_at", meta.get("created_at")),
            ("finished_at", meta.get("completed_at")),
        )
        if given is not None
    }
    if meta.get("retries_left") is not None:
        fields["max_retries"] = int(meta["retries_left"]) + max(int(attempts or 1) - 1, 0)
    if isinstance(target, Job):
        record = target
        for key, field_value in fields.items():
            setattr(record, key, field_value)
    else:
        fields.setdefault("attempts", 1)
        fields.setdefault("created_at", now)
        record = Job(id=validate_job_id(target), func_name=str(func_name), **fields)
    record.finished_at = record.finished_at or now
    return record, value
