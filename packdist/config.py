"""The site's settings: defaults, then ``HOME/packdist.toml``, then ``PACKDIST_*`` environment
variables, then command-line flags; the last one given wins.

Every setting has one flat name (``retry_cap``) that fixes all its spellings:

* in the file: section ``[retry]``, key ``cap`` (settings without a section are top-level);
* in the environment: ``PACKDIST_RETRY_CAP``;
* as a flag of ``site serve`` and ``site config``: ``--retry-cap``.

Durations are seconds, as a number or a string with a unit (``"90s"``, ``"5m"``, ``"24h"``,
``"7d"``). ``packdist site config`` prints the effective values and where each came from.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from packdist.config_values import (
    boolean,
    format_duration,
    format_rate,
    host_list,
    integer,
    label_key,
    listen_address,
    number,
    parse_duration,
    transfer_rate,
)
from packdist.errors import UserError
from packdist.retry import RetryPolicy

CONFIG_NAME = "packdist.toml"
ENV_PREFIX = "PACKDIST_"


class ConfigError(UserError):
    """The configuration is invalid."""


# --- the settings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One setting: its flat name, where it lives in the file, how to parse it, its help."""

    name: str
    section: str | None
    key: str
    parse: Callable[[Any], Any]
    help: str
    kind: str  # what the flag takes: "text", "int", "number", "duration", "bool", "rate",
    # "label"

    @property
    def toml_path(self) -> str:
        return f"{self.section}.{self.key}" if self.section else self.key

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SPECS: tuple[Spec, ...] = (
    Spec("listen", None, "listen", listen_address, "HOST:PORT the site listens on", "text"),
    Spec(
        "plain_http",
        None,
        "plain_http",
        boolean,
        "serve plain HTTP instead of HTTPS (a lab on loopback only: traffic can be read)",
        "bool",
    ),
    Spec("workers", None, "workers", integer(1), "instructions in flight at once", "int"),
    Spec("retry_initial", "retry", "initial", parse_duration, "first backoff", "duration"),
    Spec("retry_factor", "retry", "factor", number(1.0), "backoff growth per attempt", "number"),
    Spec("retry_cap", "retry", "cap", parse_duration, "longest backoff", "duration"),
    Spec("retry_jitter", "retry", "jitter", number(0.0, 1.0), "backoff spread, 0..1", "number"),
    Spec(
        "retry_max_attempts",
        "retry",
        "max_attempts",
        integer(0),
        "attempts per target before it is failed (0: no limit)",
        "int",
    ),
    Spec(
        "retry_deadline",
        "retry",
        "deadline",
        parse_duration,
        "time after a job's creation when its targets are failed (0: none)",
        "duration",
    ),
    Spec(
        "validation_interval",
        "validation",
        "interval",
        parse_duration,
        "how often the site re-verifies installed packages on every server (0: never)",
        "duration",
    ),
    Spec(
        "peers_enabled",
        "peers",
        "enabled",
        boolean,
        "whether agents fetch chunks from peers that hold or receive the same package",
        "bool",
    ),
    Spec(
        "peers_location_label",
        "peers",
        "location_label",
        label_key,
        "server label that names a location: peers must share its value",
        "label",
    ),
    Spec(
        "transfer_upload_limit",
        "transfer",
        "upload_limit",
        transfer_rate,
        "the most the site sends to agents per second, e.g. 100mbit or 12MB (0: no limit)",
        "rate",
    ),
    Spec(
        "metrics_auth",
        "metrics",
        "auth",
        boolean,
        "whether /metrics requires the operator credential",
        "bool",
    ),
    Spec(
        "dashboard_session_ttl",
        "dashboard",
        "session_ttl",
        parse_duration,
        "how long a dashboard login lasts",
        "duration",
    ),
    Spec(
        "tls_hosts",
        "tls",
        "hosts",
        host_list,
        "more names and addresses the site's certificate names, comma-separated (beside its"
        " listen host; with 0.0.0.0, the machine's names), e.g. site.example.com,10.0.0.5",
        "hosts",
    ),
)
BY_NAME = {s.name: s for s in SPECS}
assert all(s.name == s.toml_path.replace(".", "_") for s in SPECS), "one spelling per setting"
_ZERO_MEANS = {
    "retry_max_attempts": "no limit",
    "retry_deadline": "none",
    "validation_interval": "never",
    "transfer_upload_limit": "no limit",
}


@dataclass(frozen=True)
class Settings:
    """The effective settings of a site (see the module docstring for the sources)."""

    listen: str = "127.0.0.1:8700"
    plain_http: bool = False
    tls_hosts: str = ""
    workers: int = 64
    retry_initial: float = 1.0
    retry_factor: float = 2.0
    retry_cap: float = 60.0
    retry_jitter: float = 0.2
    retry_max_attempts: int = 0
    retry_deadline: float = 0.0
    validation_interval: float = 86400.0
    peers_enabled: bool = True
    peers_location_label: str = "site"
    transfer_upload_limit: float = 0.0
    metrics_auth: bool = True
    dashboard_session_ttl: float = 12 * 3600.0

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            initial=self.retry_initial,
            factor=self.retry_factor,
            cap=self.retry_cap,
            jitter=self.retry_jitter,
            max_attempts=self.retry_max_attempts or None,
            deadline=self.retry_deadline or None,
        )

    def display(self, name: str) -> str:
        value = getattr(self, name)
        if name in _ZERO_MEANS and not value:
            return f"0 ({_ZERO_MEANS[name]})"
        if BY_NAME[name].kind == "duration":
            return format_duration(float(value))
        if BY_NAME[name].kind == "rate":
            return format_rate(float(value))
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)


assert {f.name for f in fields(Settings)} == set(BY_NAME), "every setting needs a Spec"


@dataclass(frozen=True)
class Loaded:
    """Settings with where each value came from: ``default``, ``file``, ``env`` or ``flag``."""

    settings: Settings
    sources: dict[str, str]
    path: Path
    file_exists: bool


def _check_defaults() -> None:
    # The defaults in the dataclass must survive their own parsers (a cheap self-check).
    for spec in SPECS:
        spec.parse(getattr(Settings(), spec.name))


_check_defaults()


def _flatten(doc: Mapping[str, Any], path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    known_sections = {s.section for s in SPECS if s.section}
    by_path = {s.toml_path: s for s in SPECS}
    for key, value in doc.items():
        if isinstance(value, dict) and key in known_sections:
            items = [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            items = [(key, value)]
        for dotted, v in items:
            spec = by_path.get(dotted)
            if spec is None:
                close = difflib.get_close_matches(dotted, list(by_path), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"{path}: unknown setting '{dotted}'{hint}")
            out[spec.name] = v
    return out


def _parse(spec: Spec, value: Any, where: str) -> Any:
    try:
        return spec.parse(value)
    except ValueError as exc:
        raise ConfigError(f"{where} {exc} (got {value!r})") from None


def load(
    home: Path,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Loaded:
    """The effective settings of the site in ``home``.

    ``flags`` maps setting names to command-line values (``None``: flag not given);
    ``environ`` defaults to ``os.environ``.
    """
    path = home / CONFIG_NAME
    environ = os.environ if environ is None else environ
    # The last source that gives a value wins, and only its value is parsed: a flag can
    # override a broken environment variable.
    chosen: dict[str, tuple[str, Any, str]] = {}  # name -> (source, raw value, where)
    exists = path.is_file()
    if exists:
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
        for name, raw in _flatten(doc, path).items():
            chosen[name] = ("file", raw, f"{path}: {BY_NAME[name].toml_path}")
    for spec in SPECS:
        raw_env = environ.get(spec.env)
        if raw_env is not None and raw_env != "":
            chosen[spec.name] = ("env", raw_env, spec.env)
    for name, raw_flag in (flags or {}).items():
        if raw_flag is not None:
            chosen[name] = ("flag", raw_flag, BY_NAME[name].flag)
    values = {name: _parse(BY_NAME[name], raw, where) for name, (_, raw, where) in chosen.items()}
    sources = {s.name: chosen[s.name][0] if s.name in chosen else "default" for s in SPECS}
    return Loaded(Settings(**values), sources, path, exists)


def default_file_text() -> str:
    """The commented ``packdist.toml`` that ``site init`` writes: every setting, commented
    out at its default, so the file documents itself and changes nothing until edited."""
    d = Settings()
    lines = [
        "# packdist site configuration (docs/configuration.md).",
        "# Each value can also be set with an environment variable (PACKDIST_<NAME>) or a flag",
        "# of 'packdist site serve'; flag beats environment beats this file beats the default.",
        "# 'packdist site config' shows the effective values and where each came from.",
        '# Durations: seconds, or a string with a unit: "90s", "5m", "24h", "7d".',
        "",
    ]
    section: str | None = None
    for spec in SPECS:
        if spec.section != section:
            section = spec.section
            lines += ["", f"[{section}]"]
        value = getattr(d, spec.name)
        if spec.kind == "duration":
            shown = f'"{format_duration(float(value))}"'
        elif spec.kind == "rate":
            shown = str(int(value))
        elif spec.kind in ("text", "label", "hosts"):
            shown = f'"{value}"'
        elif isinstance(value, bool):
            shown = "true" if value else "false"
        else:
            shown = str(value)
        lines.append(f"# {spec.help[:1].upper()}{spec.help[1:]}.")
        lines.append(f"#   (environment: {spec.env}, flag: {spec.flag})")
        lines.append(f"# {spec.key} = {shown}")
    return "\n".join(lines) + "\n"


def write_default(home: Path) -> Path:
    """Write the commented default file unless one exists; returns its path."""
    path = home / CONFIG_NAME
    if not path.exists():
        path.write_text(default_file_text(), encoding="utf-8")
    return path
