"""The statements that settle claims of the SQLite queue
(:class:`nuvom.sqlite.SQLiteJobQueue`): hand-backs, start marks and
completions, each fenced by the claim it was made under, and the decoding of
a claimed row (with the quarantine record of one that cannot be run).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from nuvom.errors import SerializationError
from nuvom.job import Job, JobError, JobStatus
from nuvom.sqlite._control import chunks, qmarks, release

__all__ = ["decode_row", "delete_claimed", "requeue_rows", "unreadable", "write_marks"]

log = logging.getLogger("nuvom.sqlite")

# A job put back that this object never claimed: the row as given, or as it
# was if it is still there. Its unique key, if it has one and the row is gone,
# only while no other job holds it: a second holder would fail the whole write.
_UPSERT = (
    "INSERT INTO nuvom_queue (id, func_name, state, ready_at, attempts, timeout_secs, created_at, payload, queue, "
    "priority, unique_key) VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?7, ?8, ?9, "
    "CASE WHEN EXISTS (SELECT 1 FROM nuvom_queue WHERE unique_key = ?10) THEN NULL ELSE ?10 END) "
    "ON CONFLICT (id) DO UPDATE SET func_name = excluded.func_name, state = 0, "
    "ready_at = excluded.ready_at, attempts = excluded.attempts, timeout_secs = excluded.timeout_secs, "
    "payload = excluded.payload, claim_token = NULL, claimed_by = NULL, started_at = NULL"
)
_REQUEUE_CLAIMED = (
    "UPDATE nuvom_queue SET state = 0, ready_at = ?, attempts = ?, payload = ?, claim_token = NULL, "
    "claimed_by = NULL, started_at = NULL WHERE id = ? AND claim_token = ?"
)


def requeue_rows(conn: sqlite3.Connection, guarded: list[tuple[Any, ...]], free: list[tuple[Any, ...]]) -> None:
    for row in guarded:
        if conn.execute(_REQUEUE_CLAIMED, row).rowcount == 0:
            log.info("job %s was claimed by another worker meanwhile; not requeued", row[3])
    if free:
        conn.executemany(_UPSERT, free)


def write_marks(conn: sqlite3.Connection, groups: dict[tuple[str, int, float], list[str]]) -> set[str]:
    """Write start marks, one statement per claim and lease; returns the ids
    whose claim still held (the others were taken over).

    No ``RETURNING``: each row a statement returns is a step of its own, and
    each step lets go of the GIL, which a worker's other threads then hold
    while the writer waits for it back. The count of rows changed says
    whether every claim held (nearly always); only when one did not does a
    second statement find which."""
    now = time.time()
    marked: set[str] = set()
    for (kind, token, lease), ids in groups.items():
        for chunk in chunks(ids):
            # A fresh claim keeps its lease (it has 90 % of it or more left): not
            # moving ready_at spares an index update, about half the mark's cost.
            sets = "started_at = ?" if kind == "fresh" else "started_at = ?, ready_at = ? + ?"
            params = (now,) if kind == "fresh" else (now, now, lease)
            where = f"id IN ({qmarks(len(chunk))}) AND claim_token = ?"
            changed = conn.execute(f"UPDATE nuvom_queue SET {sets} WHERE {where}", (*params, *chunk, token)).rowcount
            if changed == len(chunk):
                marked.update(chunk)
            elif changed:
                # The rows still under this claim are the ones just marked.
                rows = conn.execute(f"SELECT id FROM nuvom_queue WHERE {where}", (*chunk, token)).fetchall()
                marked.update(row[0] for row in rows)
    return marked


def delete_claimed(
    conn: sqlite3.Connection, jobs: Sequence[Job], tokens: Sequence[int | None]
) -> tuple[list[str], int]:
    """Delete the queue rows of ``jobs`` whose claim is still the one these
    jobs were run under, and release the jobs that waited only for them;
    returns the ids deleted and how many were released.

    The claim is known by its token when it was made through this queue
    object; otherwise the row must still be claimed with the job's attempt
    count (a later claim would have counted another attempt)."""
    kept: list[str] = []
    awaited: list[str] = []
    # Grouped by claim (a worker's completions mostly come from one or two
    # claims), so each statement finds its rows through the id index.
    by_token: dict[int, list[str]] = {}
    for job, token in zip(jobs, tokens, strict=True):
        if token is not None:
            by_token.setdefault(token, []).append(job.id)
    for token, ids in by_token.items():
        for chunk in chunks(ids):
            # Which of them this claim no longer holds (gone, or claimed again
            # since), and which have dependents waiting: nearly always none, one
            # step. Then the delete, one step, where RETURNING would take a step
            # a row (see write_marks). The write lock is held: nothing changes
            # between the two.
            odd = conn.execute(
                f"SELECT v.column1, q.claim_token IS ? AS held FROM (VALUES {_values(len(chunk))}) AS v "
                "LEFT JOIN nuvom_queue AS q ON q.id = v.column1 WHERE q.claim_token IS NOT ? OR q.awaited",
                (token, *chunk, token),
            ).fetchall()
            conn.execute(
                f"DELETE FROM nuvom_queue WHERE id IN ({qmarks(len(chunk))}) AND claim_token = ?", (*chunk, token)
            )
            lost = {row[0] for row in odd if not row[1]}
            kept.extend([job_id for job_id in chunk if job_id not in lost] if lost else chunk)
            awaited.extend(row[0] for row in odd if row[1])
    for job, token in zip(jobs, tokens, strict=True):
        if token is None:
            cur = conn.execute(
                "DELETE FROM nuvom_queue WHERE id = ? AND state = 1 AND attempts = ? RETURNING id, awaited",
                (job.id, job.attempts),
            )
            deleted = cur.fetchall()
            kept.extend(row[0] for row in deleted)
            awaited.extend(row[0] for row in deleted if row[1])
    return kept, release(conn, awaited) if awaited else 0


def _values(n: int) -> str:
    return ",".join(["(?)"] * n)


def decode_row(raw_id: bytes, raw_name: bytes, payload: bytes) -> Job:
    """The job of a queue row; :class:`SerializationError` saying what is wrong
    if the row cannot be run as stored."""
    try:
        job_id = raw_id.decode("utf-8")
        raw_name.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SerializationError(f"its id or task name is not valid UTF-8 ({exc})") from None
    job = Job.from_bytes(payload)
    if job.id != job_id:
        # Run, it would be settled under the other id and this row never removed.
        raise SerializationError(f"the row of job {job_id!r} holds job {job.id!r}")
    return job


def unreadable(
    seq: int,
    raw_id: bytes,
    raw_name: bytes,
    attempts: int,
    created_at: float,
    payload: bytes,
    exc: Exception,
    worker: str,
) -> Job:
    """The quarantine record of a row that cannot be run: FAILED with the reason;
    the raw row in ``result``."""
    job_id = raw_id.decode("utf-8", "replace")
    if not _VALID_ID.fullmatch(job_id):
        job_id = f"quarantined-{seq}"
    now = time.time()
    return Job(
        id=job_id,
        func_name=raw_name.decode("utf-8", "replace"),
        status=JobStatus.FAILED,
        attempts=attempts,
        created_at=created_at if isinstance(created_at, (int, float)) else now,
        started_at=None,
        finished_at=now,
        worker_id=worker,
        store_result=True,
        result={"quarantined": True, "id": raw_id, "func_name": raw_name, "payload": payload},
        error=JobError(
            type="SerializationError",
            message=f"the job's queue row is corrupt and was quarantined, not run: {exc}",
        ),
    )


_VALID_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
