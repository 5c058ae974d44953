"""What one request changes of its config without writing it anywhere: credentials and TLS verification per
registry host, and the platform (accelctl's skopeo-like `--src-creds`, `--dest-tls-verify`,
`--override-arch`, …).

Credentials must not travel as flow-run parameters (Prefect stores and shows those), nor in the arguments of
a process: the caller makes the overrides current (`overriding`, a context variable that Prefect copies into
every task-run thread), and `accel.context.context_for` builds that run's context from the config's
settings with the overrides applied. The auth value is kept out of every repr.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from accel.config import Settings, SourceHost
from accel.errors import ConfigError
from accel.oci import Platform
from accel.registry import HostConfig
from accel.registry.auth import normalize_host


@dataclass(frozen=True)
class HostAccess:
    """One registry host's credentials (`auth`: base64 of "user:password") and TLS verification (None:
    as the config says)."""

    auth: str | None = field(default=None, repr=False)
    tls_verify: bool | None = None

    def __repr__(self) -> str:
        return f"HostAccess(auth={'<redacted>' if self.auth else None}, tls_verify={self.tls_verify})"

    @classmethod
    def of_credentials(cls, credentials: str | None, tls_verify: bool | None = None) -> HostAccess:
        """From skopeo's `USER:PASSWORD` (the password may contain ':')."""
        if credentials is None:
            return cls(None, tls_verify)
        user, colon, _ = credentials.partition(":")
        if not user or not colon:
            raise ConfigError("credentials must be USER:PASSWORD")
        return cls(base64.b64encode(credentials.encode()).decode(), tls_verify)

    def to_json(self) -> dict[str, Any]:
        return {"auth": self.auth, "tls_verify": self.tls_verify}


@dataclass(frozen=True)
class Overrides:
    hosts: Mapping[str, HostAccess] = field(default_factory=dict)
    platform: str | None = None  # os/arch[/variant]: this platform only

    def __post_init__(self) -> None:
        if self.platform is not None:
            try:
                Platform.parse(self.platform)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None

    def __bool__(self) -> bool:
        return bool(self.hosts) or self.platform is not None

    def key(self) -> str:
        """A digest of everything here (credentials included, never shown): contexts built with equal
        overrides are one."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"hosts": {h: a.to_json() for h, a in self.hosts.items()}, "platform": self.platform}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Overrides:
        data = data or {}
        hosts = {
            str(host): HostAccess(auth=value.get("auth"), tls_verify=value.get("tls_verify"))
            for host, value in (data.get("hosts") or {}).items()
        }
        return cls(hosts=hosts, platform=data.get("platform"))

    def apply(self, settings: Settings) -> Settings:
        """`settings` with these hosts' credentials and TLS verification, and only this platform."""
        if not self:
            return settings
        sources = dict(settings.provider.source)
        for host, access in self.hosts.items():
            known = next((h for h in sources if normalize_host(h) == normalize_host(host)), host)
            current = sources.get(known) or SourceHost()
            update: dict[str, Any] = {}
            if access.auth is not None:
                update["auth"] = SecretStr(access.auth)
            if access.tls_verify is not None:
                update["insecure"] = not access.tls_verify
            sources[known] = current.model_copy(update=update)
        provider = settings.provider.model_copy(update={"source": sources})
        converter = settings.converter
        if self.platform is not None:
            converter = converter.model_copy(update={"platforms": self.platform})
        return settings.model_copy(update={"provider": provider, "converter": converter})

    def host_configs(self) -> dict[str, HostConfig]:
        """These hosts as a registry client's (for a caller without a config)."""
        return {
            host: HostConfig(auth=access.auth, insecure=access.tls_verify is False)
            for host, access in self.hosts.items()
        }

    def platforms(self) -> list[Platform]:
        return [Platform.parse(self.platform)] if self.platform else []


current_overrides: contextvars.ContextVar[Overrides | None] = contextvars.ContextVar(
    "accel_overrides", default=None
)


@contextlib.contextmanager
def overriding(overrides: Overrides | None) -> Iterator[None]:
    """Contexts built in this block (and in threads started with a copy of its context) use `overrides`."""
    reset = current_overrides.set(overrides or None)
    try:
        yield
    finally:
        current_overrides.reset(reset)
