"""A queue backend written from docs/plugins.md alone (the contract table of
section 4) passes `nuvom plugin test`, and one that breaks the contract fails it."""

from __future__ import annotations

import json
import textwrap

import pytest

FROM_THE_DOCS = textwrap.dedent(
    """
    import threading
    import time
    from collections import deque

    from nuvom.plugins.contracts import BaseJobQueue


    class ListQueue(BaseJobQueue):
        shared_between_processes = False

        def __init__(self, settings=None):
            super().__init__(settings)
            self._lock = threading.Lock()
            self._waiting = deque()
            self._claimed = {}

        def enqueue(self, job):
            with self._lock:
                self._waiting.append(job)

        def claim(self, batch_size):
            out, now = [], time.time()
            with self._lock:
                for job in sorted(self._waiting, key=lambda j: j.due_at):   # oldest due first
                    if len(out) == batch_size or job.due_at > now:
                        break
                    self._waiting.remove(job)
                    job.mark_claimed()
                    self._claimed[job.id] = job
                    out.append(job)
            return out

        def ack(self, job_ids):
            with self._lock:
                for job_id in job_ids:
                    self._claimed.pop(job_id, None)

        def requeue(self, jobs):
            with self._lock:
                for job in jobs:
                    self._claimed.pop(job.id, None)
                    self._waiting.append(job)

        def get(self, job_id):
            with self._lock:
                return self._claimed.get(job_id) or next((j for j in self._waiting if j.id == job_id), None)

        def qsize(self):
            return len(self._waiting)

        def clear(self):
            with self._lock:
                n = len(self._waiting)
                self._waiting.clear()
                return n


    class ImpatientQueue(ListQueue):
        def claim(self, batch_size):     # breaks the contract: claims jobs that are not due yet
            with self._lock:
                for job in self._waiting:
                    job.not_before = None
            return super().claim(batch_size)


    class ForgetfulQueue(ListQueue):
        def claim(self, batch_size):     # breaks the contract: claims count no attempt
            out = super().claim(batch_size)
            for job in out:
                job.attempts -= 1
            return out
    """
)


def test_a_backend_written_from_the_docs_passes_plugin_test(cli, tmp_path):
    (tmp_path / "list_queue.py").write_text(FROM_THE_DOCS)
    out = cli("plugin", "test", "./list_queue.py:ListQueue", "-f", "json")
    assert out.exit_code == 0, out.stdout
    [result] = json.loads(out.stdout)["plugins"]
    checks = {c["check"]: c["ok"] for c in result["checks"]}
    assert checks["queue backend 'ListQueue'"] is True


@pytest.mark.parametrize(
    ("cls", "rule"), [("ForgetfulQueue", "attempt counted"), ("ImpatientQueue", "not-before time")]
)
def test_a_backend_that_breaks_the_contract_fails_plugin_test_naming_the_rule(cli, tmp_path, cls, rule):
    (tmp_path / "list_queue.py").write_text(FROM_THE_DOCS)
    out = cli("plugin", "test", f"./list_queue.py:{cls}", "-f", "json")
    assert out.exit_code == 1, out.stdout
    [result] = json.loads(out.stdout)["plugins"]
    failed = [c for c in result["checks"] if not c["ok"]]
    assert failed and rule in failed[0]["detail"]


BROKEN_BACKEND_PLUGIN = textwrap.dedent(
    """
    from nuvom.plugins.contracts import Plugin

    class Broken(Plugin):
        name = "broken"
        provides = ["result_backend"]

        def start(self, settings):
            raise RuntimeError("the store is not configured")

        def stop(self):
            pass
    """
)


def test_plugin_status_never_says_loaded_for_a_backend_plugin_that_fails_to_start(cli, tmp_path):
    (tmp_path / "broken_plugin.py").write_text(BROKEN_BACKEND_PLUGIN)
    (tmp_path / ".nuvom_plugins.toml").write_text('[plugins]\nresult_backend = ["broken_plugin:Broken"]\n')
    out = cli("plugin", "status", "-f", "json")
    assert out.exit_code == 0, out.stderr
    [broken] = [p for p in json.loads(out.stdout)["plugins"] if p["name"] == "broken"]
    assert broken["state"] == "failed" and "the store is not configured" in broken["error"]
