"""Which files a scan looks at: .py files, minus defaults, .nuvomignore and options."""

from __future__ import annotations

import os
import sys

import pytest
from nuvom.discovery import discover_tasks

TASK = "from nuvom.task import task\n\n@task\ndef {name}(): ...\n"


def scanned(project, **options) -> list[str]:
    report = discover_tasks(project.root, project.manifest, **options)
    return sorted(t.file for t in report.tasks)


def put(project, rel: str) -> None:
    name = rel.replace("/", "_").replace(".", "_").replace("-", "_")
    project.write(rel, TASK.format(name=name))


def test_only_python_files_are_scanned(project):
    put(project, "app/jobs.py")
    project.write("app/notes.txt", TASK.format(name="txt"))
    project.write("app/jobs.pyi", TASK.format(name="stub"))
    assert scanned(project) == ["app/jobs.py"]


@pytest.mark.parametrize(
    "folder", [".git", ".venv", ".tox", "__pycache__", "node_modules", "build", "dist", "site-packages", "x.egg-info"]
)
def test_default_folders_are_skipped(project, folder):
    put(project, "app/jobs.py")
    put(project, f"{folder}/jobs.py")
    assert scanned(project) == ["app/jobs.py"]


def test_virtual_environments_are_skipped_whatever_their_name(project):
    put(project, "app/jobs.py")
    project.write("myenv/pyvenv.cfg", "home = /usr/bin\n")
    put(project, "myenv/lib/jobs.py")
    project.write("condaenv/conda-meta/history", "")
    put(project, "condaenv/lib/jobs.py")
    assert scanned(project) == ["app/jobs.py"]


def test_nuvomignore_uses_gitignore_semantics(project):
    for rel in [
        "app/jobs.py",
        "app/generated/x.py",
        "app/x_test.py",
        "scripts/run.py",
        "tools/scripts/run.py",
        "keep_test.py",
    ]:
        put(project, rel)
    project.write(".nuvomignore", "# comment\ngenerated/\n*_test.py\n!keep_test.py\n/scripts\n")
    assert scanned(project) == ["app/jobs.py", "keep_test.py", "tools/scripts/run.py"]


def test_exclude_option_adds_to_nuvomignore(project):
    for rel in ["app/jobs.py", "app/legacy/old.py", "other/jobs.py"]:
        put(project, rel)
    project.write(".nuvomignore", "other/\n")
    assert scanned(project, exclude=["legacy/"]) == ["app/jobs.py"]


def test_include_option_keeps_only_matching_files(project):
    for rel in ["app/jobs.py", "app/sub/more.py", "lib/jobs.py", "top.py"]:
        put(project, rel)
    assert scanned(project, include=["app/"]) == ["app/jobs.py", "app/sub/more.py"]
    assert scanned(project, include=["*.py"], exclude=["lib/"]) == ["app/jobs.py", "app/sub/more.py", "top.py"]


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")
def test_symlinked_folders_are_not_followed(project):
    put(project, "app/jobs.py")
    os.symlink(project.root / "app", project.root / "loop")
    assert scanned(project) == ["app/jobs.py"]
