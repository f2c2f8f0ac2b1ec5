"""Tracing with OpenTelemetry: ``pip install "nuvom-core[otel]"``, no cost without it.

With ``opentelemetry-api`` installed and a tracer provider configured (the
application set up an SDK), ``.delay()`` and ``.map()`` run in a
``nuvom.enqueue`` span (kind PRODUCER) and store its context in the job
(``Job.trace``, W3C ``traceparent``/``tracestate``); the worker runs each
attempt in a ``nuvom.run`` span (kind CONSUMER) whose parent is that context,
so a job's attempts, retries included, join the trace of the request that
queued it. The run span is the current span while the task runs (threads and
the event loop), so the task's own spans are its children. Attributes:
``nuvom.task``, ``nuvom.job_id``, ``nuvom.attempt``, ``nuvom.queue``,
``nuvom.executor`` and, when the attempt ends, ``nuvom.outcome``; a failure
records its exception and sets the span's status to ERROR.

Without the API installed, or with no provider configured (the API's
default proxy), nothing is stored and no span is made: each job pays one
lookup.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nuvom.job import Attempt, Job

try:
    from opentelemetry import context as _context
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
except ImportError:  # the optional extra is not installed
    _trace = None  # type: ignore[assignment]

__all__ = ["active", "end_run", "enqueue", "start_run", "using"]

_QUEUE = "default"


def active() -> bool:
    """Whether spans are recorded: the API installed and a provider configured."""
    if _trace is None:
        return False
    provider = _trace.get_tracer_provider()
    return not isinstance(provider, (_trace.ProxyTracerProvider, _trace.NoOpTracerProvider))


@contextlib.contextmanager
def enqueue(task: str, jobs: Sequence[Job]) -> Iterator[None]:
    """Queue ``jobs`` inside a ``nuvom.enqueue`` span whose context they carry
    (one span for a ``.map()``); does nothing when tracing is off."""
    if not active():
        yield
        return
    assert _trace is not None
    attributes: dict[str, Any] = {"nuvom.task": task, "nuvom.queue": _QUEUE, "nuvom.jobs": len(jobs)}
    if len(jobs) == 1:
        attributes["nuvom.job_id"] = jobs[0].id
    tracer = _trace.get_tracer("nuvom")
    with tracer.start_as_current_span("nuvom.enqueue", kind=_trace.SpanKind.PRODUCER, attributes=attributes):
        carrier: dict[str, str] = {}
        _propagate.inject(carrier)
        for job in jobs:
            job.set_fields(trace=dict(carrier))
        yield


def start_run(job: Job, attempt: Attempt) -> Any:
    """The ``nuvom.run`` span of an attempt (``None`` when tracing is off), a
    child of the context the job carries."""
    if not active():
        return None
    assert _trace is not None
    parent = _propagate.extract(job.trace) if job.trace else None
    return _trace.get_tracer("nuvom").start_span(
        "nuvom.run",
        context=parent,
        kind=_trace.SpanKind.CONSUMER,
        attributes={
            "nuvom.task": job.func_name,
            "nuvom.job_id": job.id,
            "nuvom.attempt": attempt.number,
            "nuvom.queue": _QUEUE,
            "nuvom.executor": attempt.executor or "thread",
        },
    )


@contextlib.contextmanager
def using(span: Any) -> Iterator[None]:
    """Make ``span`` the current span meanwhile (the task's own spans are its children)."""
    if span is None or _trace is None:
        yield
        return
    token = _context.attach(_trace.set_span_in_context(span))
    try:
        yield
    finally:
        _context.detach(token)


def end_run(span: Any, outcome: str, error: BaseException | None = None) -> None:
    """End an attempt's span with its outcome (``success``, ``retry``, ``failure``, ``timeout``)."""
    if span is None or _trace is None:
        return
    span.set_attribute("nuvom.outcome", outcome)
    if error is not None:
        span.record_exception(error)
        span.set_status(_trace.Status(_trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end()
