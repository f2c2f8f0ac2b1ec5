"""``nuvom plugin test``: load a plugin, check it against the contract, run start/stop.

The checks, in order, for every plugin class found in the target:

1. the target imports (a module path, or a ``.py`` file, optionally ``:Class``);
2. the class fulfils the contract (``start``/``stop``, a compatible ``api_version``,
   a name, known ``provides`` roles, a loadable ``settings_class`` if any);
3. it instantiates with no arguments;
4. ``start(settings, extras)`` returns without raising, with data kept in a
   temporary directory;
5. it registered what it ``provides``: a queue or result backend is then
   exercised once (enqueue/claim/ack, store/read back/list);
6. its job hooks, if any, accept the documented arguments and run on a probe job;
7. ``stop()`` returns without raising.
"""

from __future__ import annotations

import inspect
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Check", "PluginResult", "find_plugin_classes", "run_plugin_checks"]

KNOWN_ROLES = {"queue_backend", "result_backend", "tasks", "hooks", "metrics", "exporter", "cli"}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    warning: bool = False  # passed, with a remark


@dataclass
class PluginResult:
    target: str
    cls_name: str = ""
    name: str = ""
    provides: list[str] = field(default_factory=list)
    api_version: str = ""
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str = "", *, warning: bool = False) -> bool:
        self.checks.append(Check(name, ok, detail, warning))
        return ok

    def document(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "class": self.cls_name,
            "name": self.name,
            "provides": self.provides,
            "api_version": self.api_version,
            "ok": self.ok,
            "checks": [{"check": c.name, "ok": c.ok, "detail": c.detail, "warning": c.warning} for c in self.checks],
        }


def _describe(exc: BaseException) -> str:
    from nuvom.errors import NuvomError

    return str(exc) if isinstance(exc, NuvomError) else f"{type(exc).__name__}: {exc}"


def _import(target: str) -> tuple[Any, str | None]:
    """``(module, class name or None)`` for ``pkg.mod``, ``pkg.mod:Class``,
    ``path/file.py`` or ``path/file.py:Class``."""
    from nuvom.plugins._loader import load_target

    module_part, _, attr = target.partition(":")
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        path = Path(module_part)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        module_part = str(path.resolve())
        # A plugin file's own folder is importable, as for `python file.py`.
        import sys

        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
    return load_target(module_part), attr or None


def find_plugin_classes(module: Any) -> list[type]:
    """Plugin classes defined in ``module`` (subclasses of ``Plugin``, or classes
    with ``start``/``stop`` and an ``api_version``)."""
    from nuvom.plugins.contracts import Plugin

    found = []
    for value in vars(module).values():
        if not isinstance(value, type) or value is Plugin or value.__module__ != module.__name__:
            continue
        duck = all(callable(getattr(value, a, None)) for a in ("start", "stop")) and hasattr(value, "api_version")
        backend = _backend_role(value) is not None
        if (issubclass(value, Plugin) or duck or backend) and not inspect.isabstract(value):
            found.append(value)
    return found


def run_plugin_checks(target: str) -> list[PluginResult]:
    """Run the checks on every plugin class named by ``target``."""
    try:
        module, attr = _import(target)
    except Exception as exc:
        result = PluginResult(target)
        result.add("import", False, _describe(exc))
        return [result]
    if attr is not None:
        try:
            obj: Any = module
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            result = PluginResult(target)
            result.add("import", False, f"{getattr(module, '__name__', target)} has no attribute {attr!r}")
            return [result]
        classes = [obj]
    else:
        classes = find_plugin_classes(module)
        if not classes:
            result = PluginResult(target)
            result.add("import", True, f"imported {getattr(module, '__name__', target)}")
            result.add(
                "find plugin classes",
                False,
                "no Plugin subclass defined in this module; name one with module:Class",
            )
            return [result]
    return [_test_class(cls, f"{target}:{cls.__name__}" if attr is None else target) for cls in classes]


def _backend_role(cls: Any) -> str | None:
    from nuvom.plugins.contracts import BaseJobQueue, BaseResultBackend

    if isinstance(cls, type) and issubclass(cls, BaseJobQueue):
        return "queue_backend"
    if isinstance(cls, type) and issubclass(cls, BaseResultBackend):
        return "result_backend"
    return None


def _test_backend_class(cls: Any, role: str, target: str) -> PluginResult:
    """A backend class named directly (what an entry point in
    ``nuvom.queue_backends`` / ``nuvom.result_backends`` names): build it on
    temporary settings and exercise it."""
    from importlib.metadata import entry_points

    from nuvom.config import load_settings

    result = PluginResult(target, cls_name=getattr(cls, "__qualname__", repr(cls)))
    result.add("import", True, f"imported {getattr(cls, '__module__', '?')}")
    group = "nuvom.queue_backends" if role == "queue_backend" else "nuvom.result_backends"
    value = f"{cls.__module__}:{cls.__qualname__}"
    names = [ep.name for ep in entry_points(group=group) if ep.value == value]
    result.name, result.provides = (names[0] if names else cls.__name__), [role]
    where = f"entry point {result.name!r} in {group}" if names else f"not an entry point in {group} (yet)"
    result.add("contract", True, f"a {role.replace('_', ' ')} class; {where}", warning=not names)
    exercise = _exercise_queue if role == "queue_backend" else _exercise_results
    with tempfile.TemporaryDirectory(prefix="nuvom-plugin-test-") as tmp:
        try:
            settings = load_settings(data_dir=Path(tmp), manifest_path=Path(tmp) / "manifest.json")
            backend = cls(settings)
            try:
                result.add(f"{role.replace('_', ' ')} {result.name!r}", True, exercise(backend))
            finally:
                backend.close()
        except Exception as exc:
            result.add(f"{role.replace('_', ' ')} {result.name!r}", False, _describe(exc))
    return result


def _test_class(cls: Any, target: str) -> PluginResult:
    from nuvom.config import load_settings
    from nuvom.plugins._loader import check_plugin_class
    from nuvom.plugins.contracts import API_VERSION

    role = _backend_role(cls)
    if role is not None:
        return _test_backend_class(cls, role, target)
    result = PluginResult(target, cls_name=getattr(cls, "__qualname__", repr(cls)))
    result.add("import", True, f"imported {getattr(cls, '__module__', '?')}")
    try:
        check_plugin_class(cls, target)
    except Exception as exc:
        result.add("contract", False, _describe(exc))
        return result
    result.name = str(getattr(cls, "name", "") or "")
    result.provides = list(getattr(cls, "provides", []) or [])
    result.api_version = str(getattr(cls, "api_version", ""))
    unknown = sorted(set(result.provides) - KNOWN_ROLES)
    detail = f"api_version {result.api_version} (core speaks {API_VERSION}), provides {result.provides or 'nothing'}"
    if not result.name:
        detail += "; no name: set name = '...' (the class name is used)"
    if unknown:
        detail += f"; unknown roles {unknown} (known: {sorted(KNOWN_ROLES)})"
    result.add("contract", True, detail, warning=bool(unknown or not result.name))

    with tempfile.TemporaryDirectory(prefix="nuvom-plugin-test-") as tmp:
        try:
            settings = load_settings(data_dir=Path(tmp), manifest_path=Path(tmp) / "manifest.json")
        except Exception as exc:
            result.add("settings", False, _describe(exc))
            return result
        settings_cls = getattr(cls, "settings_class", None)
        if settings_cls is not None:
            try:
                settings_cls()
                result.add("settings", True, f"{settings_cls.__name__} loads")
            except Exception as exc:
                result.add("settings", False, f"{settings_cls.__name__}: {_describe(exc)}")
                return result
        try:
            plugin = cls()
        except Exception as exc:
            result.add("instantiate", False, _describe(exc))
            return result
        result.add("instantiate", True, f"{result.cls_name}()")
        from nuvom.app import App

        app = App(settings)
        started = _start(app, plugin, result)
        if started:
            _check_backends(result, app)
            _check_hooks(plugin, result)
        try:
            t0 = time.perf_counter()
            plugin.stop()
            result.add("stop", True, f"returned in {(time.perf_counter() - t0) * 1000:.1f} ms")
        except Exception as exc:
            result.add("stop", False, _describe(exc))
    return result


def _start(app: Any, plugin: Any, result: PluginResult) -> bool:
    from nuvom.registry import TaskRegistry

    extras = {
        "worker": None,
        "registry": TaskRegistry(),
        "metrics_provider": lambda: {"worker_count": 0, "inflight_jobs": 0, "queue_size": 0, "started_at": time.time()},
        "dev": False,
        "enabled_in_file": True,
    }
    t0 = time.perf_counter()
    try:
        app.start_plugin(plugin, extras)
    except Exception as exc:
        return result.add("start", False, _describe(exc))
    return result.add("start", True, f"returned in {(time.perf_counter() - t0) * 1000:.1f} ms")


def _check_backends(result: PluginResult, app: Any) -> None:
    settings = app.settings
    for role, exercise in (("queue_backend", _exercise_queue), ("result_backend", _exercise_results)):
        if role not in result.provides:
            continue
        short = role.split("_")[0]
        new = app.backends.registered_names(short)
        if not new:
            result.add(
                f"registers a {role.replace('_', ' ')}",
                False,
                f"provides {role!r} but start() registered none; declare it as an entry point in "
                f"'nuvom.{short}_backends' (then no plugin is needed) or call "
                f"nuvom.backends.register_{role}(name, cls) in start()",
            )
            continue
        for name in new:
            try:
                backend = app.backends.lookup(short, name)(settings)
                try:
                    detail = exercise(backend)
                finally:
                    backend.close()
                result.add(f"{role.replace('_', ' ')} {name!r}", True, detail)
            except Exception as exc:
                result.add(f"{role.replace('_', ' ')} {name!r}", False, _describe(exc))


def _probe_job() -> Any:
    from nuvom.job import Job

    return Job(func_name="nuvom_plugin_test", args=[1, "two"], kwargs={"three": 3.0})


def _exercise_queue(queue: Any) -> str:
    """The delivery contract of ``BaseJobQueue``, step by step, each failure
    naming the rule it breaks."""
    from nuvom.job import JobStatus

    job = _probe_job()
    queue.enqueue(job)
    if queue.qsize() < 1:
        raise AssertionError("qsize() is 0 right after enqueue()")
    claimed = queue.pop_batch(10, timeout=2.0)
    mine = [j for j in claimed if j.id == job.id]
    if not mine:
        raise AssertionError("the enqueued job was not claimed by pop_batch() within 2 s")
    got = mine[0]
    if got.args != job.args or got.kwargs != job.kwargs:
        raise AssertionError(f"arguments changed in the queue: {got.args!r} {got.kwargs!r}")
    if got.status is not JobStatus.RUNNING or got.attempts != 1:
        raise AssertionError(
            f"a claimed job must be RUNNING with its attempt counted (job.mark_claimed()); got "
            f"{got.status.value} with attempts={got.attempts}"
        )
    if any(j.id == job.id for j in queue.claim(10)):
        raise AssertionError("a claimed job was claimed again before it was acknowledged or handed back")
    if queue.get(job.id) is None:
        raise AssertionError("get() does not find a claimed job")
    # A retry: handed back with a not-before time, not claimable before it.
    got.mark_attempt_failed(got.mark_started(None, time.time()), _probe_error(), timed_out=False, now=time.time())
    got.not_before = time.time() + 0.5
    got.status = JobStatus.RETRYING
    queue.requeue([got])
    if any(j.id == job.id for j in queue.claim(10)):
        raise AssertionError("a job requeued with a not-before time was claimable before that time")
    again = [j for j in queue.pop_batch(10, timeout=5.0) if j.id == job.id]
    if not again:
        raise AssertionError("a requeued job was not claimable again once due")
    if again[0].attempts != 2 or len(again[0].history) != 1:
        raise AssertionError(
            f"requeue() must keep the job as given (attempts, history): claimed again with attempts="
            f"{again[0].attempts}, {len(again[0].history)} attempt(s) in history"
        )
    queue.ack([job.id])
    summary = "enqueue, qsize, claim (RUNNING, attempt counted, exclusive), get, requeue with not-before, ack behave"
    from nuvom.plugins.contracts import BaseScheduleStore

    if isinstance(queue, BaseScheduleStore):
        return summary + "; " + _exercise_schedules(queue)
    return summary


def _probe_error() -> Any:
    from nuvom.job import JobError

    return JobError(type="ProbeError", message="a probe failure")


def _exercise_schedules(store: Any) -> str:
    """The schedule store contract: upsert/get/list/pause/cancel, and one claim per tick."""
    import time

    from nuvom.schedule import Schedule

    past = time.time() - 100.0
    s = Schedule(key="nuvom-plugin-test", task="nuvom_plugin_test", interval=10.0, anchor=past, next_run_at=past)
    store.upsert_schedule(s)
    if [x.key for x in store.list_schedules()].count(s.key) != 1 or store.get_schedule(s.key) is None:
        raise AssertionError("a stored schedule is not listed once, or get_schedule() does not find it")
    if not store.set_schedule_paused(s.key, True).paused or store.claim_tick(s.key, past, None, past + 10):
        raise AssertionError("a paused schedule's tick was claimed")
    store.set_schedule_paused(s.key, False)
    job = s.make_job(past, time.time())
    wins = [store.claim_tick(s.key, past, job, past + 10) for _ in range(3)]
    if wins != [True, False, False]:
        raise AssertionError(f"claiming one tick three times returned {wins}, not one True")
    got = store.get_schedule(s.key)
    if got.next_run_at is None or abs(got.next_run_at - (past + 10)) > 0.001 or got.last_job_id != job.id:
        raise AssertionError("claim_tick() did not record next_run_at and last_job_id")
    if store.claim_tick(s.key, past - 10, None, past):
        raise AssertionError("a tick older than next_run_at was claimed")
    claimed = store.pop_batch(10, timeout=2.0)
    store.ack([j.id for j in claimed])
    if [j.id for j in claimed] != [job.id]:
        raise AssertionError(f"the claimed tick queued {len(claimed)} job(s), not its one job")
    if not store.delete_schedule(s.key) or store.get_schedule(s.key) is not None:
        raise AssertionError("delete_schedule() left the schedule in place")
    return "schedules: store, pause, one claim per tick (with its job), cancel"


def _exercise_results(results: Any) -> str:
    from nuvom.job import JobStatus

    job = _probe_job()
    job.status, job.result, job.started_at, job.finished_at, job.attempts = (
        JobStatus.SUCCESS,
        {"answer": 42},
        time.time(),
        time.time(),
        1,
    )
    results.store([job])
    back = results.get_full(job.id)
    if back is None:
        raise AssertionError("get_full() returned None for a job just stored")
    if back.result != {"answer": 42} or back.status is not JobStatus.SUCCESS:
        raise AssertionError(f"stored record reads back as {back.status} {back.result!r}")
    listed = [j.id for j in results.list_jobs(limit=10)]
    if job.id not in listed:
        raise AssertionError("list_jobs() does not include the job just stored")
    return "store, get_full and list_jobs behave"


def _check_hooks(plugin: Any, result: PluginResult) -> None:
    job = _probe_job()
    calls = {
        "before_job": (job,),
        "after_job": (job, {"answer": 42}),
        "on_error": (job, RuntimeError("nuvom plugin test")),
        "on_job_finished": (job, "success", 0.001),
    }
    for hook, args in calls.items():
        fn = getattr(plugin, hook, None)
        if fn is None or not callable(fn):
            continue
        try:
            inspect.signature(fn).bind(*args)
        except TypeError as exc:
            result.add(f"hook {hook}", False, f"must accept {len(args)} argument(s): {exc}")
            continue
        except ValueError:
            pass  # no signature available (builtins): just call it
        try:
            fn(*args)
        except Exception as exc:
            result.add(f"hook {hook}", False, f"raised {_describe(exc)}")
        else:
            result.add(f"hook {hook}", True, f"called with {len(args)} argument(s)")
