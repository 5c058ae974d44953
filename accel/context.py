"""Per-process runtime objects built from settings: content store, registry client, drivers.

Prefect runs tasks as threads in one process; they share one registry client (one connection pool, one
token cache) and one content store per config, so nothing secret ever travels as a task parameter.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from pathlib import Path

from accel.config import Settings, load_text
from accel.drivers import Driver, load_driver
from accel.drivers.dependencies import DependencyResolver
from accel.errors import ConfigError
from accel.overrides import current_overrides
from accel.registry import HostConfig, RegistryClient
from accel.store import ContentStore


class Context:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = ContentStore(settings.provider.work_dir / "content")
        self._client: RegistryClient | None = None
        # The client's connections close once the context is gone: replaced by an edited config's, and no
        # longer held by a task still running with it.
        self._opened: list[RegistryClient] = []
        weakref.finalize(self, _close_all, self._opened)
        self._drivers: dict[str, Driver] = {}
        self._lock = threading.Lock()
        platforms = settings.converter.platform_filter()
        # Images drivers depend on (a Nydus `chunk_dict_ref`), resolved here: drivers never see the registry.
        self.dependencies = DependencyResolver(
            lambda: self.client, self.store, platforms[0] if platforms else None
        )

    @property
    def client(self) -> RegistryClient:
        with self._lock:
            if self._client is None:
                hosts = {
                    name: HostConfig(
                        auth=h.auth.get_secret_value() if h.auth else None,
                        insecure=h.insecure,
                        plain_http=h.plain_http,
                    )
                    for name, h in self.settings.provider.source.items()
                }
                self._client = RegistryClient(hosts=hosts, docker_config=self.settings.provider.docker_config)
                self._opened.append(self._client)
            return self._client

    def driver(self, driver_type: str) -> Driver:
        with self._lock:
            if driver_type not in self._drivers:
                settings = self.settings.converter.find_driver(driver_type)
                self._drivers[driver_type] = load_driver(driver_type, settings.driver_config())
            driver = self._drivers[driver_type]
        # Outside the lock: resolving a dependency talks to the registry (through `self.client`).
        return self.dependencies.bind(driver)


def _close_all(clients: list[RegistryClient]) -> None:
    for client in clients:
        client.close()


# Resolved config path → (its content's digest, the context built from that content): one per file, so an
# edited config replaces its context instead of adding one.
_contexts: dict[str, tuple[str, Context]] = {}
_contexts_lock = threading.Lock()


def context_for(config_path: str | Path) -> Context:
    """One Context per config file content: every task of a run shares the one its flow built, and an
    edited config (whatever its mtime says) takes effect on the next run.

    Under a request's overrides (`accel.overrides.overriding`: accelctl's credentials, TLS and platform
    flags), the context is built from the settings with them applied, and kept beside the config's own: one
    per config file, replaced by the next request's (its credentials are not kept longer)."""
    path = Path(config_path).resolve()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    digest = hashlib.sha256(text.encode()).hexdigest()
    overrides = current_overrides.get()
    slot = str(path) if not overrides else f"{path}\0overrides"
    if overrides:
        digest = f"{digest} {overrides.key()}"
    with _contexts_lock:
        known = _contexts.get(slot)
        if known is not None and known[0] == digest:
            return known[1]
        settings = load_text(text, path)
        ctx = Context(overrides.apply(settings) if overrides else settings)
        _contexts[slot] = (digest, ctx)
        return ctx
