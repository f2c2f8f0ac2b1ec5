from __future__ import annotations

from pathlib import Path

import pytest
from nuvom.config import (
    EnvSettings,
    Settings,
    get_settings,
    load_settings,
    read_settings,
    reset_settings,
    setting_sources,
)
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


# -- EnvSettings: the rules pydantic-settings had, kept ----------------------------------
def test_constructor_arguments_win_over_environment_and_dotenv(isolated, monkeypatch):
    (isolated / ".env").write_text("NUVOM_MAX_WORKERS=7\n")
    monkeypatch.setenv("NUVOM_MAX_WORKERS", "9")
    assert Settings(max_workers=2).max_workers == 2
    assert Settings().max_workers == 9


def test_variable_names_are_read_in_any_case(isolated, monkeypatch):
    monkeypatch.setenv("nuvom_batch_size", "5")
    (isolated / ".env").write_text("Nuvom_Max_Workers=6\n")
    s = load_settings()
    assert (s.batch_size, s.max_workers) == (5, 6)


def test_dotenv_syntax_is_python_dotenv(isolated):
    # Quotes, `export`, comments and a key without a value (left at its default).
    (isolated / ".env").write_text(
        "# a comment\nexport NUVOM_TASK_MODULES=\"a, b\"  # trailing\nNUVOM_LOG_LEVEL='DEBUG'\nNUVOM_MAX_WORKERS\n"
    )
    s = load_settings()
    assert (s.task_modules, s.log_level, s.max_workers) == ("a, b", "DEBUG", 4)
    assert setting_sources(s)["NUVOM_MAX_WORKERS"] == (4, "default")


class ListSettings(EnvSettings):
    sample_list: list[float] = [1.0]
    sample_port: int | str = 80
    sample_either: list[int] | str = "x"


def test_list_fields_are_read_as_json(monkeypatch):
    monkeypatch.setenv("NUVOM_SAMPLE_LIST", "[0.5, 2]")
    monkeypatch.setenv("NUVOM_SAMPLE_PORT", "9150-9157")
    monkeypatch.setenv("NUVOM_SAMPLE_EITHER", "plain")
    s = read_settings(ListSettings)
    assert (s.sample_list, s.sample_port, s.sample_either) == ([0.5, 2.0], "9150-9157", "plain")
    monkeypatch.setenv("NUVOM_SAMPLE_EITHER", "[3]")
    assert read_settings(ListSettings).sample_either == [3]


def test_a_list_field_that_is_not_json_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("NUVOM_SAMPLE_LIST", "0.5, 2")
    with pytest.raises(ConfigError) as info:
        read_settings(ListSettings)
    assert "NUVOM_SAMPLE_LIST" in str(info.value) and "JSON" in str(info.value)


def test_reading_settings_does_not_import_pydantic_settings(tmp_path):
    import subprocess
    import sys

    probe = "import sys, nuvom.sdk; from nuvom.app import default_app; default_app().settings; "
    probe += "print('pydantic_settings' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_a_pydantic_settings_class_of_an_earlier_plugin_still_reads(monkeypatch):
    pydantic_settings = pytest.importorskip("pydantic_settings")

    class OldPluginSettings(pydantic_settings.BaseSettings):  # type: ignore[misc]
        model_config = pydantic_settings.SettingsConfigDict(env_prefix="NUVOM_", extra="ignore")
        old_knob: int = 1

    monkeypatch.setenv("NUVOM_OLD_KNOB", "4")
    assert read_settings(OldPluginSettings).old_knob == 4
    monkeypatch.setenv("NUVOM_OLD_KNOB", "four")
    with pytest.raises(ConfigError) as info:
        read_settings(OldPluginSettings)
    assert "NUVOM_OLD_KNOB" in str(info.value)
