from __future__ import annotations

import pytest
from nuvom.backends import set_backends
from nuvom.backends.memory import MemoryJobQueue
from nuvom.errors import SerializationError
from nuvom.job import JobStatus
from nuvom.registry import get_registry
from nuvom.task import Task, task


@task
def plain(x, y):
    return x + y


@task
def single(x):
    return x


@task(
    retries=2,
    retry_delay_secs=1.5,
    timeout_secs=3,
    timeout_policy="retry",
    store_result=False,
    tags=["math"],
    description="adds",
    name="renamed_add",
)
def configured(x, y):
    """Docstring line."""
    return x + y


def test_decorated_function_still_runs_when_called_directly():
    assert plain(2, 3) == 5
    assert configured(2, 3) == 5


def test_decorator_options_are_kept_and_the_task_is_registered():
    assert isinstance(configured, Task)
    assert configured.name == "renamed_add"
    assert (configured.retries, configured.retry_delay_secs, configured.timeout_secs) == (2, 1.5, 3.0)
    assert configured.timeout_policy == "retry" and configured.store_result is False
    assert configured.tags == ["math"] and configured.description == "adds"
    assert get_registry().get("renamed_add") is configured
    assert get_registry().get("plain") is plain


def test_description_defaults_to_the_docstring_first_line():
    @task(name="documented_task")
    def documented():
        """Say hello.

        More text."""

    assert documented.description == "Say hello."


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"retries": -1}, "retries"),
        ({"timeout_secs": 0}, "timeout_secs"),
        ({"timeout_policy": "kill"}, "timeout_policy"),
    ],
)
def test_bad_decorator_options_are_refused(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        task(**options)(lambda: None)


def test_delay_queues_a_pending_job_carrying_the_task_settings(mem):
    queue, _ = mem
    job = configured.delay(1, y=2)
    assert job.func_name == "renamed_add" and job.task_path.endswith(":configured")
    assert job.args == [1] and job.kwargs == {"y": 2}
    assert job.status is JobStatus.PENDING and job.max_retries == 2 and job.timeout_secs == 3.0
    assert queue.get(job.id) is job and queue.qsize() == 1


class CountingQueue(MemoryJobQueue):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def enqueue(self, job):
        self.calls += 1
        super().enqueue(job)

    def enqueue_many(self, jobs):
        self.calls += 1
        super().enqueue_many(jobs)


def test_map_queues_one_job_per_item_in_one_round_trip():
    queue = CountingQueue()
    set_backends(queue=queue)
    jobs = plain.map([(1, 2), {"x": 3, "y": 4}, [5, 6]])
    assert queue.calls == 1 and queue.qsize() == 3
    assert [(j.args, j.kwargs) for j in jobs] == [([1, 2], {}), ([], {"x": 3, "y": 4}), ([5, 6], {})]
    assert len({j.id for j in jobs}) == 3


def test_map_of_scalars_passes_each_as_the_single_argument(mem):
    jobs = single.map(range(3))
    assert [j.args for j in jobs] == [[0], [1], [2]]


def test_a_call_that_does_not_fit_the_signature_is_refused_naming_the_task_and_stores_nothing(mem):
    queue, _ = mem
    with pytest.raises(TypeError, match=r"task 'plain': missing a required argument: 'y'"):
        plain.delay(1)
    with pytest.raises(TypeError, match=r"task 'plain': got an unexpected keyword argument 'z'"):
        plain.delay(1, 2, z=3)
    with pytest.raises(TypeError, match=r"task 'single': too many positional arguments"):
        single.map([(1,), (1, 2)])
    assert queue.qsize() == 0  # nothing stored, not even the map's first item


def test_unserializable_argument_is_refused_at_delay_naming_task_and_argument(mem):
    queue, _ = mem
    with pytest.raises(SerializationError, match=r"task 'plain': keyword argument 'y' \(object\)"):
        plain.delay(1, y=object())
    with pytest.raises(SerializationError, match=r"positional argument 0 \(set\)"):
        plain.delay({1, 2}, 3)
    assert queue.qsize() == 0


def test_huge_argument_is_refused_with_the_limit_named(mem, monkeypatch):
    from nuvom.config import reset_settings

    monkeypatch.setenv("NUVOM_MAX_PAYLOAD_BYTES", "2048")
    reset_settings()
    with pytest.raises(SerializationError, match="NUVOM_MAX_PAYLOAD_BYTES"):
        plain.delay("x" * 5000, 1)


def test_same_name_from_another_function_is_an_error_that_says_what_to_do():
    with pytest.raises(ValueError, match="pass name="):

        @task(name="plain")
        def other():
            pass


def test_jobs_of_one_task_share_no_mutable_field_and_match_a_validated_job(mem):
    a, b = configured.delay(1, 2), configured.delay(3, 4)
    assert a.id != b.id and a.args == [1, 2] and b.args == [3, 4]
    # make_job builds from a shared template: a list changed on one job must not show on another.
    a.history.append("x")  # type: ignore[arg-type]
    a.tags.append("extra")
    assert b.history == [] and b.tags == ["math"]
    assert configured.make_job([5, 6], {}).tags == ["math"]
    # The unvalidated fast path gives exactly what pydantic would: same fields, same order, same values.
    c = configured.make_job([1], {"y": 2})
    validated = type(c).model_validate(c.model_dump())
    assert set(c.__dict__) == set(type(c).model_fields)
    assert c.model_dump() == validated.model_dump()
    assert c.status is JobStatus.PENDING and c.attempts == 0 and c.retry_delay_secs == 1.5


def test_positional_calls_are_checked_by_count_exactly_as_bind_checks_them(mem):
    # A call with positional arguments only is checked by their count when the
    # signature allows it; every shape must agree with Signature.bind.
    import inspect

    def defaults(a, b=1, *, c=2): ...
    def kw_required(a, *, c): ...
    def star(a, *rest): ...
    def none(): ...

    for fn in (defaults, kw_required, star, none):
        made = task(name=f"count_{fn.__name__}")(fn)
        for n in range(4):
            args = list(range(n))
            try:
                inspect.signature(fn).bind(*args)
                fits = True
            except TypeError:
                fits = False
            if fits:
                assert made.make_job(args, {}).args == args
            else:
                with pytest.raises(TypeError, match=f"task 'count_{fn.__name__}'"):
                    made.make_job(args, {})
