"""Sub-commands from other distributions (entry-point group ``nuvom.cli``)."""

from __future__ import annotations

import json
import textwrap

DEMO_APP = textwrap.dedent(
    '''
    import typer

    app = typer.Typer(help="Demo commands from a plugin.", no_args_is_help=True)


    @app.command()
    def hello(name: str = "world"):
        """Greet someone."""
        typer.echo(f"hello {name}")


    @app.command()
    def fail():
        """Raise a nuvom error, which the CLI reports in one line."""
        from nuvom.errors import BackendError

        raise BackendError("the demo backend is down")
    '''
)


def install_fake_distribution(site, entry_points: str) -> None:
    """A minimal installed distribution (dist-info + module) on a path entry."""
    site.mkdir(exist_ok=True)
    (site / "demo_ext.py").write_text(DEMO_APP)
    (site / "demo_broken.py").write_text("raise ImportError('demo_broken needs a missing library')\n")
    info = site / "demo_ext-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-ext\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


def env_with_site(env_for, tmp_path):
    site = tmp_path / "site"
    install_fake_distribution(site, "[nuvom.cli]\ndemo = demo_ext:app\nbroken = demo_broken:app\n")
    env = env_for(tmp_path)
    env["PYTHONPATH"] = str(site)
    return env


def test_plugin_command_is_listed_in_help_and_runs(nuvom, env_for, tmp_path):
    env = env_with_site(env_for, tmp_path)
    help_ = nuvom(["--help"], tmp_path, env)
    assert help_.returncode == 0
    assert "Plugin commands" in help_.stdout and "demo" in help_.stdout
    assert "Demo commands from a plugin." in help_.stdout
    run = nuvom(["demo", "hello", "--name", "nuvom"], tmp_path, env)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "hello nuvom\n"
    assert run.stderr == ""  # the broken extension is not even imported


def test_a_broken_plugin_command_never_breaks_the_others(nuvom, env_for, tmp_path):
    env = env_with_site(env_for, tmp_path)
    help_ = nuvom(["--help"], tmp_path, env)
    assert help_.returncode == 0
    assert "`nuvom broken` command from demo-ext" in help_.stderr and "missing library" in help_.stderr
    assert nuvom(["status", "../x"], tmp_path, env).returncode == 4
    broken = nuvom(["broken"], tmp_path, env)
    assert broken.returncode == 2 and "missing library" in broken.stderr


def test_nuvom_errors_in_plugin_commands_are_one_line(nuvom, env_for, tmp_path):
    env = env_with_site(env_for, tmp_path)
    run = nuvom(["demo", "fail"], tmp_path, env)
    assert run.returncode == 6
    assert run.stderr == "error: the demo backend is down\n"


def test_plugin_status_lists_plugin_commands(nuvom, env_for, tmp_path):
    env = env_with_site(env_for, tmp_path)
    proc = nuvom(["plugin", "status", "-f", "json"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    commands = {c["name"]: c for c in json.loads(proc.stdout)["cli_commands"]}
    assert commands["demo"] == {
        "name": "demo",
        "target": "demo_ext:app",
        "distribution": "demo-ext",
        "state": "loaded",
        "error": None,
    }
    assert commands["broken"]["state"] == "failed" and "missing library" in commands["broken"]["error"]
