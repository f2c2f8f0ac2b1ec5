"""The demo project's tasks: checksums of a folder of files, an upload that
fails once before it succeeds, and thumbnails of which a few are too slow."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from nuvom.task import task


@task(description="SHA-256 of one file")
def checksum(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@task(retries=2, retry_delay_secs=0.2, description="Upload a file; the server refuses the first try")
def upload(name: str) -> str:
    # The first attempt leaves a marker and fails, like a transient network error;
    # the retry finds the marker and succeeds.
    marker = Path(os.environ.get("NUVOM_DATA_DIR", ".nuvom")) / "uploads" / name
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        raise ConnectionError(f"upload of {name} refused, try again")
    return f"uploaded {name}"


@task(timeout_secs=0.5, timeout_policy="fail", description="Make a thumbnail; huge images time out")
def thumbnail(name: str, huge: bool = False) -> str:
    if huge:
        time.sleep(2)  # stands for a very slow resize
    return f"thumb-{name}"
