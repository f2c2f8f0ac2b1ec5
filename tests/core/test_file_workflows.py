"""Workflows in the file store: children wait in waiting/ until every parent has
left the queue, and are released by one rename. Crash points are arranged by
leaving the files a killed process would leave."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from nuvom.backends.file import FileJobQueue, FileResultBackend
from nuvom.config import Settings, load_settings
from nuvom.job import Flow, Job, JobStatus


@pytest.fixture
def settings(isolated: Path) -> Settings:
    return load_settings()


@pytest.fixture
def queue(settings: Settings) -> FileJobQueue:
    return FileJobQueue(settings)


@pytest.fixture
def results(settings: Settings) -> FileResultBackend:
    return FileResultBackend(settings)


def job(label: str, *parents: Job | str, **fields: object) -> Job:
    flow = Flow(parents=[p if isinstance(p, str) else p.id for p in parents]) if parents else None
    return Job(func_name="t", args=[label], flow=flow, **fields)  # type: ignore[arg-type]


def run(queue: FileJobQueue, results: FileResultBackend, limit: int = 10) -> list[str]:
    """Claim and finish what is due; the labels of what ran."""
    jobs = queue.claim(limit)
    for j in jobs:
        j.mark_succeeded(j.mark_started("w", time.time()), j.args[0], time.time())
    if jobs:
        queue.complete(jobs, results)
    return [j.args[0] for j in jobs]


def sweep(queue: FileJobQueue) -> None:
    queue._next_reclaim = 0.0
    queue.claim(0)


def test_a_child_waits_until_its_last_parent_has_left(queue: FileJobQueue, results: FileResultBackend) -> None:
    a, b = job("a"), job("b")
    queue.enqueue_many([a, b])
    child = job("child", a, b)
    queue.enqueue(child)
    waiting = queue.get(child.id)
    assert waiting is not None and waiting.status is JobStatus.WAITING
    assert queue.dependents(a.id) == [child.id]
    assert run(queue, results, 1) == ["a"]
    assert run(queue, results) == ["b"]  # the child is not claimable yet: b had not left
    assert run(queue, results) == ["child"]
    assert queue.dependents(a.id) == [] and os.listdir(Path(queue.root, "blockers")) == []


def test_a_child_of_finished_parents_is_due_at_once(queue: FileJobQueue, results: FileResultBackend) -> None:
    parent = job("parent")
    queue.enqueue(parent)
    assert run(queue, results) == ["parent"]
    late = job("late", parent)
    queue.enqueue(late)
    released = queue.get(late.id)
    assert released is not None and released.status is JobStatus.PENDING
    assert run(queue, results) == ["late"]


def test_a_chain_runs_link_by_link(queue: FileJobQueue, results: FileResultBackend) -> None:
    first = job("first")
    queue.enqueue(first)
    second = job("second", first)
    queue.enqueue(second)
    third = job("third", second)  # its parent is itself waiting
    queue.enqueue(third)
    assert [run(queue, results) for _ in range(4)] == [["first"], ["second"], ["third"], []]


def test_a_release_left_by_a_worker_killed_after_its_claim_went_is_made_by_the_sweep(
    queue: FileJobQueue, results: FileResultBackend
) -> None:
    parent = job("parent")
    queue.enqueue(parent)
    child = job("child", parent)
    queue.enqueue(child)
    [claimed] = queue.claim(1)
    claimed.mark_succeeded(claimed.mark_started("w", time.time()), "ok", time.time())
    results.store([claimed])
    os.unlink(queue._claims.pop(claimed.id).path)  # the claim went; the worker died before step 5
    assert queue.claim(5) == []
    sweep(queue)
    assert run(queue, results) == ["child"]


def test_a_child_left_unreleased_by_a_killed_producer_is_released_by_the_sweep(
    queue: FileJobQueue, results: FileResultBackend
) -> None:
    parent = job("parent")
    queue.enqueue(parent)
    assert run(queue, results) == ["parent"]
    child = job("child", parent)
    # Steps 1 and 2 done (blockers, edges, the child in waiting/); the producer died before 3.
    queue._prepare_flow(child)
    queue._dirs("default").make_waiting_dir()
    Path(queue._dirs("default").waiting_path(child.id)).write_bytes(child.to_bytes())
    assert queue.claim(5) == []
    sweep(queue)
    assert run(queue, results) == ["child"]


def test_parents_leaving_together_release_their_child_once(settings: Settings, results: FileResultBackend) -> None:
    first, second = FileJobQueue(settings), FileJobQueue(settings)
    children = []
    for round_ in range(20):
        a, b = job(f"a{round_}"), job(f"b{round_}")
        first.enqueue(a)
        second.enqueue(b)
        child = job(f"child{round_}", a, b, queue="children")  # out of the way of the parents' claims
        first.enqueue(child)
        children.append(child.id)
        [ja], [jb] = first.claim(1), second.claim(1)
        for j in (ja, jb):
            j.mark_succeeded(j.mark_started("w", time.time()), "ok", time.time())
        barrier = threading.Barrier(2)

        def leave(q: FileJobQueue, j: Job) -> None:
            barrier.wait()
            q.complete([j], results)

        threads = [threading.Thread(target=leave, args=pair) for pair in ((first, ja), (second, jb))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    lane = Path(first.root, "queues", "children")
    released = sorted(name.split("-", 2)[-1][: -len(".msgpack")] for name in os.listdir(lane / "queue"))
    assert released == sorted(children)  # each child released, none twice
    assert os.listdir(lane / "waiting") == []


def test_a_parent_the_store_never_held_counts_as_gone_after_three_seconds(
    queue: FileJobQueue, results: FileResultBackend
) -> None:
    orphan = job("orphan", "0123456789abcdef-never-queued")
    queue.enqueue(orphan)
    started = time.monotonic()
    ran: list[str] = []
    while not ran and time.monotonic() - started < 30:
        sweep(queue)
        ran = run(queue, results)
        time.sleep(0.1)
    assert ran == ["orphan"]
    assert 3.0 <= time.monotonic() - started < 15


def test_a_cancelled_child_is_never_released(queue: FileJobQueue, results: FileResultBackend) -> None:
    parent = job("parent")
    queue.enqueue(parent)
    child = job("child", parent)
    queue.enqueue(child)
    cancelled = queue.cancel(child.id)
    assert cancelled is not None and cancelled.id == child.id
    assert run(queue, results) == ["parent"]
    sweep(queue)
    assert run(queue, results) == [] and queue.qsize() == 0
    assert os.listdir(Path(queue.root, "blockers")) == []


def test_cancelling_a_parent_releases_its_children(queue: FileJobQueue, results: FileResultBackend) -> None:
    parent = job("parent")
    queue.enqueue(parent)
    child = job("child", parent)
    queue.enqueue(child)
    assert queue.cancel(parent.id) is not None
    # Released: the worker that claims it reads the parent's record and decides (here: fails it).
    assert run(queue, results) == ["child"]
