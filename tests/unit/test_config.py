"""Site settings: defaults < packdist.toml < PACKDIST_* < flags, each value checked and its
source known; errors name the file, variable or flag and what is wrong."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from packdist import config
from packdist.config import ConfigError, Settings, load, parse_duration
from packdist.retry import RetryPolicy


def write(home: Path, text: str) -> None:
    (home / config.CONFIG_NAME).write_text(text)


def test_without_file_env_or_flags_everything_is_default(tmp_path: Path) -> None:
    loaded = load(tmp_path, environ={})
    assert loaded.settings == Settings()
    assert set(loaded.sources.values()) == {"default"}
    assert not loaded.file_exists
    assert loaded.path == tmp_path / "packdist.toml"


def test_flag_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    write(
        tmp_path,
        'listen = "0.0.0.0:9000"\nworkers = 8\n[retry]\ncap = "5m"\ninitial = 2\n',
    )
    env = {"PACKDIST_WORKERS": "16", "PACKDIST_RETRY_CAP": "90s"}
    loaded = load(tmp_path, flags={"retry_cap": "10s", "listen": None}, environ=env)
    s = loaded.settings
    assert s.listen == "0.0.0.0:9000" and loaded.sources["listen"] == "file"
    assert s.workers == 16 and loaded.sources["workers"] == "env"
    assert s.retry_cap == 10.0 and loaded.sources["retry_cap"] == "flag"
    assert s.retry_initial == 2.0 and loaded.sources["retry_initial"] == "file"
    assert s.retry_factor == 2.0 and loaded.sources["retry_factor"] == "default"


def test_every_setting_has_one_name_in_file_env_and_flag() -> None:
    for spec in config.SPECS:
        assert spec.env == "PACKDIST_" + spec.toml_path.replace(".", "_").upper()
        assert spec.flag == "--" + spec.toml_path.replace(".", "-").replace("_", "-")


def test_default_file_documents_every_setting_and_changes_nothing(tmp_path: Path) -> None:
    path = config.write_default(tmp_path)
    text = path.read_text()
    tomllib.loads(text)  # valid TOML
    for spec in config.SPECS:
        assert f"# {spec.key} = " in text, spec.name
        assert spec.env in text and spec.flag in text
    loaded = load(tmp_path, environ={})
    assert loaded.file_exists
    assert loaded.settings == Settings()
    # Uncommenting every line gives the defaults again: the comments tell the truth.
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") and " = " in line else line for line in text.splitlines()
    )
    write(tmp_path, uncommented)
    loaded = load(tmp_path, environ={})
    assert loaded.settings == Settings()
    assert set(loaded.sources.values()) == {"file"}


def test_write_default_keeps_an_existing_file(tmp_path: Path) -> None:
    write(tmp_path, "workers = 3\n")
    config.write_default(tmp_path)
    assert load(tmp_path, environ={}).settings.workers == 3


def test_retry_policy_comes_from_the_settings(tmp_path: Path) -> None:
    write(tmp_path, '[retry]\ninitial = "2s"\nfactor = 3\ncap = "1m"\njitter = 0\n')
    policy = load(tmp_path, environ={"PACKDIST_RETRY_MAX_ATTEMPTS": "5"}).settings.retry_policy()
    assert policy == RetryPolicy(
        initial=2.0, factor=3.0, cap=60.0, jitter=0.0, max_attempts=5, deadline=None
    )
    assert policy.delay(1) == 2.0 and policy.delay(2) == 6.0 and policy.delay(10) == 60.0
    # 0 means "no limit", as documented
    assert Settings().retry_policy().max_attempts is None
    assert Settings().retry_policy().deadline is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (30, 30.0),
        (1.5, 1.5),
        ("90s", 90.0),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("7d", 604800.0),
        ("0", 0.0),
        (" 2 h ", 7200.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "-5s", "5w", True, [1], "1e999"])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("toml", "env", "flags", "needles"),
    [
        ("workers = 0\n", {}, {}, ["packdist.toml", "workers", "at least 1"]),
        ('workers = "many"\n', {}, {}, ["workers", "integer", "'many'"]),
        ('listen = "nowhere"\n', {}, {}, ["listen", "HOST:PORT"]),
        ("[retry]\njitter = 2\n", {}, {}, ["retry.jitter", "between 0 and 1"]),
        ('[retry]\ncap = "forever"\n', {}, {}, ["retry.cap", "duration"]),
        ("[retry]\nintial = 1\n", {}, {}, ["unknown setting 'retry.intial'", "retry.initial"]),
        ("colour = 1\n", {}, {}, ["unknown setting 'colour'"]),
        ("workers = \n", {}, {}, ["packdist.toml", "not valid TOML"]),
        ("", {"PACKDIST_WORKERS": "x"}, {}, ["PACKDIST_WORKERS", "integer"]),
        ("", {"PACKDIST_METRICS_AUTH": "maybe"}, {}, ["PACKDIST_METRICS_AUTH", "true or false"]),
        ("", {}, {"retry_factor": "0.5"}, ["--retry-factor", ">= 1"]),
    ],
)
def test_errors_name_the_source_and_the_problem(
    tmp_path: Path, toml: str, env: dict[str, str], flags: dict[str, str], needles: list[str]
) -> None:
    if toml:
        write(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load(tmp_path, flags=flags, environ=env)
    message = info.value.message
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_booleans_from_env(tmp_path: Path) -> None:
    for word, value in [("false", False), ("0", False), ("off", False), ("yes", True)]:
        assert (
            load(tmp_path, environ={"PACKDIST_METRICS_AUTH": word}).settings.metrics_auth is value
        )


def test_empty_environment_variable_is_ignored(tmp_path: Path) -> None:
    loaded = load(tmp_path, environ={"PACKDIST_WORKERS": ""})
    assert loaded.settings.workers == 64 and loaded.sources["workers"] == "default"


def test_display_says_what_zero_means() -> None:
    s = Settings()
    assert s.display("retry_max_attempts") == "0 (no limit)"
    assert s.display("retry_cap") == "1m"
    assert s.display("metrics_auth") == "true"
