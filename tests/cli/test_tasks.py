"""``discover tasks`` (scan, manifest, diff) and ``list tasks``."""

from __future__ import annotations

import json
import textwrap

TASK_KEYS = {
    "name",
    "module",
    "qualname",
    "file",
    "line",
    "is_async",
    "retries",
    "retry_delay_secs",
    "timeout_secs",
    "timeout_policy",
    "store_result",
    "tags",
    "description",
}


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")


def discover_json(cli, *args: str) -> dict:
    out = cli("discover", "tasks", "--format", "json", *args)
    assert out.exit_code == 0, (out.stdout, out.stderr, out.exception)
    return json.loads(out.stdout)


def test_discover_json_reports_tasks_and_the_diff(cli, project):
    doc = discover_json(cli)
    assert doc["added"] == ["add", "boom"] and doc["removed"] == [] and doc["changed"] == []
    assert doc["count"] == 2
    assert set(doc["tasks"][0]) == TASK_KEYS
    add = doc["tasks"][0]
    assert (add["name"], add["module"], add["tags"], add["description"]) == (
        "add",
        "tasks",
        ["math"],
        "Add two numbers",
    )
    assert (project / ".nuvom" / "manifest.json").is_file()
    assert doc["manifest"] == str(project / ".nuvom" / "manifest.json")
    assert {"files_scanned", "files_parsed", "elapsed_secs", "errors", "duplicates"} <= set(doc)


def test_discover_again_shows_only_what_changed(cli, project):
    discover_json(cli)
    again = discover_json(cli)
    assert (again["added"], again["removed"], again["changed"]) == ([], [], [])
    write(
        project / "tasks.py",
        """
        from nuvom.task import task

        @task(tags=["math"], description="Add two numbers", retries=3)
        def add(x, y):
            return x + y

        @task
        def mul(x, y):
            return x * y
        """,
    )
    diff = discover_json(cli)
    assert (diff["added"], diff["removed"], diff["changed"]) == (["mul"], ["boom"], ["add"])


def test_discover_table_shows_the_diff(cli, project):
    out = cli("discover", "tasks")
    assert out.exit_code == 0
    assert "+ add" in out.stdout and "+ boom" in out.stdout
    out = cli("discover", "tasks")
    assert "no changes since the last scan" in out.stdout


def test_discover_reports_files_that_do_not_parse_and_goes_on(cli, project):
    write(project / "broken.py", "from nuvom.task import task\n\n@task\ndef bad(:\n")
    out = cli("discover", "tasks")
    assert out.exit_code == 0
    assert "broken.py" in out.stderr and "warning" in out.stderr
    doc = discover_json(cli)
    assert [e["file"] for e in doc["errors"]] == ["broken.py"]
    assert doc["count"] == 2


def test_discover_honours_exclude_patterns(cli, project):
    write(project / "scripts" / "jobs.py", "from nuvom.task import task\n\n@task\ndef nightly():\n    pass\n")
    assert "nightly" in [t["name"] for t in discover_json(cli)["tasks"]]
    assert "nightly" not in [t["name"] for t in discover_json(cli, "--exclude", "scripts/")["tasks"]]


def test_discover_shows_progress_on_large_trees(cli, project):
    for i in range(250):
        write(project / f"pkg{i % 10}" / f"m{i}.py", f"from nuvom.task import task\n\n@task\ndef t{i}():\n    pass\n")
    out = cli("discover", "tasks", "--progress")
    assert out.exit_code == 0, out.stderr
    assert "251 file(s)" in out.stdout or "252 file(s)" in out.stdout
    assert "… " in out.stdout and "more added" in out.stdout  # long diffs are cut, json has them all
    assert discover_json(cli)["count"] == 252


def test_discover_warns_about_duplicate_names(cli, project):
    write(project / "other.py", "from nuvom.task import task\n\n@task\ndef add(a, b):\n    pass\n")
    out = cli("discover", "tasks")
    assert "'add' is defined more than once" in out.stderr
    assert set(discover_json(cli)["duplicates"]) == {"add"}


def test_list_tasks_json_reads_the_manifest(cli, project):
    discover_json(cli)
    out = cli("list", "tasks", "-f", "json")
    assert out.exit_code == 0
    doc = json.loads(out.stdout)
    assert [t["name"] for t in doc["tasks"]] == ["add", "boom"]
    assert set(doc["tasks"][1]) == TASK_KEYS
    assert doc["tasks"][1]["retries"] == 1


def test_list_tasks_scans_when_there_is_no_manifest(cli, project):
    out = cli("list", "tasks", "-f", "json")
    assert out.exit_code == 0
    assert [t["name"] for t in json.loads(out.stdout)["tasks"]] == ["add", "boom"]
    assert "no manifest yet" in out.stderr


def test_list_tasks_table_has_every_column(cli, project):
    out = cli("list", "tasks")
    assert out.exit_code == 0
    for text in ("name", "module", "retries", "timeout", "tags", "description", "tasks:add", "math", "Add two numbers"):
        assert text in out.stdout, text


def test_list_tasks_filters_by_tag(cli, project):
    doc = json.loads(cli("list", "tasks", "--tag", "math", "-f", "json").stdout)
    assert [t["name"] for t in doc["tasks"]] == ["add"]


def test_runtestworker_finds_a_task_by_name_alone(cli, project):
    (project / "job.json").write_text('{"func_name": "add", "args": [20, 22]}')
    out = cli("runtestworker", "run", "--job-file", "job.json", "-f", "json")
    assert out.exit_code == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["result"] == 42
    assert not (project / ".nuvom" / "manifest.json").exists()  # the manifest is `discover tasks`' business


def test_runtestworker_unknown_task_fails_with_exit_1(cli, project):
    (project / "job.json").write_text('{"func_name": "nope"}')
    out = cli("runtestworker", "run", "--job-file", "job.json", "-f", "json")
    assert out.exit_code == 1
    assert json.loads(out.stdout)["error"]["type"] == "TaskNotFound"
