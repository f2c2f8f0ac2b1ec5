"""The statements, one per step: each step of the queue is one statement (so one
round trip, and one transaction in autocommit), with the jobs of a batch passed
as arrays and unnested on the server.

Times come from the server's clock (``statement_timestamp()``): leases and due
times mean the same on every host whatever its clock. A job's due time travels
as an offset from the sender's now.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import cast

__all__ = ["NOW", "Statements", "bools", "byteas", "channel", "floats", "ints", "text_array", "texts"]

#: The server's time, epoch seconds (stable within a statement, so indexes serve it).
NOW = "date_part('epoch', statement_timestamp())"


def channel(schema: str, kind: str) -> str:
    """The LISTEN/NOTIFY channel of ``kind`` ("jobs", "done") for this schema;
    names stay within PostgreSQL's 63 bytes."""
    name = f"nuvom.{schema}.{kind}"
    if len(name) <= 63:
        return name
    return f"nuvom.{hashlib.sha1(schema.encode()).hexdigest()[:16]}.{kind}"


def texts(items: Sequence[str | None]) -> str:
    """A ``text[]`` literal. Arrays travel as literals in one text parameter each:
    psycopg builds an array parameter in Python element by element (measured at
    about a third of a worker's CPU per group write), a literal is one string.
    Items with nothing to escape and no ``None`` (ids, task names: the usual
    case) are joined in one call, without a step per item."""
    if not items:
        return "{}"
    if None not in items:
        strings = cast("Sequence[str]", items)
        plain = "".join(strings)
        if '"' not in plain and "\\" not in plain:
            return '{"' + '","'.join(strings) + '"}'
    elif items.count(None) == len(items):
        return "{" + ",".join(["NULL"] * len(items)) + "}"
    return "{" + ",".join("NULL" if item is None else _quote(item) for item in items) + "}"


def floats(items: Sequence[float | None]) -> str:
    if None not in items:
        return "{" + ",".join(map(repr, map(float, cast("Sequence[float]", items)))) + "}"
    return "{" + ",".join("NULL" if item is None else repr(float(item)) for item in items) + "}"


def ints(items: Sequence[int | None]) -> str:
    if None not in items:
        return "{" + ",".join(map(str, map(int, cast("Sequence[int]", items)))) + "}"
    return "{" + ",".join("NULL" if item is None else str(int(item)) for item in items) + "}"


def bools(items: Sequence[bool]) -> str:
    return "{" + ",".join(["t" if item else "f" for item in items]) + "}"


def byteas(items: Sequence[bytes]) -> str:
    if not items:
        return "{}"
    return '{"\\\\x' + '","\\\\x'.join([item.hex() for item in items]) + '"}'


def _quote(item: str) -> str:
    return '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"'


def text_array(items: list[str] | None) -> str | None:
    """A ``text[]`` literal of ``items`` (``None`` for none): arrays of arrays of
    varying length cannot travel as one array parameter, literals can."""
    if not items:
        return None
    return "{" + ",".join(map(_quote, items)) + "}"


# The columns of a finished job, as unnested from the arrays of a store.
_RESULT_INPUT = (
    "unnest(%(id)s::text[], %(token)s::bigint[], %(attempts)s::int[], %(func_name)s::text[], %(status)s::text[], "
    "%(worker_id)s::text[], %(created_at)s::float8[], %(started_at)s::float8[], %(finished_at)s::float8[], "
    "%(error_type)s::text[], %(error_message)s::text[], %(tags)s::text[], %(payload)s::bytea[]) "
    "AS f(id, token, attempts, func_name, status, worker_id, created_at, started_at, finished_at, error_type, "
    "error_message, tags, payload)"
)
# The columns of a queued job, as unnested from the arrays of an enqueue.
_JOB_INPUT = (
    "unnest(%(id)s::text[], %(func_name)s::text[], %(queue)s::text[], %(priority)s::int[], %(due_at)s::float8[], "
    "%(attempts)s::int[], %(timeout)s::float8[], %(created_at)s::float8[], %(payload)s::bytea[]) "
    "AS f(id, func_name, queue, priority, due_at, attempts, timeout_secs, created_at, payload)"
)
_RESULT_COLUMNS = (
    "id, func_name, status, attempts, worker_id, created_at, started_at, finished_at, error_type, "
    "error_message, tags, payload"
)
_RESULT_REPLACE = ", ".join(f"{c} = excluded.{c}" for c in _RESULT_COLUMNS.split(", ")[1:])


class Statements:
    """The statements on one schema (``schema`` is letters, digits and underscores).

    A statement that changes rows named in an array also says ``id = ANY(array)``:
    the planner then reads them through the primary key whatever it guesses of the
    array's size (a join alone was planned as a scan of the whole queue)."""

    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        self.queue, self.results, self.tags = f"{s}.nuvom_queue", f"{s}.nuvom_results", f"{s}.nuvom_job_tags"
        self.waiters, self.workers = f"{s}.nuvom_result_waiters", f"{s}.nuvom_workers"
        self.schedules, self.ticks = f"{s}.nuvom_schedules", f"{s}.nuvom_schedule_ticks"
        self.jobs_channel, self.done_channel = channel(schema, "jobs"), channel(schema, "done")
        self.rates_fn = f"{s}.nuvom_acquire_rate"
        q = self.queue
        # Queued from arrays (one job or a whole map()), and a NOTIFY to wake idle
        # workers: delivered at commit, so a job queued in the caller's own
        # transaction wakes nobody before it is visible, or ever if rolled back.
        # Due times are the sender's, made relative to its clock at sending (%(sent)s).
        self.enqueue = (
            f"WITH j AS (INSERT INTO {q} (id, func_name, queue, priority, ready_at, attempts, timeout_secs, "
            f"created_at, payload) SELECT f.id, f.func_name, f.queue, f.priority, {NOW} + (f.due_at - %(sent)s), "
            f"f.attempts, f.timeout_secs, f.created_at, f.payload FROM {_JOB_INPUT}) "
            f"SELECT pg_notify('{self.jobs_channel}', '')"
        )
        # One job: the same, without arrays (a .delay() loop's one statement).
        self.enqueue_one = (
            f"WITH j AS (INSERT INTO {q} (id, func_name, queue, priority, ready_at, attempts, timeout_secs, "
            f"created_at, payload) VALUES (%(id)s, %(func_name)s, %(queue)s, %(priority)s, "
            f"{NOW} + (%(due_at)s - %(sent)s), %(attempts)s, %(timeout)s, %(created_at)s, %(payload)s)) "
            f"SELECT pg_notify('{self.jobs_channel}', '')"
        )
        # Jobs with unique keys or parents (workflows). Each parent still in the
        # queue gets the child in its ``children`` (the row lock orders this with
        # the statement that deletes the parent: either the parent is gone and
        # does not count, or its deletion waits and reads the child back); a job
        # with parents left waits (state 2). A job whose unique key is held is not
        # queued: the holder's id is returned instead, one row per job given.
        self.enqueue_control = (
            "WITH e AS (SELECT * FROM unnest(%(e_child)s::text[], %(e_parent)s::text[]) AS e(child, parent)), "
            f"held AS (UPDATE {q} AS p SET children = coalesce(p.children, '{{}}') || x.kids "
            "FROM (SELECT parent, array_agg(child) AS kids FROM e GROUP BY parent) AS x "
            "WHERE p.id = x.parent AND p.id = ANY(%(e_parent)s::text[]) RETURNING p.id), "
            "c AS (SELECT e.child, count(*) AS n FROM e JOIN held ON held.id = e.parent GROUP BY e.child), "
            f"j AS (INSERT INTO {q} (id, func_name, queue, priority, unique_key, state, blockers, ready_at, due_at, "
            "attempts, timeout_secs, created_at, payload) SELECT f.id, f.func_name, f.queue, f.priority, u.key, "
            "CASE WHEN c.n > 0 THEN 2 ELSE 0 END, coalesce(c.n, 0), "
            f"CASE WHEN c.n > 0 THEN 'Infinity'::float8 ELSE {NOW} + (f.due_at - %(sent)s) END, "
            f"{NOW} + (f.due_at - %(sent)s), f.attempts, "
            f"f.timeout_secs, f.created_at, f.payload FROM {_JOB_INPUT} "
            "JOIN unnest(%(id)s::text[], %(unique_key)s::text[]) AS u(id, key) ON u.id = f.id "
            "LEFT JOIN c ON c.child = f.id "
            "ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING RETURNING id, unique_key, state), "
            f"n AS (SELECT pg_notify('{self.jobs_channel}', '') FROM (SELECT 1 FROM j WHERE state = 0 LIMIT 1) AS x) "
            "SELECT u.id, coalesce(j.id, (SELECT h.id FROM "
            f"{q} AS h WHERE h.unique_key = u.key)) FROM unnest(%(id)s::text[], %(unique_key)s::text[]) AS u(id, key) "
            "LEFT JOIN j ON j.id = u.id UNION ALL SELECT NULL, NULL FROM n"
        )
        # Jobs that left the queue (``done``: their ``children``) release their
        # waiting children, in the statement that takes them out.
        self.release = (
            f"rel AS (SELECT {s}.nuvom_release(array_agg(c), '{self.jobs_channel}') FROM done, "
            "unnest(done.children) AS c HAVING count(*) > 0)"
        )

    def claim(self, lease: str) -> str:
        """Up to ``%(n)s`` due jobs of queue ``%(queue)s``, higher priority first,
        then oldest due first, rows other claimers hold
        skipped; the first ``%(start)s`` start-marked (their claim's lease runs
        from now). ``attempts`` undoes the attempt of an expired claim that
        never started. With nothing claimed, one row instead: seconds until the
        next row is due (or a lease ends), ``NULL`` if the queue is empty.

        ``%(due_slack)s`` is 0. A parameter in "due by now" keeps its plan (a
        generic one: the pool's connections force them) from being chosen by how
        many rows were due when the table was last analyzed: planned while the
        queue was idle, it read every due row through another index and sorted
        them; planned without a guess, it reads this queue's claim index.

        The index is walked one priority at a time (``ps``: a loose scan of the
        queue's priorities): within a priority the due rows are a range, left at
        the first row not due, where one walk of the whole queue read every
        delayed and every running row behind the due ones. A claim may lock up to
        ``%(n)s`` rows of each priority for the instant of its statement and
        takes the first ``%(n)s``: with one priority (the usual case), as many as it takes."""
        q = self.queue
        return (
            # The queue's priorities, highest first, one index probe each.
            f"WITH RECURSIVE ps AS ((SELECT priority FROM {q} WHERE queue = %(queue)s "
            "ORDER BY priority DESC LIMIT 1) UNION ALL SELECT (SELECT p.priority FROM "
            f"{q} AS p WHERE p.queue = %(queue)s AND p.priority < ps.priority ORDER BY p.priority DESC LIMIT 1) "
            "FROM ps WHERE ps.priority IS NOT NULL), "
            # Each priority's due rows: a range of the index, left at the first row
            # not due (ordered as the index is, so that no other index serves it).
            "due AS (SELECT c.id, c.priority, c.ready_at FROM ps, LATERAL (SELECT id, priority, ready_at "
            f"FROM {q} WHERE queue = %(queue)s AND priority = ps.priority "
            f"AND ready_at <= {NOW} + %(due_slack)s::float8 ORDER BY priority DESC, ready_at, id LIMIT %(n)s "
            "FOR UPDATE SKIP LOCKED) AS c WHERE ps.priority IS NOT NULL "
            "ORDER BY c.priority DESC, c.ready_at, c.id LIMIT %(n)s), "
            "ranked AS (SELECT id, row_number() OVER (ORDER BY priority DESC, ready_at, id) AS k FROM due), "
            f"claimed AS (UPDATE {q} AS j SET state = 1, "
            "attempts = j.attempts + 1 - (j.state = 1 AND j.started_at IS NULL)::int, "
            f"started_at = CASE WHEN r.k <= %(start)s THEN {NOW} END, "
            f"claim_token = %(token)s, claimed_by = %(by)s, ready_at = {NOW} + {lease} "
            "FROM ranked AS r WHERE j.id = r.id AND j.id = ANY(ARRAY(SELECT id FROM due)) "
            "RETURNING r.k, j.id, j.attempts, j.created_at, j.func_name, j.payload) "
            "SELECT k, id, attempts, created_at, func_name, payload, NULL::float8 FROM claimed "
            "UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, "
            f"(SELECT min(ready_at) FROM {q} WHERE queue = %(queue)s) - {NOW} "
            "WHERE NOT EXISTS (SELECT 1 FROM claimed)"
        )

    def extend(self, lease: str) -> str:
        return (
            f"UPDATE {self.queue} AS j SET ready_at = {NOW} + {lease} "
            "FROM unnest(%(id)s::text[], %(token)s::bigint[]) AS m(id, token) "
            "WHERE j.id = m.id AND j.claim_token = m.token AND j.id = ANY(%(id)s::text[])"
        )

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one Statements per Database, kept for the process's life
    def settle(self, lease: str, finished: str, guarded: bool, free: bool, marks: bool) -> str:
        """A worker's group write in one statement. ``finished``: ``"fenced"``
        (outcomes stored only for claims still held: by token, or without one
        by the attempt count), ``"plain"`` (stored as given: ``results.store``)
        or ``""``. ``guarded``: hand-backs of claims held here; ``free``:
        hand-backs written as given; ``marks``: start marks, fenced by token.

        Every part may run twice (a retry after a lost reply): the first run
        spent the tokens. The parts touch disjoint jobs. Rows returned:
        ``("d", id)`` stored, ``("p", id)`` a record replaced, ``("b", id)``
        handed back, ``("m", id)`` start-marked, ``("n", NULL)`` notified."""
        q, r, t, w = self.queue, self.results, self.tags, self.waiters
        ctes: list[str] = []
        selects: list[str] = []
        if finished:
            ctes.append(f"f AS (SELECT * FROM {_RESULT_INPUT})")
            if finished == "fenced":
                ctes.append(
                    f"done AS (DELETE FROM {q} AS j USING f WHERE j.id = f.id AND j.id = ANY(%(id)s::text[]) "
                    "AND (j.claim_token = f.token OR (f.token IS NULL AND j.state = 1 AND j.attempts = f.attempts)) "
                    "RETURNING j.id, j.children)"
                )
                ctes.append(self.release)
                selects.append("SELECT 'n', NULL FROM rel")
            else:
                ctes.append("done AS (SELECT id, NULL::text[] AS children FROM f)")
            ctes += [
                # Records replaced (stored before under the same id): their tag rows
                # that no longer match go; new ones are added below.
                f"prev AS (SELECT r.id FROM {r} AS r JOIN done USING (id))",
                f"untag AS (DELETE FROM {t} AS t USING prev WHERE t.job_id = prev.id AND NOT EXISTS "
                "(SELECT 1 FROM f WHERE f.id = t.job_id AND f.finished_at = t.finished_at AND f.status = t.status "
                "AND f.func_name = t.func_name AND t.tag = ANY(f.tags::text[])))",
                f"stored AS (INSERT INTO {r} ({_RESULT_COLUMNS}) SELECT f.id, f.func_name, f.status, f.attempts, "
                "f.worker_id, f.created_at, f.started_at, f.finished_at, f.error_type, f.error_message, "
                "f.tags::text[], f.payload FROM f JOIN done USING (id) "
                f"ON CONFLICT (id) DO UPDATE SET {_RESULT_REPLACE} "
                "RETURNING id, func_name, status, finished_at, tags)",
                f"tagged AS (INSERT INTO {t} (tag, finished_at, job_id, status, func_name) "
                "SELECT x.tag, s.finished_at, s.id, s.status, s.func_name FROM stored AS s, unnest(s.tags) AS x(tag) "
                "ON CONFLICT DO NOTHING)",
                # Waiters of these jobs (job.get()) are told which ones are stored.
                f"told AS (SELECT pg_notify('{self.done_channel}', CASE WHEN count(*) > 200 THEN '' "
                "ELSE string_agg(x.job_id, ',') END) FROM "
                f"(SELECT DISTINCT w.job_id FROM {w} AS w JOIN done ON w.job_id = done.id) AS x HAVING count(*) > 0)",
            ]
            selects += ["SELECT 'd', id FROM done", "SELECT 'p', id FROM prev", "SELECT 'n', NULL FROM told"]
        if guarded:
            ctes.append(
                f"back AS (UPDATE {q} AS j SET state = 0, ready_at = {NOW} + (b.due_at - %(sent)s), "
                "attempts = b.attempts, "
                "payload = b.payload, claim_token = NULL, claimed_by = NULL, started_at = NULL "
                "FROM unnest(%(b_id)s::text[], %(b_token)s::bigint[], %(b_due)s::float8[], %(b_attempts)s::int[], "
                "%(b_payload)s::bytea[]) AS b(id, token, due_at, attempts, payload) "
                "WHERE j.id = b.id AND j.claim_token = b.token AND j.id = ANY(%(b_id)s::text[]) RETURNING j.id)"
            )
            selects.append("SELECT 'b', id FROM back")
        if free:
            ctes.append(
                f"given AS (INSERT INTO {q} (id, func_name, queue, priority, state, ready_at, attempts, timeout_secs, "
                f"created_at, payload) SELECT g.id, g.func_name, g.queue, g.priority, 0, "
                f"{NOW} + (g.due_at - %(sent)s), g.attempts, g.timeout_secs, g.created_at, "
                "g.payload FROM unnest(%(g_id)s::text[], %(g_func)s::text[], %(g_queue)s::text[], "
                "%(g_priority)s::int[], "
                "%(g_due)s::float8[], %(g_attempts)s::int[], %(g_timeout)s::float8[], %(g_created)s::float8[], "
                "%(g_payload)s::bytea[]) "
                "AS g(id, func_name, queue, priority, due_at, attempts, timeout_secs, created_at, payload) "
                "ON CONFLICT (id) DO UPDATE SET func_name = excluded.func_name, state = 0, "
                "queue = excluded.queue, priority = excluded.priority, "
                "ready_at = excluded.ready_at, attempts = excluded.attempts, timeout_secs = excluded.timeout_secs, "
                "payload = excluded.payload, claim_token = NULL, claimed_by = NULL, started_at = NULL RETURNING id)"
            )
            selects.append("SELECT 'b', id FROM given")
        if guarded or free:
            # Handed back or due again later: idle workers look (and learn the next due time).
            back = " UNION ALL ".join(
                [*(["SELECT 1 FROM back"] if guarded else []), *(["SELECT 1 FROM given"] if free else [])]
            )
            ctes.append(f"wake AS (SELECT pg_notify('{self.jobs_channel}', '') FROM ({back} LIMIT 1) AS x)")
            selects.append("SELECT 'n', NULL FROM wake")
        if marks:
            ctes.append(
                f"marked AS (UPDATE {q} AS j SET started_at = {NOW}, "
                f"ready_at = CASE WHEN m.keep THEN j.ready_at ELSE {NOW} + {lease} END "
                "FROM unnest(%(m_id)s::text[], %(m_token)s::bigint[], %(m_keep)s::bool[]) AS m(id, token, keep) "
                "WHERE j.id = m.id AND j.claim_token = m.token AND j.id = ANY(%(m_id)s::text[]) RETURNING j.id)"
            )
            selects.append("SELECT 'm', id FROM marked")
        return "WITH " + ", ".join(ctes) + " " + " UNION ALL ".join(selects)
