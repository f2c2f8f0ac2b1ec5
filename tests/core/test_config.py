from __future__ import annotations

from pathlib import Path

import pytest
from nuvom.config import get_settings, load_settings, reset_settings, setting_sources
from nuvom.errors import ConfigError


def test_defaults():
    s = load_settings()
    assert (s.max_workers, s.batch_size, s.job_timeout_secs, s.timeout_policy) == (4, 32, 30.0, "fail")
    assert s.manifest_path == Path(".nuvom/manifest.json") and s.serialization_backend == "msgpack"


def test_environment_overrides_dotenv_which_overrides_defaults(isolated, monkeypatch):
    (isolated / ".env").write_text("NUVOM_MAX_WORKERS=7\nNUVOM_BATCH_SIZE=3\n")
    monkeypatch.setenv("NUVOM_BATCH_SIZE", "9")
    s = load_settings()
    assert (s.max_workers, s.batch_size) == (7, 9)
    sources = setting_sources(s)
    assert sources["NUVOM_MAX_WORKERS"] == (7, ".env")
    assert sources["NUVOM_BATCH_SIZE"] == (9, "environment")
    assert sources["NUVOM_JOB_TIMEOUT_SECS"] == (30.0, "default")


@pytest.mark.parametrize(
    "var, value",
    [
        ("NUVOM_MAX_WORKERS", "abc"),
        ("NUVOM_TIMEOUT_POLICY", "explode"),
        ("NUVOM_BATCH_SIZE", "0"),
        ("NUVOM_LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_value_is_a_clear_error_naming_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert var in str(info.value) and repr(value) in str(info.value)


def test_bad_value_in_dotenv_is_reported_too(isolated):
    (isolated / ".env").write_text("NUVOM_MAX_WORKERS=many\n")
    with pytest.raises(ConfigError, match="NUVOM_MAX_WORKERS='many'"):
        load_settings()


def test_get_settings_is_cached_until_reset(monkeypatch):
    first = get_settings()
    monkeypatch.setenv("NUVOM_MAX_WORKERS", "2")
    assert get_settings() is first
    reset_settings()
    assert get_settings().max_workers == 2
