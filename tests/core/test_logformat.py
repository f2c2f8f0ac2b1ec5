"""nuvom._logformat: the worker's log lines as text or as one JSON object a line."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from nuvom._logformat import JsonFormatter, install_handler
from nuvom.config import Settings


def _record(msg: str, *args: object, exc: BaseException | None = None, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("nuvom.worker", logging.WARNING, __file__, 1, msg, args, None)
    if exc is not None:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    record.__dict__.update(extra)
    return record


def test_json_line_has_time_level_logger_message() -> None:
    record = _record("job %s retried", "abc")
    record.created = 0.25  # 1970-01-01 00:00:00.250 UTC
    out = json.loads(JsonFormatter().format(record))
    assert out == {
        "timestamp": "1970-01-01T00:00:00.250Z",
        "level": "WARNING",
        "logger": "nuvom.worker",
        "message": "job abc retried",
    }


def test_json_line_carries_the_job_fields_given_as_extra() -> None:
    record = _record("retrying", job_id="j1", task="add", worker="host:1:ab", unrelated="x")
    out = json.loads(JsonFormatter().format(record))
    assert (out["job_id"], out["task"], out["worker"]) == ("j1", "add", "host:1:ab")
    assert "unrelated" not in out


def test_json_line_carries_the_exception_text_on_one_line() -> None:
    try:
        raise ValueError("bad value\nsecond line")
    except ValueError as exc:
        line = JsonFormatter().format(_record("failed", exc=exc))
    assert "\n" not in line
    out = json.loads(line)
    assert out["exception"].startswith("Traceback (most recent call last):")
    assert "ValueError: bad value\nsecond line" in out["exception"]


def test_a_value_json_cannot_hold_is_written_as_text() -> None:
    out = json.loads(JsonFormatter().format(_record("x", task=Path("a/b"))))
    assert out["task"] == str(Path("a/b"))


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_install_handler_writes_the_chosen_format_and_replaces_its_own(fmt: str) -> None:
    logger = logging.getLogger("nuvom")
    before = list(logger.handlers)
    level = logger.level
    first, second = io.StringIO(), io.StringIO()
    try:
        install_handler(Settings(log_format=fmt, log_level="INFO"), first)
        handler = install_handler(Settings(log_format=fmt, log_level="INFO"), second)
        assert [h for h in logger.handlers if h not in before] == [handler]
        logging.getLogger("nuvom.test").info("hello %s", "there", extra={"job_id": "j9"})
    finally:
        for h in list(logger.handlers):
            if h not in before:
                logger.removeHandler(h)
        logger.setLevel(level)
    assert first.getvalue() == ""
    line = second.getvalue()
    if fmt == "json":
        assert json.loads(line)["message"] == "hello there" and json.loads(line)["job_id"] == "j9"
    else:
        assert line.rstrip().endswith("INFO nuvom.test: hello there")


def test_an_unknown_log_format_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from nuvom.config import load_settings
    from nuvom.errors import ConfigError

    monkeypatch.setenv("NUVOM_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="NUVOM_LOG_FORMAT"):
        load_settings()


def test_python_dash_m_nuvom_worker_logs_json_lines(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent(
            """
            from nuvom.task import task

            @task
            def add(x, y):
                return x + y
            """
        ),
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_") and k != "PYTHONPATH"}
    env.update(NUVOM_DATA_DIR=str(tmp_path / ".nuvom"), NUVOM_QUEUE_BACKEND="file", NUVOM_RESULT_BACKEND="file")
    env.update(NUVOM_LOG_FORMAT="json", NUVOM_LOG_LEVEL="INFO")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nuvom.worker", "tasks"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()  # the start line: the worker is up
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=60)
    lines = [first, *rest.splitlines()]
    records = [json.loads(line) for line in lines if line.strip()]
    assert any("started" in r["message"] for r in records)
    assert all({"timestamp", "level", "logger", "message"} <= set(r) for r in records)
