"""``nuvom dashboard``: the command nuvom-cli (the ``cli`` extra) contributes.
Skipped where nuvom-cli is not installed (the dashboard's own environment);
the e2e environment runs them. ``python -m nuvom.dashboard`` takes the same
options and is tested in every environment (test_security.py)."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys

import pytest

from .conftest import Project

pytest.importorskip("nuvom.cli", reason="nuvom-cli is not installed: `nuvom dashboard` is its command")


def status_for_host(port: int, host: str, path: str = "/") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.parametrize("command", [("nuvom.cli", "dashboard"), ("nuvom.dashboard",)])
def test_a_public_address_without_a_token_is_refused_in_one_line(command: tuple[str, ...]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", *command, "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "NUVOM_DASHBOARD_TOKEN"},
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "NUVOM_DASHBOARD_TOKEN" in lines[0] and "--read-only" in lines[0]


def test_nuvom_dashboard_answers_only_its_own_names_and_the_allowed_hosts(project: Project) -> None:
    project.start_dashboard(
        "--allowed-host",
        "dash.example.org",
        command=("nuvom.cli", "dashboard"),
        NUVOM_DASHBOARD_ALLOWED_HOSTS="b.example",
    )
    port = project.port
    assert status_for_host(port, "rebind.evil.example:8799") == 400
    assert status_for_host(port, "rebind.evil.example:8799", "/login") == 400
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", "dash.example.org", "b.example:443"):
        assert status_for_host(port, host) == 200, host
