"""OpenTelemetry tracing (the ``otel`` extra) across a real producer and a real
worker process: the worker's attempt spans are children of the producer's
enqueue span, a retry is a new span in the same trace, the task's own spans
are children of its attempt's; and nothing at all without an SDK or the API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk.trace", reason="the SDK (opentelemetry-sdk) is a test dependency of core")

SETUP = """
import atexit, json, os
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)


@atexit.register
def dump():
    with open(os.environ["SPANS_FILE"], "w") as out:
        for span in exporter.get_finished_spans():
            ctx, parent = span.get_span_context(), span.parent
            out.write(json.dumps({
                "name": span.name,
                "trace": ctx.trace_id,
                "span": ctx.span_id,
                "parent": parent.span_id if parent else None,
                "kind": span.kind.name,
                "attributes": dict(span.attributes),
                "status": span.status.status_code.name,
                "events": [e.name for e in span.events],
            }) + "\\n")
"""

TASKS = """
import asyncio, os
from opentelemetry import trace
from nuvom.task import task

@task(retries=1, retry_delay_secs=0)
def flaky(marker):
    with trace.get_tracer("tasks").start_as_current_span("inside.flaky"):
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise ValueError("first attempt fails")
    return "ok"

@task
async def awaited():
    with trace.get_tracer("tasks").start_as_current_span("inside.awaited"):
        await asyncio.sleep(0)
    return "done"
"""

PRODUCE = """
import tracing_setup, json, sys
from tasks import awaited, flaky
jobs = [flaky.delay(sys.argv[1]), awaited.delay()]
print(json.dumps([[j.id, j.get(timeout=60)] for j in jobs]))
"""


def spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_attempts_are_children_of_the_producers_span_across_processes(tmp_path: Path) -> None:
    (tmp_path / "tracing_setup.py").write_text(textwrap.dedent(SETUP))
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    env.update(NUVOM_QUEUE_BACKEND="file", NUVOM_RESULT_BACKEND="file", NUVOM_DATA_DIR=str(tmp_path / "data"))
    worker = subprocess.Popen(
        [sys.executable, "-m", "nuvom.worker", "tracing_setup", "tasks"],
        cwd=tmp_path,
        env={**env, "SPANS_FILE": str(tmp_path / "worker.jsonl")},
        stderr=subprocess.DEVNULL,
    )
    try:
        produced = subprocess.run(
            [sys.executable, "-c", PRODUCE, str(tmp_path / "marker")],
            cwd=tmp_path,
            env={**env, "SPANS_FILE": str(tmp_path / "producer.jsonl")},
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert produced.returncode == 0, produced.stderr
    finally:
        worker.send_signal(signal.SIGINT)
        assert worker.wait(30) == 0
    (flaky_id, flaky_result), (awaited_id, awaited_result) = json.loads(produced.stdout)
    assert (flaky_result, awaited_result) == ("ok", "done")

    enqueued = {s["attributes"]["nuvom.job_id"]: s for s in spans(tmp_path / "producer.jsonl")}
    assert {s["kind"] for s in enqueued.values()} == {"PRODUCER"}
    worker_spans = spans(tmp_path / "worker.jsonl")
    runs = [s for s in worker_spans if s["name"] == "nuvom.run"]

    # flaky: two attempts, each a child of the enqueue span, in its trace.
    flaky_runs = sorted(
        (s for s in runs if s["attributes"]["nuvom.job_id"] == flaky_id), key=lambda s: s["attributes"]["nuvom.attempt"]
    )
    assert [s["attributes"]["nuvom.attempt"] for s in flaky_runs] == [1, 2]
    assert all(
        s["trace"] == enqueued[flaky_id]["trace"] and s["parent"] == enqueued[flaky_id]["span"] for s in flaky_runs
    )
    assert [s["attributes"]["nuvom.outcome"] for s in flaky_runs] == ["retry", "success"]
    assert flaky_runs[0]["status"] == "ERROR" and "exception" in flaky_runs[0]["events"]
    assert all(s["kind"] == "CONSUMER" and s["attributes"]["nuvom.task"] == "flaky" for s in flaky_runs)
    assert all(s["attributes"]["nuvom.queue"] == "default" for s in flaky_runs)
    # The task's own span is a child of its attempt's span (a thread).
    inside = [s for s in worker_spans if s["name"] == "inside.flaky"]
    assert sorted(s["parent"] for s in inside) == sorted(s["span"] for s in flaky_runs)

    # awaited: on the event loop, its own span a child of the attempt's too.
    [awaited_run] = [s for s in runs if s["attributes"]["nuvom.job_id"] == awaited_id]
    assert (
        awaited_run["parent"] == enqueued[awaited_id]["span"] and awaited_run["attributes"]["nuvom.executor"] == "async"
    )
    [inside_awaited] = [s for s in worker_spans if s["name"] == "inside.awaited"]
    assert inside_awaited["parent"] == awaited_run["span"]


def test_without_an_sdk_or_without_the_api_nothing_is_stored(tmp_path: Path) -> None:
    code = """
import sys
if sys.argv[1] == "no-api":
    sys.modules["opentelemetry"] = None  # as if the extra were not installed
from nuvom.app import App
from nuvom.config import Settings
from nuvom.worker import Worker
app = App(Settings(queue_backend="memory", result_backend="memory"))
add = app.task(lambda x, y: x + y, name="add")
with Worker(app=app):
    job = add.delay(1, 2)
    assert job.get(timeout=10) == 3
    assert job.trace is None, job.trace
print("ok")
"""
    for mode in ("no-sdk", "no-api"):
        done = subprocess.run(
            [sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert done.returncode == 0 and done.stdout.strip() == "ok", (mode, done.stderr)
