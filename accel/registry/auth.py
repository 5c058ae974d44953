"""Registry authentication: credentials, `WWW-Authenticate` challenges and bearer tokens.

The flow follows the distribution token spec: a request goes out anonymously (or with what we already know
works for that host); a 401 carries a challenge; Basic challenges get the host's credentials, Bearer
challenges send us to the token server (with credentials if we have them, anonymously otherwise) for a
token covering the scopes the operation needs. Tokens are cached per (realm, service, scopes).

Secrets live only in `Credential.password` and in cached header values; neither appears in any repr,
log line or exception message.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from accel.registry.errors import AuthenticationError, Forbidden, RegistryError, TransientRegistryError
from accel.registry.errors import is_transient_status as _is_transient_status

log = logging.getLogger(__name__)

DOCKER_HUB = "docker.io"
# Names Docker itself uses for Hub in config.json and on the wire.
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
_HUB_SERVER_URL = "https://index.docker.io/v1/"

TOKEN_EXPIRY_MARGIN = 10.0  # seconds: renew a little early so a token never dies mid-request
DEFAULT_TOKEN_LIFETIME = 60.0  # the spec's default when `expires_in` is absent


@dataclass(frozen=True)
class Credential:
    username: str
    password: str = field(repr=False)

    @classmethod
    def from_auth_field(cls, encoded: str) -> Credential:
        """Decode `base64("user:password")`; the password may itself contain ':'."""
        try:
            text = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise ValueError("auth is not base64 of 'user:password'") from None
        username, sep, password = text.partition(":")
        if not sep or not username:
            raise ValueError("auth is not base64 of 'user:password'")
        return cls(username, password)

    def basic_header(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


# --- challenges ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower-cased: "basic", "bearer"
    params: Mapping[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(self.params.get("scope", "").split())


_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a `WWW-Authenticate` value into its challenges (RFC 7235).

    Hand-written: oras-py's `parse_auth_header` drops the scheme (so Basic and Bearer look alike), its
    `[a-zA-z]` class admits punctuation, it skips unquoted values and mis-parses empty ones (`service=""`).
    """
    challenges: list[Challenge] = []
    params: dict[str, str] = {}
    pos, end = 0, len(header)
    while pos < end:
        if header[pos] in " \t,":
            pos += 1
            continue
        match = _TOKEN_RE.match(header, pos)
        if not match:
            pos += 1  # junk; skip it rather than give up on the rest
            continue
        word, pos = match.group(), match.end()
        after = pos
        while after < end and header[after] in " \t":
            after += 1
        if after < end and header[after] == "=" and challenges:
            pos = after + 1
            while pos < end and header[pos] in " \t":
                pos += 1
            value, pos = _parse_param_value(header, pos)
            params[word.lower()] = value
        else:
            params = {}
            challenges.append(Challenge(word.lower(), params))
    return challenges


def _parse_param_value(header: str, pos: int) -> tuple[str, int]:
    if pos < len(header) and header[pos] == '"':
        out: list[str] = []
        pos += 1
        while pos < len(header) and header[pos] != '"':
            if header[pos] == "\\" and pos + 1 < len(header):
                pos += 1
            out.append(header[pos])
            pos += 1
        return "".join(out), pos + 1
    # Unquoted: strictly a token, but servers send bare URLs too; take everything up to a separator.
    stop = pos
    while stop < len(header) and header[stop] not in ", \t":
        stop += 1
    return header[pos:stop], stop


# --- scopes ----------------------------------------------------------------------------------------


def repository_scope(repository: str, *actions: str) -> str:
    return f"repository:{repository}:{','.join(actions)}"


CATALOG_SCOPE = "registry:catalog:*"


def merge_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Union of `type:name:actions` scopes, one entry per resource, sorted so equal sets compare equal."""
    merged: dict[str, set[str]] = {}
    for scope in scopes:
        resource, sep, actions = scope.rpartition(":")
        if not sep or not resource:
            continue
        merged.setdefault(resource, set()).update(a for a in actions.split(",") if a)
    return tuple(sorted(f"{resource}:{','.join(sorted(acts))}" for resource, acts in merged.items()))


# --- credentials from docker config.json -----------------------------------------------------------


def normalize_host(host: str) -> str:
    """`https://index.docker.io/v1/` -> `docker.io`; `http://h:5000/x` -> `h:5000`."""
    text = host.strip().lower()
    for scheme in ("https://", "http://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
    text = text.split("/", 1)[0]
    return DOCKER_HUB if text in _HUB_ALIASES else text


class DockerConfig:
    """Credentials from a docker `config.json`: `auths` entries, `credHelpers` and `credsStore`."""

    def __init__(
        self,
        auths: Mapping[str, Mapping[str, Any]],
        creds_store: str | None = None,
        cred_helpers: Mapping[str, str] | None = None,
    ) -> None:
        self._auths = {normalize_host(key): dict(entry) for key, entry in auths.items()}
        self._creds_store = creds_store
        self._cred_helpers = {normalize_host(k): v for k, v in (cred_helpers or {}).items()}

    def __repr__(self) -> str:
        return f"DockerConfig(hosts={sorted(self._auths)!r})"

    @classmethod
    def load(cls, path: Path | None = None) -> DockerConfig:
        """One explicit file, or the usual discovery ($DOCKER_CONFIG, then ~/.docker/config.json)."""
        # Where the docker CLI looks, one file: $DOCKER_CONFIG/config.json (warned about when missing, as
        # an explicit file is), else ~/.docker/config.json when there is one.
        if path is None and os.environ.get("DOCKER_CONFIG"):
            path = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
        if path is None:
            path = Path.home() / ".docker" / "config.json"
            if not path.exists():
                return cls({})
        try:
            doc = json.loads(Path(path).read_text())
        except FileNotFoundError:
            log.warning("docker config %s does not exist; no credentials loaded from it", path)
            return cls({})
        except (OSError, ValueError) as exc:
            raise RegistryError(f"cannot read docker config {path}: {type(exc).__name__}") from None
        if not isinstance(doc, dict):
            raise RegistryError(f"docker config {path} is not a JSON object")
        return cls(doc.get("auths") or {}, doc.get("credsStore"), doc.get("credHelpers"))

    def lookup(self, host: str) -> Credential | None:
        host = normalize_host(host)
        entry = self._auths.get(host) or {}
        if entry.get("auth"):
            try:
                return Credential.from_auth_field(entry["auth"])
            except ValueError:
                log.warning("docker config entry for %s has a malformed auth field; ignored", host)
        if entry.get("username") and entry.get("password") is not None:
            return Credential(entry["username"], entry["password"])
        helper = self._cred_helpers.get(host) or self._creds_store
        if helper:
            return _from_credential_helper(helper, host)
        return None


def _from_credential_helper(helper: str, host: str) -> Credential | None:
    binary = f"docker-credential-{helper}"
    server = _HUB_SERVER_URL if host == DOCKER_HUB else host
    try:
        proc = subprocess.run(
            [binary, "get"], input=server.encode(), capture_output=True, check=True, timeout=30
        )
        payload = json.loads(proc.stdout)
    except FileNotFoundError:
        log.warning("credential helper %s not found on PATH", binary)
        return None
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError):
        # The helper's output may echo secrets; report only that it failed.
        log.warning("credential helper %s found no usable credentials for %s", binary, host)
        return None
    username, secret = payload.get("Username"), payload.get("Secret")
    if not username or secret is None:
        return None
    if username == "<token>":
        log.warning("credential helper %s returned an identity token for %s; not supported", binary, host)
        return None
    return Credential(username, secret)


# --- the authenticator -----------------------------------------------------------------------------


class Authenticator:
    """Chooses the Authorization header for a request and answers 401 challenges. Thread-safe."""

    def __init__(
        self,
        http: httpx.Client,
        credentials_for: Callable[[str], Credential | None],
        user_agent: str,
    ) -> None:
        self._http = http
        self._credentials_for = credentials_for
        self._user_agent = user_agent
        self._lock = threading.Lock()
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, str, tuple[str, ...]], tuple[str, float]] = {}
        self._credentials: dict[str, Credential | None] = {}

    def __repr__(self) -> str:
        return f"Authenticator(hosts={sorted(self._challenges)!r})"

    def credentials(self, host: str) -> Credential | None:
        with self._lock:
            if host in self._credentials:
                return self._credentials[host]
        found = self._credentials_for(host)  # may run a credential helper: outside the lock
        with self._lock:
            self._credentials[host] = found
        return found

    def authorization(self, host: str, scopes: Iterable[str]) -> str | None:
        """The header to send up front, from what earlier challenges taught us about this host."""
        with self._lock:
            challenge = self._challenges.get(host)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            cred = self.credentials(host)
            return cred.basic_header() if cred else None
        return self._bearer(host, challenge, merge_scopes(scopes), fresh=False)

    def answer(self, host: str, www_authenticate: str | None, scopes: Iterable[str], sent: str | None) -> str:
        """The header to retry a 401 with; raises AuthenticationError when there is nothing new to try."""
        challenges = parse_challenges(www_authenticate or "")
        by_scheme = {c.scheme: c for c in challenges}
        challenge = by_scheme.get("bearer") or by_scheme.get("basic")
        if challenge is None:
            raise AuthenticationError(
                f"registry {host} answered 401 without a usable challenge", status=401, registry=host
            )
        with self._lock:
            self._challenges[host] = challenge
        if challenge.scheme == "basic":
            cred = self.credentials(host)
            if cred is None:
                raise self.rejection(host)
            header = cred.basic_header()
            if header == sent:
                raise self.rejection(host)
            return header
        wanted = merge_scopes([*scopes, *challenge.scopes])
        return self._bearer(host, challenge, wanted, fresh=True)

    def rejection(self, host: str, scopes: Iterable[str] = ()) -> AuthenticationError:
        cred = self.credentials(host)
        needed = f" (needed {', '.join(merge_scopes(scopes))})" if scopes else ""
        if cred is None:
            message = f"registry {host} requires authentication and no credentials are configured for it"
        else:
            message = (
                f"registry {host} rejected the credentials for user {cred.username!r}"
                f" or they lack access{needed}"
            )
        return AuthenticationError(message, status=401, registry=host)

    # -- bearer tokens --

    def _bearer(self, host: str, challenge: Challenge, scopes: tuple[str, ...], *, fresh: bool) -> str:
        realm = challenge.realm
        if not realm:
            raise AuthenticationError(
                f"registry {host} sent a Bearer challenge without a realm", status=401, registry=host
            )
        key = (realm, challenge.service or "", scopes)
        now = time.monotonic()
        with self._lock:
            cached = self._tokens.get(key)
            if cached and not fresh and cached[1] > now:
                return cached[0]
        token, lifetime = self._fetch_token(host, realm, challenge.service, scopes)
        header = f"Bearer {token}"
        with self._lock:
            self._tokens[key] = (header, now + max(lifetime - TOKEN_EXPIRY_MARGIN, 1.0))
        return header

    def _fetch_token(
        self, host: str, realm: str, service: str | None, scopes: tuple[str, ...]
    ) -> tuple[str, float]:
        params: list[tuple[str, str]] = []
        if service:
            params.append(("service", service))
        params.extend(("scope", s) for s in scopes)
        headers = {"User-Agent": self._user_agent, "Accept": "application/json"}
        cred = self.credentials(host)
        if cred is not None:
            headers["Authorization"] = cred.basic_header()
        realm_host = httpx.URL(realm).host
        try:
            response = self._http.get(realm, params=params, headers=headers, follow_redirects=True)
        except httpx.TransportError as exc:
            raise TransientRegistryError(
                f"token server {realm_host} for {host} unreachable: {type(exc).__name__}", registry=host
            ) from None
        status = response.status_code
        if status in (401, 403) and cred is not None:
            raise AuthenticationError(
                f"token server {realm_host} for registry {host} rejected the credentials for user "
                f"{cred.username!r}",
                status=status,
                registry=host,
            )
        if status in (401, 403):
            raise Forbidden(
                f"token server {realm_host} for registry {host} refused an anonymous token",
                status=status,
                registry=host,
            )
        if _is_transient_status(status):
            raise TransientRegistryError(
                f"token server {realm_host} for {host} answered {status}", status=status, registry=host
            )
        if status != 200:
            raise RegistryError(
                f"token server {realm_host} for {host} answered {status}", status=status, registry=host
            )
        try:
            doc = response.json()
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token, doc = None, {}
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token server {realm_host} for {host} sent no token", registry=host)
        lifetime = doc.get("expires_in")
        lifetime = float(lifetime) if isinstance(lifetime, int | float) and lifetime > 0 else 0.0
        return token, max(lifetime, DEFAULT_TOKEN_LIFETIME)
