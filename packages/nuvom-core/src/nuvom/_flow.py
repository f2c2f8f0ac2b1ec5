"""What a workflow job does once its parents have finished (:mod:`nuvom.workflow`).

The store releases a job when every parent has a final record; the worker then
reads those records and decides here: run it (with the parents' results or
error as its first argument, as its ``flow`` says), fail it because a parent
it needed failed (``DependencyFailed``), or skip an ``on_failure`` branch no
parent needed (``Skipped``).
"""

from __future__ import annotations

from typing import Any, Literal

from nuvom.job import Job, JobError, JobStatus

__all__ = ["Decision", "decide"]

#: ``("run", (args, kwargs))``, or ``("fail", error)`` / ``("skip", error)``: settled without running.
Decision = tuple[Literal["run", "fail", "skip"], Any]


def decide(job: Job, parents: list[Job | None]) -> Decision:
    flow = job.flow
    assert flow is not None
    missing = [pid for pid, record in zip(flow.parents, parents, strict=True) if record is None]
    if missing:
        return "fail", JobError(
            type="DependencyFailed",
            message=f"job {job.id} waits for job(s) {', '.join(missing)}, whose record is gone "
            "(pruned by the result retention, or deleted): it cannot run",
        )
    finished = [record for record in parents if record is not None]
    failed = [record for record in finished if record.status is JobStatus.FAILED]
    if flow.run_if == "failed":
        if not failed:
            return "skip", JobError(
                type="Skipped", message=f"on_failure branch not needed: job(s) {', '.join(flow.parents)} succeeded"
            )
        first = failed[0].error or JobError(type="Error", message="unknown failure")
        error = {"job_id": failed[0].id, "type": first.type, "message": first.message, "traceback": first.traceback}
        return "run", ([error, *job.args], job.kwargs)
    if failed:
        reasons = "; ".join(
            f"job {record.id} ({record.func_name}) failed: {record.error.type if record.error else 'Error'}"
            for record in failed
        )
        return "fail", JobError(type="DependencyFailed", message=f"not run: {reasons}")
    if flow.receives == "result":
        return "run", ([finished[0].result, *job.args], job.kwargs)
    if flow.receives == "results":
        return "run", ([[record.result for record in finished], *job.args], job.kwargs)
    return "run", (job.args, job.kwargs)
