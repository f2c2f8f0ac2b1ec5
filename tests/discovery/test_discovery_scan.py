"""discover_tasks: the manifest, incremental re-scans, the report of changes."""

from __future__ import annotations

import json
import os
import sys

import pytest
from nuvom.config import reset_settings
from nuvom.discovery import MANIFEST_VERSION, DiscoveryError, ManifestError, discover_tasks, load_manifest


def two_tasks(project):
    project.package()
    project.task_module(
        "{pkg}/mail.py",
        """
        @task(retries=2, tags=["mail"])
        def send(to): ...

        @task
        async def fetch(): ...
        """,
    )
    project.write("{pkg}/util.py", "def helper(): ...\n")


def test_tasks_are_found_with_module_file_and_line(project):
    two_tasks(project)
    report = discover_tasks(project.root, project.manifest)
    send, fetch = report.tasks
    assert (send.name, send.module, send.qualname, send.file, send.line) == (
        "send",
        f"{project.pkg}.mail",
        "send",
        f"{project.pkg}/mail.py",
        4,
    )
    assert fetch.is_async
    assert report.files_scanned == 3 and report.files_parsed == 3
    assert [t.name for t in report.added] == ["send", "fetch"]
    assert report.manifest_path == project.manifest and report.written


def test_manifest_is_written_as_versioned_json(project):
    two_tasks(project)
    discover_tasks(project.root, project.manifest)
    data = json.loads(project.manifest.read_text())
    assert data["version"] == MANIFEST_VERSION
    assert [t["name"] for t in data["tasks"]] == ["send", "fetch"]
    assert set(data["files"]) == {f"{project.pkg}/__init__.py", f"{project.pkg}/mail.py", f"{project.pkg}/util.py"}
    # written atomically: nothing but the manifest is left in its folder
    assert os.listdir(project.manifest.parent) == ["manifest.json"]


def test_load_manifest_round_trips(project):
    two_tasks(project)
    report = discover_tasks(project.root, project.manifest)
    manifest = load_manifest(project.manifest)
    assert manifest is not None
    assert manifest.version == MANIFEST_VERSION
    assert manifest.tasks == report.tasks


def test_load_manifest_returns_none_when_there_is_none(project):
    assert load_manifest(project.manifest) is None


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{not json", "not valid JSON"),
        ('{"version": "1.0", "tasks": []}', "format version"),
        ('{"version": 2, "tasks": 5}', "damaged"),
    ],
)
def test_unusable_manifest_raises_a_clear_error(project, content, words):
    project.manifest.parent.mkdir()
    project.manifest.write_text(content)
    with pytest.raises(ManifestError, match=words) as info:
        load_manifest(project.manifest)
    assert "nuvom discover tasks" in str(info.value)


def test_unusable_manifest_is_rebuilt_by_a_scan(project):
    two_tasks(project)
    project.manifest.parent.mkdir()
    project.manifest.write_text("{not json")
    report = discover_tasks(project.root, project.manifest)
    assert len(report.tasks) == 2 and report.files_parsed == 3
    assert load_manifest(project.manifest) is not None


def test_warm_rescan_parses_nothing_and_writes_nothing(project):
    two_tasks(project)
    first = discover_tasks(project.root, project.manifest)
    before = project.manifest.stat().st_mtime_ns
    again = discover_tasks(project.root, project.manifest)
    assert again.files_scanned == 3 and again.files_parsed == 0
    assert again.tasks == first.tasks
    assert (again.added, again.removed, again.changed, again.files_changed) == ([], [], [], [])
    assert not again.written and project.manifest.stat().st_mtime_ns == before


def test_only_changed_files_are_parsed_again(project):
    two_tasks(project)
    project.task_module("{pkg}/other.py", "@task\ndef other(): ...\n")
    discover_tasks(project.root, project.manifest)
    project.task_module("{pkg}/other.py", "@task(retries=5)\ndef other(): ...\n")
    report = discover_tasks(project.root, project.manifest)
    assert report.files_parsed == 1
    assert report.files_changed == [f"{project.pkg}/other.py"]
    assert [(t.name, t.retries) for t in report.changed] == [("other", 5)]


def test_touched_file_with_same_content_is_not_parsed(project):
    two_tasks(project)
    discover_tasks(project.root, project.manifest)
    mail = project.root / project.pkg / "mail.py"
    st = mail.stat()
    os.utime(mail, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    report = discover_tasks(project.root, project.manifest)
    assert report.files_parsed == 0 and report.files_changed == []


def test_added_removed_and_changed_tasks_are_reported(project):
    two_tasks(project)
    discover_tasks(project.root, project.manifest)
    project.task_module(
        "{pkg}/mail.py",
        """
        @task(retries=3, tags=["mail"])
        def send(to): ...

        @task
        def archive(): ...
        """,
    )
    report = discover_tasks(project.root, project.manifest)
    assert [t.name for t in report.added] == ["archive"]
    assert [t.name for t in report.removed] == ["fetch"]
    assert [(t.name, t.retries) for t in report.changed] == [("send", 3)]


def test_moving_a_task_down_is_not_a_change(project):
    two_tasks(project)
    discover_tasks(project.root, project.manifest)
    path = project.root / project.pkg / "mail.py"
    path.write_text("\n\n" + path.read_text())
    report = discover_tasks(project.root, project.manifest)
    assert report.files_parsed == 1 and not report.has_changes
    assert report.tasks[0].line == 6


def test_deleted_file_removes_its_tasks(project):
    two_tasks(project)
    discover_tasks(project.root, project.manifest)
    (project.root / project.pkg / "mail.py").unlink()
    report = discover_tasks(project.root, project.manifest)
    assert report.tasks == []
    assert sorted(t.name for t in report.removed) == ["fetch", "send"]
    assert report.files_changed == [f"{project.pkg}/mail.py"]


def test_duplicate_task_names_are_reported(project):
    project.task_module("a.py", "@task\ndef send(): ...\n")
    project.task_module("b.py", "@task(name='send')\ndef send_too(): ...\n")
    project.task_module("c.py", "@task\ndef unique(): ...\n")
    report = discover_tasks(project.root, project.manifest)
    assert list(report.duplicates) == ["send"]
    assert [(t.file, t.qualname) for t in report.duplicates["send"]] == [("a.py", "send"), ("b.py", "send_too")]


def test_syntax_error_is_reported_and_the_scan_goes_on(project):
    project.task_module("good.py", "@task\ndef fine(): ...\n")
    project.task_module("bad.py", "@task\ndef broken(:\n    pass\n")
    report = discover_tasks(project.root, project.manifest)
    assert [t.name for t in report.tasks] == ["fine"]
    (error,) = report.errors
    assert (error.file, error.line) == ("bad.py", 4)
    # still reported by a warm scan, until the file is fixed
    assert discover_tasks(project.root, project.manifest).errors == [error]
    project.task_module("bad.py", "@task\ndef mended(): ...\n")
    report = discover_tasks(project.root, project.manifest)
    assert report.errors == [] and sorted(t.name for t in report.tasks) == ["fine", "mended"]


def test_nothing_is_imported_or_executed(project):
    marker = project.root / "side-effect"
    project.write(
        "{pkg}/loud.py",
        f"""
        from nuvom.task import task
        open({str(marker)!r}, "w").write("ran")
        raise SystemExit("imported!")

        @task
        def loud(): ...
        """,
    )
    report = discover_tasks(project.root, project.manifest)
    assert [t.name for t in report.tasks] == ["loud"]
    assert not marker.exists()
    assert f"{project.pkg}.loud" not in sys.modules


def test_default_manifest_path_comes_from_settings_relative_to_root(project, monkeypatch):
    two_tasks(project)
    report = discover_tasks(project.root)
    assert report.manifest_path == project.root / ".nuvom" / "manifest.json"
    monkeypatch.setenv("NUVOM_MANIFEST_PATH", "build-info/tasks.json")
    reset_settings()
    report = discover_tasks(project.root)
    assert report.manifest_path == project.root / "build-info" / "tasks.json"
    assert report.manifest_path.is_file()


def test_progress_is_reported_up_to_the_total(project):
    two_tasks(project)
    calls = []
    discover_tasks(project.root, project.manifest, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 3) and calls[-1] == (3, 3)
    assert all(0 <= done <= total == 3 for done, total in calls)


def test_src_layout_modules_drop_the_src_folder(project):
    project.write("src/{pkg}/__init__.py", "")
    project.task_module("src/{pkg}/jobs.py", "@task\ndef job(): ...\n")
    (info,) = discover_tasks(project.root, project.manifest).tasks
    assert (info.module, info.file) == (f"{project.pkg}.jobs", f"src/{project.pkg}/jobs.py")


def test_files_are_relative_posix_paths(project):
    project.task_module("a/b/c.py", "@task\ndef deep(): ...\n")
    (info,) = discover_tasks(project.root, project.manifest).tasks
    assert info.file == "a/b/c.py" and info.module == "a.b.c"


def test_missing_root_is_an_error_not_an_empty_project(tmp_path):
    with pytest.raises(DiscoveryError, match="not a folder"):
        discover_tasks(tmp_path / "nowhere", tmp_path / "manifest.json")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_manifest_is_a_clear_error(project):
    two_tasks(project)
    locked = project.root / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(DiscoveryError, match="NUVOM_MANIFEST_PATH"):
        discover_tasks(project.root, locked / "sub" / "manifest.json")


def test_manifest_write_failure_is_a_clear_error(project, monkeypatch):
    import nuvom.discovery._manifest as manifest_module

    two_tasks(project)

    def refuse(path, text):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(manifest_module, "_write", refuse)
    with pytest.raises(DiscoveryError, match=r"cannot write the task manifest .*Permission denied"):
        discover_tasks(project.root, project.manifest)
