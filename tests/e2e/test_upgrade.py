"""Moving from the earlier nuvom (0.11.2, one `nuvom` distribution) to these
packages, in a fresh virtualenv, the way docs/migrating.md says."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = [str(REPO / "packages" / name) for name in ("nuvom-core", "nuvom-sqlite")]

QUICKSTART = textwrap.dedent(
    """
    import tempfile, os
    os.chdir(tempfile.mkdtemp())
    from nuvom import task
    from nuvom.worker import Worker

    @task(retries=2, retry_delay_secs=None)
    def add(x, y):
        return x + y

    with Worker(max_workers=2):
        print(add.delay(5, 7).get(timeout=30))
    """
)


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


def test_installing_over_nuvom_0_11_is_refused_clearly_and_the_documented_commands_work(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / ("Scripts" if sys.platform == "win32" else "bin")
    python, pip = str(bin_dir / "python"), [str(bin_dir / "python"), "-m", "pip", "-q"]
    old = run(*pip, "install", "nuvom==0.11.2", "hatchling>=1.27")
    if old.returncode != 0:
        if "No matching distribution" in old.stderr or "Could not" in old.stderr or "connection" in old.stderr.lower():
            pytest.skip(f"the package index is not reachable here: {old.stderr.strip().splitlines()[-1]}")
        raise AssertionError(old.stderr)

    # The new packages installed over it: importing says what happened and what to do.
    new = run(*pip, "install", "--no-build-isolation", *PACKAGES)
    assert new.returncode == 0, new.stderr
    mixed = run(python, "-c", "import nuvom.app")
    assert mixed.returncode != 0
    lines = mixed.stderr.strip().splitlines()
    assert len(lines) == 1, mixed.stderr  # one line, not a traceback through 0.11's __init__
    assert "an earlier nuvom (0.11) is installed" in lines[0] and "pip uninstall -y nuvom" in lines[0], mixed.stderr

    # The two documented commands.
    assert run(*pip, "uninstall", "-y", "nuvom").returncode == 0
    fixed = run(*pip, "install", "--no-build-isolation", "--no-deps", "--force-reinstall", *PACKAGES)
    assert fixed.returncode == 0, fixed.stderr
    works = run(python, "-c", QUICKSTART, timeout=120)
    assert works.returncode == 0, works.stderr
    assert works.stdout.strip().splitlines()[-1] == "12"
