"""``nuvom plugin scaffold``: the distribution it writes installs, is found
through its entry point, passes ``nuvom plugin test`` and its own tests."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest


def pip_install(project_dir, site) -> None:
    """Install ``project_dir`` into the folder ``site`` (a path entry, not this venv)."""
    args = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site)]
    if importlib.util.find_spec("hatchling") is not None:
        args.append("--no-build-isolation")  # no index needed for the build backend
    proc = subprocess.run([*args, str(project_dir)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("kind", ["result_backend", "hooks"])
def test_scaffold_installs_and_passes_plugin_test(nuvom, python, env_for, tmp_path, kind):
    env = env_for(tmp_path)
    made = nuvom(["plugin", "scaffold", "hello", "--kind", kind, "--cli", "-f", "json"], tmp_path, env)
    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)
    project = tmp_path / doc["directory"]
    assert doc["package"] == "nuvom_hello"
    assert {
        "pyproject.toml",
        "README.md",
        "src/nuvom_hello/plugin.py",
        "tests/test_plugin.py",
        "src/nuvom_hello/cli.py",
    } <= set(doc["files"])
    pyproject = (project / "pyproject.toml").read_text()
    group = (
        '[project.entry-points."nuvom.result_backends"]' if kind == "result_backend" else "[project.entry-points.nuvom]"
    )
    assert group in pyproject and '[project.entry-points."nuvom.cli"]' in pyproject

    site = tmp_path / "site"
    pip_install(project, site)
    env["PYTHONPATH"] = str(site)

    tested = nuvom(["plugin", "test", "nuvom_hello.plugin", "--format", "json"], tmp_path, env)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    report = json.loads(tested.stdout)
    assert report["ok"] is True
    checks = {c["check"] for c in report["plugins"][0]["checks"]}
    status = json.loads(nuvom(["plugin", "status", "-f", "json"], tmp_path, env).stdout)
    if kind == "result_backend":
        assert {"import", "contract", "result backend 'hello'"} <= checks
        [hello] = [b for b in status["backends"] if b["name"] == "hello"]
        assert (hello["role"], hello["distribution"]) == ("result", "nuvom-hello")
    else:
        assert {"import", "contract", "instantiate", "start", "stop"} <= checks
        assert {"hook before_job", "hook after_job", "hook on_error", "hook on_job_finished"} <= checks
        hello = [p for p in status["plugins"] if p["name"] == "hello"]
        assert hello and hello[0]["state"] == "loaded"
        assert hello[0]["source"] == "entry point (nuvom-hello)"

    info = nuvom(["hello", "info"], tmp_path, env)
    assert info.returncode == 0 and info.stdout.startswith("hello: "), info.stderr

    own_tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert own_tests.returncode == 0, own_tests.stdout + own_tests.stderr
    assert "2 passed" in own_tests.stdout


def test_scaffolded_result_backend_is_selectable(nuvom, env_for, tmp_path):
    env = env_for(tmp_path)
    assert nuvom(["plugin", "scaffold", "filestore", "--dir", "plug"], tmp_path, env).returncode == 0
    pip_install(tmp_path / "plug", tmp_path / "site")
    env.update(PYTHONPATH=str(tmp_path / "site"), NUVOM_RESULT_BACKEND="filestore")
    config = nuvom(["config", "-f", "json"], tmp_path, env)
    assert json.loads(config.stdout)["backends"]["result"] == {
        "name": "filestore",
        "why": "NUVOM_RESULT_BACKEND",
        "installed": True,
    }
    history = nuvom(["history", "recent", "-f", "json"], tmp_path, env)
    assert history.returncode == 0 and json.loads(history.stdout)["jobs"] == []
