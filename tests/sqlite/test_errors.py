"""When the file is the problem, the error says so (and never "database is locked")."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from nuvom.errors import BackendError
from nuvom.job import Job
from nuvom.sqlite import SCHEMA_VERSION, SchemaTooNew, SQLiteJobQueue, SQLiteResultBackend


def make_readonly(path: Path) -> bool:
    """chmod a-w; as root that is not enough, so also mark the file immutable."""
    os.chmod(path, 0o444)
    if os.access(path, os.W_OK) and shutil.which("chattr"):
        subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    return not os.access(path, os.W_OK)


def undo_readonly(path: Path) -> None:
    if shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    os.chmod(path, 0o644)


def test_a_read_only_database_file_is_reported_as_such_and_can_still_be_read(db_path):
    queue = SQLiteJobQueue(path=db_path)
    job = Job(func_name="record", args=[1])
    queue.enqueue(job)
    queue.close()
    if not make_readonly(db_path):
        pytest.skip("cannot make a file read-only here (root without chattr)")
    try:
        reader = SQLiteJobQueue(path=db_path)
        with pytest.raises(BackendError, match="is read-only") as info:
            reader.enqueue(Job(func_name="record", args=[2]))
        assert "locked" not in str(info.value)
        assert reader.qsize() == 1 and reader.get(job.id) is not None
        assert SQLiteResultBackend(path=db_path).count() == 0
        reader.close()
    finally:
        undo_readonly(db_path)


def test_a_database_written_by_a_newer_schema_is_refused_with_the_versions(db_path):
    queue = SQLiteJobQueue(path=db_path)
    queue.qsize()
    queue.close()
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "INSERT INTO nuvom_schema (version, applied_at, by) VALUES (?, 0, 'future')", (SCHEMA_VERSION + 5,)
        )
    conn.close()
    with pytest.raises(SchemaTooNew, match=f"schema version {SCHEMA_VERSION + 5}.*upgrade nuvom-sqlite"):
        SQLiteJobQueue(path=db_path).enqueue(Job(func_name="record"))
    with pytest.raises(BackendError, match="newer"):
        SQLiteResultBackend(path=db_path).count()


def test_a_file_that_is_not_a_database_is_reported_as_corrupt(db_path):
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not a database, just some text that is long enough " * 100)
    with pytest.raises(BackendError, match="corrupt or not a database"):
        SQLiteJobQueue(path=db_path).enqueue(Job(func_name="record"))


def test_a_full_disk_is_reported_as_such(queue):
    queue.qsize()
    conn = queue.db.connection()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 1}")  # what SQLite sees when the disk fills up
    with pytest.raises(BackendError, match="disk is full"):
        queue.enqueue_many([Job(func_name="record", args=["x" * 10_000]) for _ in range(20)])


def test_a_new_database_gets_the_schema_version_and_its_parent_folders(tmp_path):
    path = tmp_path / "deep" / "er" / "jobs.db"
    SQLiteJobQueue(path=path).qsize()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT max(version) FROM nuvom_schema").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_folder_where_the_file_should_be_is_a_clear_error(db_path):
    db_path.mkdir(parents=True)
    with pytest.raises(BackendError, match="is a folder"):
        SQLiteJobQueue(path=db_path).qsize()


def test_an_unusable_setting_names_the_variable(monkeypatch):
    from nuvom.errors import ConfigError

    monkeypatch.setenv("NUVOM_RESULT_TTL_SECS", "soon")
    with pytest.raises(ConfigError, match="NUVOM_RESULT_TTL_SECS"):
        SQLiteResultBackend()


def test_a_too_old_sqlite_library_is_named_in_the_error(monkeypatch, db_path):
    import nuvom.sqlite._db as db

    monkeypatch.setattr(db.sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(db.sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(BackendError, match=r"needs SQLite 3\.35\.0 or newer.*3\.31\.1"):
        SQLiteJobQueue(path=db_path).qsize()


def test_a_data_dir_that_is_not_a_folder_stops_the_worker_with_one_line(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUVOM_DATA_DIR": "/dev/null"}
    env.pop("NUVOM_QUEUE_BACKEND", None)
    env.pop("NUVOM_RESULT_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, "-m", "nuvom.worker"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 6
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "/dev/null" in lines[0] and "NUVOM_DATA_DIR" in lines[0], proc.stderr
