"""Each distribution's wheel is what a package index needs: the license, project
URLs, a README whose links work off this repository, and no nuvom/__init__.py."""

from __future__ import annotations

import email
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = sorted(p.name for p in (REPO / "packages").iterdir() if (p / "pyproject.toml").is_file())


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_the_wheel_carries_license_urls_and_readme_links_that_work_on_an_index(dist: str, tmp_path: Path) -> None:
    pytest.importorskip("hatchling")
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path)]
    proc = subprocess.run(
        [*build, str(REPO / "packages" / dist)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    [wheel] = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        [metadata_name] = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_string(zf.read(metadata_name).decode("utf-8"))
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert "nuvom/__init__.py" not in names
    assert any(n.startswith("nuvom/") and n.endswith("py.typed") for n in names)
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert {"Homepage", "Documentation", "Repository"} <= set(urls)
    description = metadata.get_payload()
    assert description.strip() and "](../" not in description and "](docs/" not in description
