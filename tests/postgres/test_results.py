"""The result backend on a real PostgreSQL: records, history queries and their
index plans, tags, retention, waiting."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg
from nuvom.app import App
from nuvom.config import Settings, load_settings
from nuvom.job import Job, JobError, JobStatus
from nuvom.postgres import PostgresResultBackend, PostgresSettings


def done(i: int, status: JobStatus = JobStatus.SUCCESS, task: str = "record", at: float | None = None, **f: Any) -> Job:
    job = Job(
        func_name=task, args=[i], status=status, finished_at=at if at is not None else time.time() + i * 1e-3, **f
    )
    if status is JobStatus.FAILED:
        job.error = JobError(type="RuntimeError", message=f"boom {i}")
    else:
        job.result = i
    return job


def rows(results: PostgresResultBackend, statement: str, params: Any = ()) -> list[Any]:
    statement = statement.replace("{r}", results.sql.results).replace("{t}", results.sql.tags)
    return results.db.run("a test", lambda c: c.execute(statement, params).fetchall())


def test_store_and_read_back_every_field(results):
    job = done(1)
    job.attempts, job.worker_id, job.tags = 2, "host:1", ["a"]
    results.store([job])
    assert results.get_full(job.id) == job
    assert results.get_result(job.id) == 1 and results.get_error(job.id) is None
    assert results.get_full("missing") is None
    assert rows(results, "SELECT func_name, status, attempts, tags FROM {r}") == [("record", "SUCCESS", 2, ["a"])]


def test_list_jobs_newest_first_by_status_and_task(results):
    now = time.time()
    jobs = [
        done(i, JobStatus.FAILED if i % 3 == 0 else JobStatus.SUCCESS, "a" if i % 2 else "b", now + i)
        for i in range(30)
    ]
    results.store(jobs)
    assert [j.args[0] for j in results.list_jobs(limit=5)] == [29, 28, 27, 26, 25]
    assert [j.args[0] for j in results.list_jobs(status="failed", limit=4)] == [27, 24, 21, 18]
    assert [j.args[0] for j in results.list_jobs(task="a", limit=3)] == [29, 27, 25]
    both = results.list_jobs(status=JobStatus.SUCCESS, task="b", limit=100)
    assert [j.args[0] for j in both] == [28, 26, 22, 20, 16, 14, 10, 8, 4, 2]
    assert results.count() == 30 and results.counts() == {"SUCCESS": 20, "FAILED": 10}
    assert results.list_jobs(task="nope") == []


def test_query_pages_by_keyset_with_ties_broken_by_id(results):
    at = time.time()
    jobs = [done(i, at=at if i < 6 else at - i) for i in range(12)]
    results.store(jobs)
    pages, before = [], None
    while True:
        page = results.query(limit=5, before=before)
        if not page:
            break
        pages.append(page)
        before = (page[-1].finished_at, page[-1].id)
    seen = [j.id for page in pages for j in page]
    assert len(seen) == 12 and len(set(seen)) == 12
    assert seen == [j.id for j in sorted(jobs, key=lambda j: (j.finished_at, j.id), reverse=True)]


def test_query_filters_by_status_task_tag_and_time(results):
    base = 1_000_000.0
    jobs = [
        done(i, JobStatus.FAILED if i % 3 == 0 else JobStatus.SUCCESS, "a" if i % 2 else "b", base + i,
             tags=["even"] if i % 2 == 0 else ["odd", "x"])
        for i in range(20)
    ]  # fmt: skip
    results.store(jobs)
    ids = lambda found: [j.args[0] for j in found]  # noqa: E731
    assert ids(results.query(tag="even", limit=3)) == [18, 16, 14]
    assert ids(results.query(tag="x", status="FAILED")) == [15, 9, 3]
    assert ids(results.query(tag="odd", task="a", since=base + 10, until=base + 16)) == [15, 13, 11]
    page = results.query(tag="even", limit=2, before=(base + 14, jobs[14].id))
    assert ids(page) == [12, 10]
    assert ids(results.query(since=base + 17)) == [19, 18, 17]
    assert results.query(tag="nope") == []


def test_a_replaced_record_moves_to_its_new_status_and_its_tags_follow(results):
    job = done(1, JobStatus.FAILED, tags=["t1", "t2"])
    results.store([job])
    job.status, job.error, job.result, job.tags = JobStatus.SUCCESS, None, 5, ["t2"]
    job.finished_at = (job.finished_at or 0) + 1
    results.store([job])
    assert results.list_jobs(status="FAILED") == []
    assert [j.result for j in results.list_jobs(status="SUCCESS")] == [5]
    assert results.query(tag="t1") == [] and [j.result for j in results.query(tag="t2", status="SUCCESS")] == [5]
    assert rows(results, "SELECT tag, status FROM {t}") == [("t2", "SUCCESS")]
    assert results.count() == 1


def test_prune_removes_old_records_with_their_tag_rows(results):
    old = [done(i, at=time.time() - 100, tags=["old"]) for i in range(3)]
    new = [done(i + 10, tags=["new"]) for i in range(2)]
    results.store(old + new)
    assert results.prune(older_than_secs=50) == 3
    assert results.count() == 2
    assert all(results.get_full(j.id) is None for j in old)
    assert rows(results, "SELECT DISTINCT tag FROM {t}") == [("new",)]
    assert results.delete(new[0].id) and not results.delete(new[0].id)
    assert rows(results, "SELECT count(*) FROM {t}") == [(1,)]


def test_results_past_the_retention_are_pruned_as_new_ones_are_stored(psettings):
    results = PostgresResultBackend(load_settings(), postgres=psettings, ttl_secs=30)
    results.store([done(i, at=time.time() - 60) for i in range(4)])  # stored old: pruned by this very store
    results.store([done(99)])
    assert [j.args[0] for j in results.list_jobs()] == [99]
    results.close()


def test_wait_returns_within_milliseconds_of_the_store_and_polls_nothing(results, psettings):
    job = done(1)
    writer = PostgresResultBackend(load_settings(), postgres=psettings.model_copy(update={"postgres_pool_size": 3}))
    writer.count()  # connected: the store below costs one statement
    stored_at: list[float] = []
    before: list[int] = []

    def store_later() -> None:
        time.sleep(0.2)  # the waiter registers and waits meanwhile
        before.append(results._watching().lookups)
        time.sleep(1.0)  # what waiting costs the server is the point
        before.append(results._watching().lookups)
        stored_at.append(time.perf_counter())
        writer.store([job])

    t = threading.Thread(target=store_later)
    t.start()
    record = results.wait(job.id, timeout=10)
    woke = time.perf_counter()
    t.join()
    assert record is not None and record.id == job.id
    assert woke - stored_at[0] < 0.5  # woken by the store's notification, not the 2 s safety poll
    assert before[1] - before[0] <= 10  # a few safety looks, not a poll every few milliseconds (hundreds)
    assert rows(results, f"SELECT count(*) FROM {results.sql.waiters}") == [(0,)]  # the waiter is gone
    writer.close()


def test_many_waiters_of_one_process_each_get_their_record(results, psettings):
    jobs = [done(i) for i in range(20)]
    got: dict[str, Job | None] = {}

    def wait(job: Job) -> None:
        got[job.id] = results.wait(job.id, timeout=10)

    threads = [threading.Thread(target=wait, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    writer = PostgresResultBackend(load_settings(), postgres=psettings)
    writer.store(jobs[:10])
    writer.store(jobs[10:])
    for t in threads:
        t.join(15)
    assert {k: v.id if v else None for k, v in got.items()} == {j.id: j.id for j in jobs}
    writer.close()


def test_wait_times_out_with_none_and_forgets_its_waiter(results):
    t0 = time.monotonic()
    assert results.wait("never", timeout=0.3) is None
    assert 0.25 < time.monotonic() - t0 < 3.0
    assert rows(results, f"SELECT count(*) FROM {results.sql.waiters}") == [(0,)]


def logged_statements(pg_server: Any, schema: str) -> list[str]:
    """The statements naming ``schema`` in the server's log (its connections
    opened with ``log_statement=all``; every statement of a backend names its schema)."""
    text = (pg_server.folder / "server.log").read_text(errors="replace")
    return [line for line in text.splitlines() if "statement:" in line or "execute" in line if schema in line]


def test_the_urls_own_options_reach_the_server_beside_the_backends(pg_server, schema):
    url = pg_server.url() + "?options=-c%20statement_timeout%3D1234"
    results = PostgresResultBackend(
        load_settings(), postgres=PostgresSettings(postgres_url=url, postgres_schema=schema)
    )
    shown = results.db.run(
        "a test", lambda c: c.execute("SELECT current_setting('statement_timeout'), current_setting('jit')").fetchone()
    )
    assert shown == ("1234ms", "off")
    results.close()


def test_waiting_for_a_record_already_stored_is_one_statement_and_registers_no_waiter(pg_server, schema):
    logged = PostgresSettings(
        postgres_url=pg_server.url() + "?options=-c%20log_statement%3Dall", postgres_schema=schema
    )
    results = PostgresResultBackend(load_settings(), postgres=logged)
    jobs = [done(i) for i in range(3)]
    results.store(jobs)
    before = len(logged_statements(pg_server, schema))
    assert [results.wait(job.id, timeout=5).id for job in jobs] == [job.id for job in jobs]
    assert asyncio.run(results.wait_async(jobs[0].id, timeout=5)).id == jobs[0].id
    seen = logged_statements(pg_server, schema)[before:]
    # One read a get(): no waiter written and forgotten (two statements more
    # each), no watcher listening (a connection and a LISTEN more).
    assert len(seen) == 4, "\n".join(seen)
    assert not any(results.sql.waiters in line or "LISTEN" in line for line in seen), "\n".join(seen)
    results.close()


def test_a_loop_of_get_over_finished_jobs_reads_them_in_a_few_statements(pg_server, schema, monkeypatch, tmp_path):
    monkeypatch.setenv("NUVOM_POSTGRES_URL", pg_server.url() + "?options=-c%20log_statement%3Dall")
    monkeypatch.setenv("NUVOM_POSTGRES_SCHEMA", schema)
    app = App(Settings(queue_backend="postgres", result_backend="postgres", data_dir=tmp_path / "data"))
    echo = app.task(lambda x: x, name="echo")
    jobs = echo.map(range(500)) + [echo.delay(i) for i in range(500, 600)]
    app.results.store(
        [Job(id=j.id, func_name="echo", args=j.args, status=JobStatus.SUCCESS, result=j.args[0]) for j in jobs]
    )
    before = len(logged_statements(pg_server, schema))
    assert [job.get(timeout=5) for job in jobs] == list(range(600))
    seen = logged_statements(pg_server, schema)[before:]
    # One statement a batch (16, 32, ... 256 jobs), not one a job.
    assert len(seen) <= 8, "\n".join(line[:160] for line in seen)
    app.close()


def test_wait_async_gets_the_record_without_holding_a_thread(results, psettings):
    job = done(1)
    writer = PostgresResultBackend(load_settings(), postgres=psettings)

    async def main() -> Job | None:
        waiting = asyncio.ensure_future(results.wait_async(job.id, timeout=10))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(writer.store, [job])
        return await waiting

    record = asyncio.run(main())
    assert record is not None and record.id == job.id
    writer.close()


def plan(results: PostgresResultBackend, **query: Any) -> str:
    """The plan of ``results.query(**query)``: captured from the statement it runs."""
    seen: list[tuple[str, Any]] = []
    read = results._read_planned

    def capture(what: str, statement: str, params: Any = ()) -> list[Any]:
        seen.append((statement, params))
        return read(what, statement, params)

    results._read_planned = capture  # type: ignore[method-assign]
    try:
        results.query(**query)
    finally:
        results._read_planned = read  # type: ignore[method-assign]
    statement, params = seen[-1]
    # As the query ran: its values in its text (psycopg binds them client-side).
    found = results.db.run(
        "a test", lambda c: psycopg.ClientCursor(c).execute("EXPLAIN " + statement, params).fetchall()
    )
    return "\n".join(line for (line,) in found)


def test_every_history_query_walks_an_index_in_page_order(results):
    """At any size the page is read off an index in its order: no sort, no scan
    of the table (docs/postgres.md has the timings at 1,000,000 rows)."""
    now = time.time()
    batch = [
        done(i, JobStatus.FAILED if i % 50 == 1 else JobStatus.SUCCESS, f"t{i % 7}", now - i * 0.01,
             tags=["rare"] if i % 997 == 0 else (["common"] if i % 2 else []))
        for i in range(20_000)
    ]  # fmt: skip
    for k in range(0, len(batch), 5000):
        results.store(batch[k : k + 5000])
    for table in (results.sql.results, results.sql.tags):
        results.db.run("a test", lambda c, table=table: c.execute(f"ANALYZE {table}"))
    cursor = (now - 5000 * 0.01, "f" * 32)
    shapes = [
        {},
        {"status": "FAILED"},
        {"task": "t3"},
        {"status": "SUCCESS", "task": "t3"},
        {"before": cursor},
        {"status": "FAILED", "before": cursor},
        {"since": now - 100, "until": now - 10},
        {"tag": "common"},
        {"tag": "rare", "before": cursor},
        {"tag": "common", "status": "FAILED"},
    ]
    for shape in shapes:
        text = plan(results, limit=50, **shape)
        assert "Sort" not in text and "Seq Scan" not in text, (shape, text)
        assert "Index" in text, (shape, text)


ROWS = 200_000


def test_the_first_page_by_tag_reads_a_page_of_the_tags_rows_not_all_of_them(psettings):
    """The page is planned for its tag and its size, though the pool's
    connections plan generically: the server reads about a page of the tag's
    rows (a generic plan read and sorted every one: 269 ms at 1,000,000 results)."""
    results = PostgresResultBackend(load_settings(), postgres=psettings.model_copy(update={"postgres_pool_size": 1}))
    try:
        results.count()  # the schema
        r, t = results.sql.results, results.sql.tags
        payload = done(0).to_bytes()
        # Stored by SQL (storing them one by one takes a while): every other one
        # tagged "common", one in a thousand "rare", newest last.
        results.db.run(
            "a test",
            lambda c: c.execute(
                f"INSERT INTO {r} (id, func_name, status, attempts, finished_at, tags, payload) "
                "SELECT lpad(i::text, 32, '0'), 't', 'SUCCESS', 1, i, CASE WHEN i %% 2 = 1 THEN ARRAY['common'] "
                "ELSE ARRAY[]::text[] END || CASE WHEN i %% 1000 = 0 THEN ARRAY['rare'] ELSE ARRAY[]::text[] END, "
                "%s FROM generate_series(1, %s) AS i",
                (payload, ROWS),
            ),
        )
        results.db.run(
            "a test",
            lambda c: c.execute(
                f"INSERT INTO {t} (tag, finished_at, job_id, status, func_name) "
                f"SELECT x, finished_at, id, status, func_name FROM {r}, unnest(tags) AS x"
            ),
        )
        for table in (r, t):
            results.db.run("a test", lambda c, table=table: c.execute(f"VACUUM ANALYZE {table}"))
        schema = results.db.schema

        def rows_read() -> int:
            # Flushed at the end of the statement before (the pool holds one connection).
            results.db.run("a test", lambda c: c.execute("SELECT pg_stat_force_next_flush()"))
            [(n,)] = results.db.run(
                "a test",
                lambda c: c.execute(
                    "SELECT coalesce(sum(s.idx_tup_read), 0) + (SELECT seq_tup_read FROM pg_stat_user_tables "
                    "WHERE schemaname = %s AND relname = 'nuvom_job_tags') FROM pg_stat_user_indexes AS s "
                    "WHERE s.schemaname = %s AND s.relname = 'nuvom_job_tags'",
                    (schema, schema),
                ).fetchall(),
            )
            return int(n)

        before = rows_read()
        page = results.query(tag="common", limit=50)
        read = rows_read() - before
        assert len(page) == 50
        assert 50 <= read <= 100, read  # of the tag's 100,000 rows (a generic plan read them all)
    finally:
        results.close()
