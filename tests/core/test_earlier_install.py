"""nuvom-core installed over the earlier single `nuvom` distribution (0.11):
refused with one line, in a real Python process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# The first lines of 0.11.2's nuvom/__init__.py. extend_path stands for the shared
# site-packages folder: 0.11's files and nuvom-core's sit side by side under one `nuvom/`.
OLD_INIT = """\
import pkgutil
__path__ = pkgutil.extend_path(__path__, __name__)
from nuvom.config import get_settings
"""


@pytest.fixture
def over_0_11(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "old" / "nuvom").mkdir(parents=True)
    (tmp_path / "old" / "nuvom" / "__init__.py").write_text(OLD_INIT, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    env["PYTHONPATH"] = str(tmp_path / "old")
    env["NUVOM_DATA_DIR"] = str(tmp_path / ".nuvom")
    return env


def test_importing_over_0_11_is_refused_in_one_line(over_0_11: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import nuvom.app"], env=over_0_11, cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: an earlier nuvom (0.11) is installed over nuvom-core")
    assert "pip uninstall -y nuvom" in lines[0] and "--force-reinstall" in lines[0]


def test_the_refusal_is_still_an_import_error_to_code_that_catches_it(over_0_11: dict[str, str], tmp_path: Path):
    code = "try:\n    import nuvom.app\nexcept ImportError as exc:\n    print('caught:', exc)\n"
    proc = subprocess.run([sys.executable, "-c", code], env=over_0_11, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("caught: an earlier nuvom (0.11)") and proc.stderr == ""


def test_python_dash_m_nuvom_worker_over_0_11_is_one_line(over_0_11: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nuvom.worker"], env=over_0_11, cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert len(proc.stderr.splitlines()) == 1 and "pip uninstall -y nuvom" in proc.stderr, proc.stderr
