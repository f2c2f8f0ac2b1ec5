"""The process pool: jobs in child processes, with hard timeouts.

::

    claim loop --submit--> backlog --> one feeder thread per child --msgpack--> child process
                                              |                                    |
    runner.settle (hooks, outcomes) <---------+<---------- result or error --------+

* Children are fresh interpreters (``python -c``, a *spawn* on every OS:
  nothing is forked) that import each job's task by its module path, with
  the worker's ``sys.path`` and working directory (so the project's modules).
  They do not run the worker's ``__main__`` script again (``multiprocessing``'s
  spawn would, and an unguarded script would queue its jobs once per child).
  Requests and answers are msgpack frames on the child's stdin and a private
  copy of its stdout; what the task prints goes to stderr.
* Each child has a feeder thread in the worker: it sends one job, waits for
  the answer until the job's deadline, and at the deadline kills the child
  (a hard timeout, unlike a thread's) and starts a fresh one.
* A child that dies while running a job (a segfault, ``os._exit()``, the
  out-of-memory killer) fails that job with :class:`~nuvom.errors.ChildProcessDied`;
  the feeder starts a new child and goes on.
* Children never outlive the worker: a thread in each reads its stdin pipe,
  whose other end only the worker holds, and exits the child at end of file,
  which the OS delivers when the worker goes, even after a SIGKILL. They ignore
  SIGINT/SIGTERM: a Ctrl+C reaches the whole process group, and the worker's
  grace period, not the signal, decides when a running job stops.
* Hooks run in the worker, around the child's call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue as queue_mod
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from nuvom import _fate, serialization
from nuvom._engine.child import read_frame, write_frame
from nuvom._engine.outcomes import OutcomeWriter
from nuvom._runner import JobRunner
from nuvom._settings import Settings
from nuvom._task import Task
from nuvom.errors import ChildProcessDied, SerializationError
from nuvom.job import Job, JobError

__all__ = ["ProcessPool"]

log = logging.getLogger("nuvom.worker.process")

# How often a feeder waiting on its child looks whether the worker is stopping.
_POLL = 0.1
# The child's command: the worker's sys.path first, so nuvom and the project import.
_CHILD_CODE = "import sys, json; sys.path[:] = json.loads(sys.argv[1]); import nuvom._engine.child as c; c.child_main()"
# How long a new child may take to start and import the tasks.
_START_WAIT = 60.0
# How long a child asked to stop (recycling, shutdown) may take before it is killed.
_STOP_WAIT = 2.0


class _Child:
    """One child process, its pipes, and a thread reading its answers."""

    def __init__(self, sys_path: list[str], cwd: str, warm: dict[str, str | None]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD_CODE, json.dumps(sys_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=cwd,
            bufsize=0,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._out = self.proc.stdin
        self._in = self.proc.stdout
        self.answers: queue_mod.SimpleQueue[bytes | None] = queue_mod.SimpleQueue()
        self._reader = threading.Thread(target=self._read, name=f"nuvom-pool-reader-{self.proc.pid}", daemon=True)
        self._reader.start()
        self.jobs = 0
        self.send(serialization.dumps(warm))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        try:
            while True:
                frame = read_frame(self._in)
                self.answers.put(frame)
                if frame is None:
                    return
        except (OSError, ValueError):
            self.answers.put(None)

    def send(self, payload: bytes) -> None:
        write_frame(self._out, payload)

    def wait_ready(self, timeout: float) -> bool:
        try:
            return self.answers.get(timeout=timeout) is not None
        except queue_mod.Empty:
            return False

    def stop(self) -> None:
        """Ask the child to exit, kill it if it does not, release every handle."""
        try:
            self._out.close()  # end of file on its stdin: the child exits
        except OSError:
            pass
        try:
            self.proc.wait(_STOP_WAIT)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(_STOP_WAIT)
        for pipe in (self._out, self._in):
            try:
                pipe.close()
            except OSError:
                pass

    def exit_description(self) -> str:
        try:
            code = self.proc.wait(_STOP_WAIT)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = "unknown signal"
            hint = " (killed: out of memory, or by someone else)" if name == "SIGKILL" else ""
            return f"died with signal {-code} ({name}){hint}"
        return f"exited with exit code {code}"


class ProcessPool:
    """Runs process jobs for a worker on ``processes`` children."""

    kind: ClassVar[Literal["process"]] = "process"

    def __init__(
        self,
        *,
        runner: JobRunner,
        writer: OutcomeWriter,
        settings: Settings,
        prefetch: int,
        on_free: Callable[[], None],
        processes: int | None = None,
    ) -> None:
        self.runner = runner
        self.writer = writer
        self.processes = processes or settings.processes or os.cpu_count() or 1
        self.max_jobs_per_child = settings.max_jobs_per_child
        self.default_timeout = settings.job_timeout_secs
        self.default_policy = settings.timeout_policy
        self.capacity = self.processes + prefetch
        self._on_free = on_free
        self._backlog: deque[Job] = deque()
        self._cond = threading.Condition()
        self._running: dict[int, Job] = {}
        self._children: dict[int, _Child] = {}
        self._stopping = False
        self._interrupt = False
        self._feeders: list[threading.Thread] = []
        # Task paths run so far: a new child imports them before it says it is ready.
        self._warm: dict[str, str | None] = {}
        self.children_started = 0
        self._ready: set[int] = set()  # feeders whose child is up and idle or busy

    # -- life -----------------------------------------------------------------
    def start(self) -> None:
        for i in range(self.processes):
            t = threading.Thread(target=self._feed, args=(i,), name=f"nuvom-pool-feeder-{i}", daemon=True)
            t.start()
            self._feeders.append(t)

    @property
    def slots(self) -> int:
        return self.processes

    def room(self) -> int:
        return self.capacity - len(self._backlog) - len(self._running)

    def hungry(self) -> bool:
        return len(self._backlog) < self.processes

    def idle(self) -> int:
        return 0 if self._backlog else max(0, len(self._ready) - len(self._running))

    def inflight(self) -> int:
        return len(self._running)

    def held_ids(self) -> list[str]:
        return [j.id for j in self.running()] + [j.id for j in list(self._backlog)]

    def running(self, since: float | None = None) -> list[Job]:
        return list(self._running.values())

    def cancel(self, job_id: str) -> None:
        """Kill the child running ``job_id``: the job ends ``Cancelled``."""
        for index, job in list(self._running.items()):
            child = self._children.get(index)
            if job.id == job_id and child is not None:
                # The signal only: its feeder sees the child gone and settles the job.
                with contextlib.suppress(OSError):
                    child.proc.kill()

    def check(self, now: float) -> float:
        # Each feeder enforces its job's deadline itself: it can kill the child.
        return float("inf")

    def child_pids(self) -> list[int]:
        return [c.pid for c in list(self._children.values())]

    def wait_ready(self, timeout: float) -> bool:
        """Wait until every child has started (benchmarks, tests); True if they did."""
        deadline = time.monotonic() + timeout
        while len(self._ready) < self.processes:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def submit(self, jobs: list[Job]) -> None:
        with self._cond:
            self._backlog.extend(jobs)
            self._cond.notify(len(jobs))

    def begin_stop(self) -> None:
        """Start no new job; the ones waiting go back to the queue."""
        with self._cond:
            self._stopping = True
            unstarted = list(self._backlog)
            self._backlog.clear()
            self._cond.notify_all()
        for job in unstarted:
            job.mark_handed_back()
        if unstarted:
            self.writer.requeue(unstarted)

    def wait(self, deadline: float) -> bool:
        """Wait until running jobs finish or ``deadline`` (monotonic); True if all did."""
        for t in self._feeders:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._feeders)

    def interrupt(self) -> int:
        """Kill the children still running jobs after the grace period: the attempts
        count, the jobs go back to the queue. Returns how many were interrupted."""
        n = len(self._running)
        self._interrupt = True
        for t in self._feeders:
            t.join(_STOP_WAIT + 5.0)
        return n

    def close(self) -> None:
        self._interrupt = True
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._feeders:
            t.join(_STOP_WAIT + 5.0)

    # -- a feeder thread per child ----------------------------------------------
    def _spawn(self, index: int) -> _Child | None:
        """A ready child (its imports done), or ``None`` if the pool is stopping."""
        while not self._stopping:
            try:
                child = _Child(list(sys.path), os.getcwd(), dict(self._warm))
            except OSError:
                log.exception("starting a pool child failed; trying again in 1 s")
                time.sleep(1.0)
                continue
            self._children[index] = child
            self.children_started += 1
            if child.wait_ready(_START_WAIT):
                return child
            log.error("a pool child %s (pid %s) while starting; starting another", child.exit_description(), child.pid)
            child.kill()
            time.sleep(1.0)
        return None

    def _take(self) -> Job | None:
        with self._cond:
            while not self._backlog:
                if self._stopping:
                    return None
                self._cond.wait()
            return self._backlog.popleft()

    def _feed(self, index: int) -> None:
        child: _Child | None = None
        try:
            while True:
                if child is None:
                    # Started before the next job arrives: a child's start-up
                    # (interpreter, imports) never counts against a job's timeout.
                    child = self._spawn(index)
                    if child is not None:
                        self._ready.add(index)
                job = self._take()
                if job is None or child is None:
                    if job is not None:
                        job.mark_handed_back()
                        self.writer.requeue([job])
                    return
                self._running[index] = job
                try:
                    child = self._run_one(child, job)
                    if child is None:
                        self._ready.discard(index)
                finally:
                    self._running.pop(index, None)
                    self._on_free()
                if child is not None and child.jobs >= self.max_jobs_per_child:
                    log.info("pool child %s ran %d jobs; replacing it", child.pid, child.jobs)
                    self._ready.discard(index)
                    child.stop()
                    child = None
        except Exception:
            log.exception("process pool feeder %d failed", index)
        finally:
            self._ready.discard(index)
            if child is not None:
                child.stop()
            self._children.pop(index, None)

    def _run_one(self, child: _Child, job: Job) -> _Child | None:
        """Run one job on ``child``; returns the child to use next (``None``: start a new one)."""
        runner = self.runner
        task = runner.prepare(job)
        if task is None:
            return child
        if task.path not in self._warm:
            self._warm[task.path] = _source_file(task)
        if not self.writer.start_mark(job):
            runner.claim_lost(job)
            return child
        attempt = runner.start(job, task, "process")
        timeout = _fate.timeout_of(job, self.default_timeout)
        policy = _fate.timeout_policy_of(job, self.default_policy)
        try:
            args, kwargs = runner.inputs_of(job)
            context = runner.context_of(job)
            request = serialization.dumps(
                [job.func_name, task.path, _source_file(task), args, kwargs, context and context.to_dict()],
                what=f"job {job.id}",
            )
            child.send(request)
        except (OSError, SerializationError) as exc:
            runner.settle(job, task, attempt, False, exc)
            return child
        child.jobs += 1
        deadline: float | None = time.monotonic() + timeout
        warned = False
        answer: bytes | None = None
        while True:
            wait = _POLL if deadline is None else max(0.0, min(_POLL, deadline - time.monotonic()))
            try:
                answer = child.answers.get(timeout=wait)
                break  # an answer, or None: the child is gone
            except queue_mod.Empty:
                pass
            if self._interrupt:
                child.kill()
                job.mark_interrupted()
                self.writer.requeue([job])
                return None
            if deadline is not None and time.monotonic() >= deadline:
                if policy == "ignore":
                    if not warned:
                        warned = True
                        log.warning(
                            "job %s (%s) exceeded %.1f s; timeout_policy=ignore lets it run on",
                            job.id,
                            job.func_name,
                            timeout,
                        )
                    deadline = None
                    continue
                child.kill()
                # The runner logs the attempt's end (a retry or the final failure): one line.
                attempt.finished_at = time.time()
                expired = _fate.timeout_error(timeout, "; its process was killed")
                runner.fail_attempt(job, task, attempt, expired, timed_out=True)
                return None
        if answer is None:
            what = child.exit_description()
            pid = child.pid
            child.kill()
            died = ChildProcessDied(f"the process running the job (pid {pid}) {what}")
            log.error("job %s (%s): %s", job.id, job.func_name, died)
            attempt.finished_at = time.time()
            runner.fail_attempt(job, task, attempt, died, timed_out=False)
            return None
        attempt.finished_at = time.time()
        self._settle(job, task, attempt, answer)
        return child

    def _settle(self, job: Job, task: Task[Any], attempt: Any, answer: bytes) -> None:
        runner = self.runner
        try:
            ok, value = serialization.loads(answer, what=f"the answer for job {job.id}")
        except (SerializationError, ValueError, TypeError) as exc:
            runner.settle(job, task, attempt, False, exc)
            return
        if ok:
            runner.settle(job, task, attempt, True, value)
            return
        error = JobError(type=str(value[0]), message=str(value[1]), traceback=value[2])
        runner.fail_attempt(job, task, attempt, _remote_exception(error), timed_out=False, error=error)


_REMOTE_TYPES: dict[str, type[Exception]] = {}


def _remote_exception(error: JobError) -> Exception:
    """An exception of the child's type name for hooks (``on_error``); the class
    itself lives in the child, so this is a stand-in with the same name."""
    cls = _REMOTE_TYPES.get(error.type)
    if cls is None:
        name = error.type.rsplit(".", 1)[-1]
        cls = type(name, (Exception,), {"__qualname__": error.type, "__module__": "nuvom.remote"})
        _REMOTE_TYPES[error.type] = cls
    return cls(error.message)


def _source_file(task: Task[Any]) -> str | None:
    # A task in a file outside any package on sys.path is loaded by file in the
    # child, as discovery's lazy entries are in the worker.
    try:
        code = task.fn.__code__
    except AttributeError:
        return None
    return str(code.co_filename)
