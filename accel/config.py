"""acceld-compatible YAML settings, validated with pydantic.

Layout (as Harbor acceleration-service's config.yaml):

    server:    {name, uds, host, port}
    metric:    {enabled}
    provider:  {source: {<host>: {auth, insecure, plain_http, webhook: {auth_header}}},
                work_dir, gcpolicy: {threshold}, cache_size, cache_version}
    converter: {worker, harbor_annotation, platforms, driver: {type, config}, rules: [...]}

accel additions: `converter.drivers` (several formats per push, each with its own tag suffix),
`provider.docker_config` (path to a docker config.json for credentials), `provider.cache_repository`,
`provider.cache_index_root`, `converter.rules[].{repository, drivers, target}` (per-repository drivers and
target repository), `bulk: {schedule, repositories}`.

Every key acceld's config struct has is accepted, and either does what it does in acceld or is refused
with a message naming it and why. Keys nobody knows are what acceld ignores silently: `load_file` warns
and drops them, `load_file(..., strict=True)` (`accelctl config check`) reports them as errors.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import fnmatch
import logging
import re
import types
import typing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from accel.drivers.base import ACCELD_ONLY_KEYS
from accel.errors import ConfigError
from accel.oci import Platform

log = logging.getLogger(__name__)


def _usable_in_tag(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[\w.-]{1,128}", value):
        raise ValueError(f"{value!r} is not usable in a tag (letters, digits, '_', '.', '-')")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Model):
    name: str = "API"  # as in acceld, also the prefix of its API metrics
    # A unix socket to serve the API on, besides TCP (only the socket when `host` is ""). Requests over it
    # need no webhook Authorization: its file mode (accel's `uds_mode`, 0600 or 0660) decides who may call.
    uds: Path | None = None
    uds_mode: str = "0600"
    host: str = "127.0.0.1"
    port: int = Field(default=2077, ge=0, le=65535)

    @field_validator("uds", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("uds_mode", mode="before")
    @classmethod
    def _owner_and_group_only(cls, value: Any) -> Any:
        text = f"{value:o}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
        if not re.fullmatch(r"0?[0-7]{3}", text):
            raise ValueError(f"uds_mode must be an octal file mode like 0600 or 0660, got {value!r}")
        mode = int(text, 8)
        if mode & 0o007 or mode & 0o600 != 0o600:
            # Anyone who can open the socket is trusted: never others, and its owner must be able to.
            raise ValueError(f"uds_mode {text} must give its owner rw and others nothing (0600 or 0660)")
        return f"{mode:04o}"

    @property
    def uds_file_mode(self) -> int:
        return int(self.uds_mode, 8)


class MetricSettings(_Model):
    enabled: bool = True
    # accel: /metrics answers without the webhook Authorization header (for a scraper that sends none);
    # otherwise it takes the same header as every other API route.
    open: bool = False


class WebhookSettings(_Model):
    auth_header: SecretStr | None = None
    # Webhooks for this host without an Authorization header: acceld refuses to start without
    # `auth_header` unless this says so explicitly.
    allow_unauthenticated: bool = False

    @property
    def secret(self) -> str | None:
        """The expected Authorization value; None when none is configured (empty counts as none)."""
        value = self.auth_header.get_secret_value() if self.auth_header is not None else ""
        return value or None


class SourceHost(_Model):
    """One registry accel may pull from and push to."""

    auth: SecretStr | None = None  # base64 of "user:password"
    # Skip TLS verification; and, as acceld, speak plain HTTP to the host when it answers TLS in plain HTTP.
    insecure: bool = False
    # None: plain HTTP for loopback hosts only (for `insecure` ones: TLS first, as above).
    plain_http: bool | None = None
    webhook: WebhookSettings = WebhookSettings()

    @field_validator("auth")
    @classmethod
    def _auth_is_base64_user_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        try:
            decoded = base64.b64decode(value.get_secret_value(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError("auth must be base64 of 'user:password'") from None
        if ":" not in decoded:
            raise ValueError("auth must be base64 of 'user:password' (no ':' found after decoding)")
        return value


class GCPolicy(_Model):
    threshold: str = "1000MB"

    @field_validator("threshold")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value


class ProviderSettings(_Model):
    source: dict[str, SourceHost] = {}
    work_dir: Path = Path(".state/work")
    gcpolicy: GCPolicy = GCPolicy()
    # At most this many records per cache manifest; 0 keeps none (records are read, never written), as
    # acceld's cache does with 0.
    cache_size: int = Field(default=200, ge=0)
    cache_version: str = "v1"
    # accel: write a new single-platform cache as an index (the layout before upstream's single-manifest
    # cache change) for fleets that still run Go workers which can only read index roots.
    cache_index_root: bool = False
    # accel: one conversion cache repository (`repo` on the source's registry, or `host/repo`) shared by
    # every source repository, instead of `<source repository>:<cache_tag>`.
    cache_repository: str | None = None
    docker_config: Path | None = None

    @field_validator("source", mode="before")
    @classmethod
    def _empty_host_is_defaults(cls, value: Any) -> Any:
        # acceld's sample lists hosts with every key commented out, which YAML reads as null.
        if isinstance(value, dict):
            return {host: {} if settings is None else settings for host, settings in value.items()}
        return value


class DriverSettings(_Model):
    type: str
    config: dict[str, Any] = {}
    tag_suffix: str | None = None  # accel: per-driver target tag suffix when several drivers run

    @field_validator("tag_suffix")
    @classmethod
    def _suffix_chars(cls, value: str | None) -> str | None:
        return _usable_in_tag(value)

    @field_validator("config", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @model_validator(mode="before")
    @classmethod
    def _acceld_driver(cls, data: Any) -> Any:
        """acceld's driver (type and config) as accel's, as the driver of that type says
        (`Driver.acceld_driver`)."""
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            return data
        from accel.drivers import driver_class

        try:
            driver = driver_class(str(data.get("type")))
        except ConfigError:
            return data  # the unknown type itself is reported by validation
        driver_type, config = driver.acceld_driver(data["config"])
        return {**data, "type": driver_type, "config": config}

    def driver_config(self) -> dict[str, Any]:
        return {k: v for k, v in self.config.items() if k not in ACCELD_ONLY_KEYS}


class Rule(_Model):
    tag_suffix: str | None = None
    cache_tag: str | None = None
    # accel: routing for pushed images. A rule with `repository` (a glob over `host/repo`, e.g.
    # `harbor.example.com/library/*`) applies to matching sources only; `drivers` picks formats for them
    # and `target` names the target repository (`{repository}` is the source's, e.g. `{repository}-lazy`).
    repository: str | None = None
    drivers: list[str] | None = None
    target: str | None = None

    @field_validator("tag_suffix", "cache_tag")
    @classmethod
    def _tag_chars(cls, value: str | None) -> str | None:
        return _usable_in_tag(value)

    @field_validator("target")
    @classmethod
    def _target_template(cls, value: str | None) -> str | None:
        if value is not None:
            rendered = value.replace("{repository}", "a/b")
            if "{" in rendered or not re.fullmatch(r"[a-z0-9]+(?:(?:[._]|__|-+|/)[a-z0-9]+)*", rendered):
                raise ValueError(f"{value!r} is not a repository name (placeholder: {{repository}})")
        return value

    def matches(self, registry: str, repository: str) -> bool:
        return self.repository is None or fnmatch.fnmatchcase(f"{registry}/{repository}", self.repository)


class Route(BaseModel):
    """Where a pushed image goes: which drivers (None: all configured) and which target repository."""

    drivers: list[str] | None = None
    target_repository: str | None = None


class LimitSettings(_Model):
    """accel: bounds on one conversion, each failing it with a reason that names the limit."""

    max_layer_size: str = "16GiB"  # uncompressed bytes of one source layer
    # Uncompressed bytes of one image: the sum over its layers, per platform (each image of an index alone).
    max_image_size: str = "32GiB"
    max_expansion_ratio: float = Field(default=200.0, gt=1)  # uncompressed / compressed, past 64 MiB
    # Layers of one platform image. 500 is as deep as overlayfs stacks lower layers: an image with more
    # cannot run on it anyway, and each layer is task runs of its own.
    max_layers: int = Field(default=500, ge=1)
    # Tar entries of one source layer (files, directories, links...): what a conversion keeps per entry
    # (TOCs, tar-split, Nydus's tables and builder tree) grows with each, whatever the layer's bytes. At
    # 200,000 a layer of a million empty files fails within a minute under 500 MiB with every driver
    # (Nydus: ~440 MiB, run and builder together; tests/integration/test_bounded_work.py).
    max_entries: int = Field(default=200_000, ge=1)
    timeout: int = Field(default=3600, ge=1)  # seconds for one conversion (the flow run's timeout)

    @field_validator("max_layer_size", "max_image_size")
    @classmethod
    def _size(cls, value: str) -> str:
        if parse_size(value) <= 0:
            raise ValueError("must be more than 0 bytes")
        return value

    @property
    def max_layer_bytes(self) -> int:
        return parse_size(self.max_layer_size)

    @property
    def max_image_bytes(self) -> int:
        return parse_size(self.max_image_size)


class ConverterSettings(_Model):
    worker: int = Field(default=5, ge=1)
    limits: LimitSettings = LimitSettings()
    harbor_annotation: bool = True
    # Prove every converted image against its source before pushing it (accel.verify); refuse when it fails.
    verify: bool = False
    platforms: str | list[str] | None = None
    driver: DriverSettings | None = None
    drivers: list[DriverSettings] = []
    rules: list[Rule] = []

    @model_validator(mode="after")
    def _some_driver(self) -> ConverterSettings:
        if self.driver is None and not self.drivers:
            raise ValueError("set converter.driver (or converter.drivers)")
        from accel.drivers import load_driver

        for d in self.all_drivers():
            try:
                load_driver(d.type, d.driver_config())  # option errors surface when the config loads
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        self.platform_filter()
        types = [d.type for d in self.all_drivers()]
        if len(set(types)) != len(types):
            # find_driver() picks the first: a second entry of a type would silently never run.
            raise ValueError(f"each driver type may be configured once; got {', '.join(types)}")
        suffixes = [self.suffix_for(d) for d in self.all_drivers()]
        if len(set(suffixes)) != len(suffixes):
            # Two formats under one tag: the second push would overwrite the first.
            raise ValueError(f"drivers need distinct tag suffixes; got {', '.join(suffixes)}")
        for rule in self.rules:
            unknown = sorted(set(rule.drivers or ()) - set(types))
            if unknown:
                raise ValueError(
                    f"rules: driver(s) {', '.join(unknown)} are not configured "
                    f"(configured: {', '.join(types)})"
                )
        return self

    def all_drivers(self) -> list[DriverSettings]:
        return ([self.driver] if self.driver else []) + list(self.drivers)

    def platform_filter(self) -> list[Platform]:
        if not self.platforms:
            return []
        items = self.platforms.split(",") if isinstance(self.platforms, str) else self.platforms
        return [Platform.parse(p) for p in items if p.strip()]

    @property
    def tag_suffix(self) -> str | None:
        return next((r.tag_suffix for r in self.rules if r.tag_suffix), None)

    @property
    def cache_tag(self) -> str | None:
        return next((r.cache_tag for r in self.rules if r.cache_tag), None)

    def cache_tags(self) -> set[str]:
        """Every rule's cache tag: events for these tags are our own cache pushes."""
        return {r.cache_tag for r in self.rules if r.cache_tag}

    def suffix_for(self, driver: DriverSettings) -> str:
        """Target tag suffix: the driver's own, else the rule's (one driver only), else `-<type>`."""
        if driver.tag_suffix:
            return driver.tag_suffix
        if self.tag_suffix and len(self.all_drivers()) == 1:
            return self.tag_suffix
        return f"-{driver.type}"

    def route(self, registry: str, repository: str) -> Route:
        """The first matching rule with `drivers` or `target` decides; none: every driver, same repository."""
        for rule in self.rules:
            if (rule.drivers or rule.target) and rule.matches(registry, repository):
                target = rule.target.replace("{repository}", repository) if rule.target else None
                return Route(drivers=rule.drivers, target_repository=target)
        return Route()

    def find_driver(self, driver_type: str) -> DriverSettings:
        for d in self.all_drivers():
            if d.type == driver_type:
                return d
        raise ConfigError(
            f"driver {driver_type!r} is not configured; configured: "
            + ", ".join(d.type for d in self.all_drivers())
        )


class BulkSettings(_Model):
    """accel: re-conversion of every tag that lacks an up-to-date converted image (flow `bulk-reconvert`)."""

    schedule: str | None = None  # cron, e.g. "0 3 * * *"; unset: run on demand only
    repositories: list[str] = []  # "host/repo"; empty: every repository in each source host's catalog

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return check_cron(value)


class Settings(_Model):
    server: ServerSettings = ServerSettings()
    metric: MetricSettings = MetricSettings()
    provider: ProviderSettings = ProviderSettings()
    converter: ConverterSettings
    bulk: BulkSettings = BulkSettings()

    def host(self, registry: str) -> SourceHost | None:
        return self.provider.source.get(registry)

    def unauthenticated_hosts(self) -> list[str]:
        """Source hosts whose webhooks need no Authorization header: no `auth_header`, and
        `allow_unauthenticated: true` (without it, acceld refuses to start; see `unprotected_hosts`)."""
        return sorted(
            name
            for name, host in self.provider.source.items()
            if host.webhook.secret is None and host.webhook.allow_unauthenticated
        )

    def unprotected_hosts(self) -> list[str]:
        """Source hosts with neither a webhook `auth_header` nor an explicit `allow_unauthenticated`."""
        return sorted(
            name
            for name, host in self.provider.source.items()
            if host.webhook.secret is None and not host.webhook.allow_unauthenticated
        )


def check_cron(expression: str) -> str:
    """`expression` when it is a standard 5-field cron that can fire (checked by cronsim, which Prefect's
    own dependencies bring); else ValueError naming the bad field, e.g. `61 * * * *`: bad minute."""
    from cronsim import CronSim, CronSimError

    if len(expression.split()) != 5:
        raise ValueError(f"{expression!r} is not a cron expression: it needs 5 fields, e.g. '0 3 * * *'")
    try:
        CronSim(expression, datetime.now(UTC))
    except CronSimError as exc:
        raise ValueError(f"{expression!r} is not a valid cron expression: {str(exc).lower()}") from None
    return expression


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 1000MB, 10GiB)")
    unit = m.group(2).upper().rstrip("B").rstrip("I")
    factor = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
    return int(float(m.group(1)) * factor)


def _format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {msg}")
    return lines


def _invalid(origin: str, problems: list[str]) -> ConfigError:
    """One line for one problem (`FILE is invalid: where: why`), one indented line each for several."""
    if len(problems) == 1:
        return ConfigError(f"{origin} is invalid: {problems[0]}")
    return ConfigError(f"{origin} is invalid:\n" + "\n".join(f"  {p}" for p in problems))


# --- keys acceld would ignore --------------------------------------------------------------------------


def _model_in(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """The pydantic model a field holds: ("one", M) for M or M | None, ("map"/"list", M) for containers."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "one", annotation
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
        return None
    args = typing.get_args(annotation)
    if origin is dict and len(args) == 2 and _model_in(args[1]) is not None:
        return "map", _model_in(args[1])[1]  # type: ignore[index]
    if origin is list and args and _model_in(args[0]) is not None:
        return "list", _model_in(args[0])[1]  # type: ignore[index]
    return None


def _driver_keys(driver_type: Any) -> frozenset[str] | None:
    from accel.drivers import driver_class

    try:
        cls = driver_class(str(driver_type))
    except ConfigError:
        return None  # the unknown type itself is reported by validation
    return cls.options_model.accepted_keys() | ACCELD_ONLY_KEYS


# An unknown key's dotted path, and the known key it is probably a typo of.
UnknownKey = tuple[str, str | None]


def _close_match(key: Any, known: Any) -> str | None:
    close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.75)
    return close[0] if close else None


def _strip_unknown(model: type[BaseModel], data: Any, where: str, found: list[UnknownKey]) -> Any:
    """`data` without the keys `model` (recursively) does not know; their dotted paths go to `found`."""
    if not isinstance(data, dict):
        return data
    cleaned: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            found.append((path, _close_match(key, model.model_fields)))
            continue
        if model is DriverSettings and key == "config" and isinstance(value, dict):
            known = _driver_keys(data.get("type"))
            if known is not None:
                found.extend((f"{path}.{k}", _close_match(k, known)) for k in value if k not in known)
                value = {k: v for k, v in value.items() if k in known}
        inner = _model_in(field.annotation)
        if inner is not None:
            shape, inner_model = inner
            if shape == "one":
                value = _strip_unknown(inner_model, value, path, found)
            elif shape == "map" and isinstance(value, dict):
                value = {k: _strip_unknown(inner_model, v, f"{path}.{k}", found) for k, v in value.items()}
            elif shape == "list" and isinstance(value, list):
                value = [_strip_unknown(inner_model, v, f"{path}.{i}", found) for i, v in enumerate(value)]
        cleaned[key] = value
    return cleaned


_WARNED: set[tuple[str, tuple[str, ...]]] = set()


@dataclass(frozen=True)
class CheckedConfig:
    """A config as every reader checks it (`accelctl config check`, one-time mode, acceld): its settings and
    its warnings (keys acceld would ignore), which each reader shows where its user looks."""

    settings: Settings
    warnings: list[str] = field(default_factory=list)

    def service_problems(self) -> list[str]:
        """What acceld refuses to start with, beyond invalid settings (one-time mode does not need these)."""
        problem = webhook_auth_problem(self.settings)
        return [problem] if problem else []


def webhook_auth_problem(settings: Settings) -> str | None:
    """Why acceld must not start: a source host whose webhooks anyone could send (secure by default)."""
    unprotected = settings.unprotected_hosts()
    if not unprotected:
        return None
    hosts = ", ".join(unprotected)
    where = " and ".join(f"provider.source.{host}" for host in unprotected)
    return (
        f"provider.source host(s) {hosts} have no webhook.auth_header: anyone could start conversions. "
        f"Add `webhook: {{auth_header: <the Authorization value the registry sends>}}` under {where}, or "
        "`webhook: {allow_unauthenticated: true}` to accept unauthenticated webhooks from it."
    )


def check_settings(data: dict[str, Any], origin: str = "config", *, strict: bool = False) -> CheckedConfig:
    """Validated settings and their warnings. Unknown keys are warnings (acceld ignores them), errors when
    `strict`; invalid values raise ConfigError with one line per problem."""
    found: list[UnknownKey] = []
    data = _strip_unknown(Settings, data, "", found)
    if found and strict:
        raise _invalid(
            origin,
            [
                f"{path}: unknown key (acceld would ignore it; "
                + (f"did you mean {close}?)" if close else "remove it or fix its spelling)")
                for path, close in found
            ],
        )
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise _invalid(origin, _format_errors(exc)) from None
    named = ", ".join(f"{path} (did you mean {close}?)" if close else path for path, close in found)
    # One warning for all of them: acceld ignores them too, and config check reports them as errors.
    warnings = [f"{origin}: ignoring unknown keys {named}"] if found else []
    return CheckedConfig(settings, warnings)


def load_settings(data: dict[str, Any], origin: str = "config", *, strict: bool = False) -> Settings:
    """Validated settings; their warnings are logged (once per process per file), for readers with a log."""
    checked = check_settings(data, origin, strict=strict)
    _log_warnings(origin, checked.warnings)
    return checked.settings


def _log_warnings(origin: str, warnings: list[str]) -> None:
    if warnings and (origin, tuple(warnings)) not in _WARNED:
        _WARNED.add((origin, tuple(warnings)))  # once per process, not on every load of the same file
        for warning in warnings:
            log.warning("%s (as acceld does; `accelctl config check` reports them as errors)", warning)


def load_file(path: Path | str, *, strict: bool = False) -> Settings:
    checked = check_file(path, strict=strict)
    _log_warnings(str(path), checked.warnings)
    return checked.settings


def check_file(path: Path | str, *, strict: bool = False) -> CheckedConfig:
    """The config file at `path` checked as every reader checks it; warnings returned, not logged."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        hint = " (pass --config FILE or set ACCEL_CONFIG)" if isinstance(exc, FileNotFoundError) else ""
        raise ConfigError(f"cannot read config {path}: {exc.strerror}{hint}") from None
    return check_text(text, path, strict=strict)


def load_text(text: str, path: Path, *, strict: bool = False) -> Settings:
    """Settings from the YAML text of the config file at `path` (relative work dirs resolve against it)."""
    checked = check_text(text, path, strict=strict)
    _log_warnings(str(path), checked.warnings)
    return checked.settings


def check_text(text: str, path: Path, *, strict: bool = False) -> CheckedConfig:
    """The YAML text of the config file at `path` checked (relative work dirs resolve against it)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML: {where}{problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    checked = check_settings(data, str(path), strict=strict)
    settings = checked.settings
    work_dir = settings.provider.work_dir
    if not work_dir.is_absolute():
        # Relative work dirs are relative to the config file, like acceld's.
        work_dir = (path.parent / work_dir).resolve()
        settings = settings.model_copy(
            update={"provider": settings.provider.model_copy(update={"work_dir": work_dir})}
        )
    return CheckedConfig(settings, checked.warnings)
