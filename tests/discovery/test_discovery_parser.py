"""The parser finds @task functions in every form users write, by reading only."""

from __future__ import annotations

import textwrap

from nuvom.discovery import module_name, parse_tasks


def parse(source: str, rel: str = "app/jobs.py"):
    return parse_tasks(textwrap.dedent(source).lstrip("\n").encode(), rel, module_name(rel))


def names(source: str) -> list[str]:
    return [t.name for t in parse(source).tasks]


def test_bare_decorator():
    assert names("""
        from nuvom.task import task

        @task
        def send(to): ...
    """) == ["send"]


def test_called_decorator_with_no_arguments():
    assert names("""
        from nuvom.task import task

        @task()
        def send(to): ...
    """) == ["send"]


def test_fully_qualified_decorator():
    assert names("""
        import nuvom.task

        @nuvom.task.task(retries=1)
        def send(to): ...
    """) == ["send"]


def test_decorator_imported_under_another_name():
    assert names("""
        from nuvom.task import task as t

        @t(retries=2)
        def send(to): ...

        @t
        def receive(): ...
    """) == ["send", "receive"]


def test_module_imported_under_another_name():
    assert names("""
        import nuvom.task as nt

        @nt.task
        def send(to): ...
    """) == ["send"]


def test_module_imported_from_the_namespace():
    assert names("""
        from nuvom import task as tasks

        @tasks.task(tags=["x"])
        def send(to): ...
    """) == ["send"]


def test_star_import():
    assert names("""
        from nuvom.task import *

        @task
        def send(to): ...
    """) == ["send"]


def test_async_task_is_marked_async():
    (info,) = parse("""
        from nuvom.task import task

        @task
        async def fetch(url): ...
    """).tasks
    assert info.name == "fetch" and info.is_async


def test_methods_are_not_tasks():
    assert not names("""
        from nuvom.task import task

        class Mailer:
            @task
            def send(self): ...

            @staticmethod
            @task
            def ping(): ...
    """)


def test_nested_functions_are_not_tasks():
    assert not names("""
        from nuvom.task import task

        def factory():
            @task
            def inner(): ...
            return inner
    """)


def test_tasks_inside_module_level_blocks_are_found():
    assert names("""
        import sys
        from nuvom.task import task

        if sys.platform != "nowhere":
            @task
            def on_platform(): ...
        try:
            import json
        except ImportError:
            pass
        else:
            @task
            def with_json(): ...
    """) == ["on_platform", "with_json"]


def test_name_argument_sets_the_task_name():
    (info,) = parse("""
        from nuvom.task import task

        @task(name="emails.send")
        def send(to): ...
    """).tasks
    assert (info.name, info.qualname) == ("emails.send", "send")


def test_literal_arguments_are_captured():
    (info,) = parse("""
        from nuvom.task import task

        @task(retries=3, retry_delay_secs=1, timeout_secs=2.5, timeout_policy="retry",
              store_result=False, tags=("a", "b"), description="Sends it.")
        def send(to):
            '''Docstring, not used: description= wins.'''
    """).tasks
    assert info.retries == 3
    assert info.retry_delay_secs == 1.0
    assert info.timeout_secs == 2.5
    assert info.timeout_policy == "retry"
    assert info.store_result is False
    assert info.tags == ("a", "b")
    assert info.description == "Sends it."
    assert info.dynamic_args == []


def test_defaults_match_the_decorator():
    (info,) = parse("""
        from nuvom.task import task

        @task
        def send(to): ...
    """).tasks
    # retry_delay_secs None: the app's NUVOM_RETRY_DELAY_SECS, as for @task itself.
    assert (info.retries, info.retry_delay_secs, info.timeout_secs) == (0, None, None)
    assert (info.timeout_policy, info.store_result, info.tags, info.description) == (None, True, (), None)


def test_the_options_are_cores_task_options_checked_the_same_way():
    from nuvom.job import TaskOptions

    (info,) = parse("""
        from nuvom.task import task

        @task(tags="reports", category="billing", retry_delay_secs=None, timeout_secs=float("inf"))
        def send(to): ...
    """).tasks
    assert isinstance(info, TaskOptions)
    assert info.tags == ("reports", "billing") and info.retry_delay_secs is None


def test_docstring_first_line_is_the_default_description():
    (info,) = parse('''
        from nuvom.task import task

        @task
        def send(to):
            """Send one e-mail.

            Longer text.
            """
    ''').tasks
    assert info.description == "Send one e-mail."


def test_non_literal_arguments_are_listed_not_captured():
    (info,) = parse("""
        from nuvom.task import task
        RETRIES = 4

        @task(retries=RETRIES, tags=["fixed"], before_job=print, **extra)
        def send(to): ...
    """).tasks
    assert info.retries == 0
    assert info.tags == ("fixed",)
    assert info.dynamic_args == ["retries", "**extra"]


def test_non_literal_name_is_reported_and_the_task_skipped():
    result = parse("""
        from nuvom.task import task
        PREFIX = "x"

        @task(name=PREFIX + ".send")
        def send(to): ...
    """)
    assert result.tasks == []
    (error,) = result.errors
    assert error.file == "app/jobs.py" and error.line == 4
    assert "name=" in error.message and "send" in error.message


def test_argument_of_the_wrong_type_is_reported():
    result = parse("""
        from nuvom.task import task

        @task(retries="3")
        def send(to): ...
    """)
    (info,) = result.tasks
    assert info.retries == 0
    (error,) = result.errors
    assert error.line == 3 and "retries" in error.message


def test_task_imported_from_another_library_is_not_nuvoms():
    assert not names("""
        from celery import task

        @task
        def send(to): ...
    """)


def test_other_objects_task_attribute_is_not_nuvoms():
    assert not names("""
        from celery import Celery
        app = Celery()

        @app.task
        def send(to): ...
    """)


def test_unbound_task_name_is_taken_as_nuvoms():
    # e.g. `from myproject.common import *` re-exporting nuvom's decorator
    assert names("""
        from myproject.common import *

        @task(retries=1)
        def send(to): ...
    """) == ["send"]


def test_other_decorators_around_a_task_are_allowed():
    (info,) = parse("""
        import functools
        from nuvom.task import task

        @task
        @functools.lru_cache
        def cached(x): ...
    """).tasks
    assert info.name == "cached"


def test_line_is_the_def_line():
    (info,) = parse("""
        from nuvom.task import task


        @task(
            retries=1,
        )
        def send(to): ...
    """).tasks
    assert info.line == 7


def test_syntax_error_is_reported_with_file_and_line():
    source = """
        from nuvom.task import task

        @task
        def broken(:
            pass
    """
    result = parse(source, rel="app/broken.py")
    assert result.tasks == []
    (error,) = result.errors
    assert error.file == "app/broken.py" and error.line == 4
    assert "syntax error" in error.message
    assert str(error).startswith("app/broken.py:4: ")


def test_file_without_tasks_is_not_parsed():
    result = parse("""
        def plain(): ...
        broken syntax that no one parses
    """)
    assert (result.parsed, result.tasks, result.errors) == (False, [], [])


def test_encoding_declaration_is_honoured():
    source = "# -*- coding: latin-1 -*-\nfrom nuvom.task import task\n\n@task(description='caf\xe9')\ndef cafe(): ...\n"
    (info,) = parse_tasks(source.encode("latin-1"), "app/cafe.py", "app.cafe").tasks
    assert info.description == "caf\xe9"


def test_module_names():
    assert module_name("app/jobs.py") == "app.jobs"
    assert module_name("app/__init__.py") == "app"
    assert module_name("jobs.py") == "jobs"
    assert module_name("src/app/jobs.py", strip_src=True) == "app.jobs"
    assert module_name("src/app/jobs.py") == "src.app.jobs"


def test_declared_schedules_are_recorded():
    tasks = {
        t.name: t
        for t in parse("""
        from nuvom.task import task
        from nuvom.schedule import every
        import nuvom.schedule

        @task(schedule="*/5 * * * *")
        def sweep(): ...

        @task(schedule=every(300))
        def beat(): ...

        @task(schedule=nuvom.schedule.every(1.5))
        def fast(): ...

        @task(schedule=SOME_CRON)
        def dynamic(): ...

        @task
        def plain(): ...
    """).tasks
    }
    assert tasks["sweep"].schedule == "*/5 * * * *"
    assert tasks["beat"].schedule == "every 300s" and tasks["fast"].schedule == "every 1.5s"
    assert tasks["dynamic"].schedule is None and "schedule" in tasks["dynamic"].dynamic_args
    assert tasks["plain"].schedule is None and "schedule" in tasks["sweep"].metadata()
