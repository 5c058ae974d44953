"""The one module that speaks the OCI distribution API.

Verbs in the spirit of oras-go: resolve, fetch, exists, mount, push, list. Everything streams: blobs go
straight from the socket into the content store (hashed on the way) and from store files onto the socket.
Transient failures (5xx, 429, dropped connections, timeouts) are retried here with exponential backoff;
everything else becomes a precise exception from `accel.registry.errors` or `accel.errors.DigestMismatch`.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

from accel import __version__, cancel, oci, progress
from accel import constants as mt
from accel import digest as dg
from accel.errors import DigestMismatch
from accel.oci import Descriptor
from accel.reference import Reference
from accel.registry.auth import (
    CATALOG_SCOPE,
    DOCKER_HUB,
    Authenticator,
    Credential,
    DockerConfig,
    normalize_host,
    repository_scope,
)
from accel.registry.errors import (
    INPUT_ERROR_CODES,
    AuthenticationError,
    BlobSizeMismatch,
    Forbidden,
    NotFound,
    RegistryError,
    RegistryUnreachable,
    TransientRegistryError,
    is_transient_status,
)
from accel.store import ContentStore

log = logging.getLogger(__name__)

T = TypeVar("T")

MANIFEST_ACCEPT = ", ".join((mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST))
MAX_MANIFEST_BYTES = 4 << 20  # distribution's own limit for manifests
DEFAULT_CHUNKED_THRESHOLD = 64 << 20
DEFAULT_CHUNK_SIZE = 16 << 20
READ_SIZE = 1 << 20
MAX_RETRY_AFTER = 30.0
MAX_BACKOFF = 8.0  # seconds between two attempts, whatever the attempt number
# Attempts after the first for a transient failure: 0.5 + 1 + 2 + 4 + 8 s of backoff before giving up,
# about as long as the task retries this replaced, with every request retried on its own.
DEFAULT_RETRIES = 5
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=15.0)
MAX_KEPT_UPLOAD_SESSIONS = 32  # upload sessions of failed mounts kept for the upload that follows
_HUB_API_HOST = "registry-1.docker.io"

Body = bytes | Callable[[], Iterable[bytes]] | None


@dataclass(frozen=True)
class HostConfig:
    """How to reach one registry host.

    `auth` is base64 of "user:password" (the password may contain ':'). `plain_http=None` means plain HTTP
    only for loopback hosts; anything else needs an explicit `plain_http=True` (no silent downgrade), or
    `insecure=True`: TLS first (without verification), and plain HTTP when the host answers the TLS
    handshake in plain HTTP, as acceld does (its `insecure` hosts fall back to HTTP).
    """

    auth: str | None = field(default=None, repr=False)
    insecure: bool = False
    plain_http: bool | None = None

    def __repr__(self) -> str:
        auth = "<redacted>" if self.auth else None
        return f"HostConfig(auth={auth}, insecure={self.insecure}, plain_http={self.plain_http})"

    def credential(self) -> Credential | None:
        return Credential.from_auth_field(self.auth) if self.auth else None


def is_loopback_host(host: str) -> bool:
    """`localhost`, `*.localhost`, 127.0.0.0/8 and ::1, with or without a port."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name[1:]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def uses_plain_http(host: str, config: HostConfig | None) -> bool:
    """Whether the first request to `host` goes over plain HTTP (an `insecure` host may switch later)."""
    if config is not None and config.plain_http is not None:
        return config.plain_http
    if config is not None and config.insecure:
        return False  # TLS first, as acceld: plain HTTP only once the host answers TLS in plain HTTP
    return is_loopback_host(host)


def _tls_handshake_failed(exc: httpx.ConnectError) -> bool:
    """A TLS handshake that failed for another reason than the certificate (a plain-HTTP server answers a
    ClientHello with an HTTP response: OpenSSL reports WRONG_VERSION_NUMBER or a record layer failure)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return False
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _refused(exc: httpx.ConnectError) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _media_type_of(response: httpx.Response) -> str:
    return response.headers.get("Content-Type", "").split(";", 1)[0].strip()


def _content_digest(algorithm_of: str, data: bytes) -> str:
    """Hash `data` with the algorithm named by the digest it will be compared with (sha256 nearly always)."""
    algorithm = algorithm_of.split(":", 1)[0]
    if algorithm == "sha256" or algorithm not in hashlib.algorithms_guaranteed:
        return dg.of_bytes(data)
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _file_digest(path: Path) -> str:
    digester = dg.Digester()
    with path.open("rb") as f:
        while chunk := f.read(READ_SIZE):
            digester.update(chunk)
    return digester.digest()


def _shut_socket(resp: httpx.Response) -> None:
    """Wake a read blocked on `resp`'s connection (closing a socket would not: shutting it down does)."""
    stream = resp.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        sock.shutdown(socket.SHUT_RDWR)


class _TooLarge(RegistryError):
    """A complete answer longer than the caller allows (permanent)."""


def _connect_failure(exc: httpx.ConnectError) -> str:
    """One line naming why a connection failed: TLS verification, DNS, refused, or httpx's own text."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed ({seen.verify_message or seen.reason})"
        if isinstance(seen, ssl.SSLError):
            return f"TLS handshake failed ({seen.reason or seen})"
        if isinstance(seen, socket.gaierror):
            return f"host name does not resolve ({seen.strerror})"
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        seen = seen.__cause__ or seen.__context__
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return f"TLS certificate verification failed ({text})"
    return text


_TLS_CONTEXTS: dict[tuple[str | None, str | None], ssl.SSLContext] = {}
_TLS_CONTEXTS_LOCK = threading.Lock()


def _verifying_tls_context() -> ssl.SSLContext:
    """httpx's default verifying TLS context, built once per process (and CA locations from the environment):
    loading the CA bundle costs ~45 ms of CPU, which every new client (one per config file) paid again."""
    key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    with _TLS_CONTEXTS_LOCK:
        if key not in _TLS_CONTEXTS:
            _TLS_CONTEXTS[key] = httpx.create_ssl_context()
        return _TLS_CONTEXTS[key]


class RegistryClient:
    """A synchronous, thread-safe distribution client with one connection pool."""

    def __init__(
        self,
        hosts: Mapping[str, HostConfig] | None = None,
        docker_config: Path | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        user_agent: str = f"accel/{__version__}",
        *,
        backoff: float = 0.5,
        chunked_threshold: int = DEFAULT_CHUNKED_THRESHOLD,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        page_size: int | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if retries < 0 or chunk_size <= 0 or chunked_threshold < 0:
            raise ValueError("retries, chunk_size and chunked_threshold must not be negative")
        self._hosts = {normalize_host(name): cfg for name, cfg in (hosts or {}).items()}
        self._docker_config_path = docker_config
        self._docker_config: DockerConfig | None = None
        self._docker_config_lock = threading.Lock()
        self._retries = retries
        self._backoff = backoff
        self._chunked_threshold = chunked_threshold
        self._chunk_size = chunk_size
        self._page_size = page_size
        self._user_agent = user_agent
        # `insecure` hosts that answered a TLS handshake in plain HTTP: spoken to over http:// from then on.
        self._plain_http_learned: set[str] = set()
        # Upload sessions that failed mounts opened (the OCI spec lets a client upload into them), by
        # (registry, repository, digest): the push of that blob that follows uses one instead of cancelling
        # it and opening another (two requests fewer per uploaded blob). Few: the oldest are cancelled.
        self._mount_sessions: dict[tuple[str, str, str], str] = {}
        self._mount_sessions_lock = threading.Lock()
        # One pool; hosts that skip TLS verification get their own transport mounted by URL (not under a
        # test's transport, which answers every request itself).
        mounts = {
            f"https://{self._api_host(name)}": httpx.HTTPTransport(verify=False)
            for name, cfg in self._hosts.items()
            if cfg.insecure and transport is None
        }
        self._http = httpx.Client(
            timeout=timeout,
            headers={"User-Agent": user_agent},
            follow_redirects=False,
            verify=_verifying_tls_context() if transport is None else True,
            mounts=mounts or None,
            transport=transport,  # a seam for tests (httpx.MockTransport); None = real network
        )
        self._auth = Authenticator(self._http, self._credentials_for, user_agent)

    def __repr__(self) -> str:
        return f"RegistryClient(hosts={sorted(self._hosts)!r}, retries={self._retries})"

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._mount_sessions_lock:
            kept = list(self._mount_sessions.items())
            self._mount_sessions.clear()
        for (registry, repository, _digest), location in kept:
            try:  # best effort, and never in the way of closing (a cancelled run closes its client too)
                self._cancel_upload(Reference(registry=registry, repository=repository), location)
            except Exception as exc:
                log.debug("could not cancel upload session on %s: %s", registry, exc)
        self._http.close()

    # --- public verbs ------------------------------------------------------------------------------

    def resolve(self, ref: Reference) -> Descriptor:
        """The manifest descriptor `ref` points at: HEAD first, GET when HEAD tells too little."""
        what = f"resolve {ref}"

        def once() -> Descriptor | None:
            resp = self._send(
                "HEAD",
                ref.registry,
                self._manifest_url(ref),
                what=what,
                scopes=[repository_scope(ref.repository, "pull")],
                headers={"Accept": MANIFEST_ACCEPT},
                retry=False,
            )
            with contextlib.closing(resp):
                if resp.status_code == 405:  # some registries refuse HEAD on manifests
                    return None
                self._expect(resp, (200,), what, ref.registry)
                digest = resp.headers.get("Docker-Content-Digest")
                media_type = _media_type_of(resp)
                size = resp.headers.get("Content-Length")
                if not digest or media_type not in mt.ALL_MANIFEST_TYPES or not (size or "").isdigit():
                    return None
                if ref.digest and digest != ref.digest:
                    raise DigestMismatch(ref.digest, digest, f"manifest {ref} (registry's digest)")
                return Descriptor(media_type=media_type, digest=digest, size=int(size or 0))

        found = self._with_retries(once, what)
        if found is not None:
            return found
        desc, _ = self.fetch_manifest(ref)
        return desc

    def fetch_manifest(self, ref: Reference) -> tuple[Descriptor, bytes]:
        """The manifest bytes, verified against `ref.digest` or else the registry's Docker-Content-Digest."""
        what = f"fetch manifest {ref}"

        def once() -> tuple[Descriptor, bytes]:
            resp = self._send(
                "GET",
                ref.registry,
                self._manifest_url(ref),
                what=what,
                stream=True,
                scopes=[repository_scope(ref.repository, "pull")],
                headers={"Accept": MANIFEST_ACCEPT},
                retry=False,
            )
            with contextlib.closing(resp):
                self._expect(resp, (200,), what, ref.registry)
                raw = self._read_limited(resp, MAX_MANIFEST_BYTES, what, ref.registry)
                header_digest = resp.headers.get("Docker-Content-Digest")
                content_type = _media_type_of(resp)
            for expected in (ref.digest, header_digest):
                if expected:
                    actual = _content_digest(expected, raw)
                    if actual != expected:
                        raise DigestMismatch(expected, actual, f"manifest {ref}")
            media_type = oci.detect_media_type(raw, content_type or None)
            return Descriptor.of(media_type, raw), raw

        return self._with_retries(once, what)

    def fetch_blob(self, repo_ref: Reference, desc: Descriptor, store: ContentStore) -> Path:
        """Stream a blob into the store (verified, atomic); a blob already stored is not fetched again."""
        if store.exists(desc.digest):
            store.touch(desc.digest)  # reused: keep it from garbage collection longest
            return store.path(desc.digest)
        what = f"fetch blob {dg.short(desc.digest)} from {repo_ref.name}"
        meter = progress.current()  # bytes pulled, for a caller watching (accel/progress.py)
        counted = meter.value if meter is not None else 0

        def once() -> Path:
            try:
                with (
                    contextlib.closing(self._get_blob(repo_ref, desc.digest, what)) as resp,
                    store.writer(expected=desc.digest) as writer,
                ):
                    for chunk in self._stream(resp, what, repo_ref.registry):
                        if writer.size + len(chunk) > desc.size:
                            raise self._size_error(what, repo_ref.registry, f"more than {desc.size}")
                        writer.write(chunk)
                        if meter is not None:
                            meter.set(counted + writer.size)  # a retry starts over
                    if writer.size != desc.size:
                        raise self._size_error(what, repo_ref.registry, str(writer.size), desc.size)
            except DigestMismatch as exc:  # the store's check: say which registry and repository served it
                raise DigestMismatch(exc.expected, exc.actual, what) from None
            return store.path(desc.digest)

        return self._with_retries(once, what)

    def fetch_blob_bytes(self, repo_ref: Reference, desc: Descriptor) -> bytes:
        """A small blob (an image config) in memory, verified."""
        what = f"fetch blob {dg.short(desc.digest)} from {repo_ref.name}"

        def once() -> bytes:
            with contextlib.closing(self._get_blob(repo_ref, desc.digest, what)) as resp:
                try:
                    data = self._read_limited(resp, desc.size, what, repo_ref.registry)
                except _TooLarge:
                    raise self._size_error(what, repo_ref.registry, f"more than {desc.size}") from None
                # A body cut short raises TransientRegistryError from the read: retried, never a mismatch.
            if len(data) != desc.size:
                raise self._size_error(what, repo_ref.registry, str(len(data)), desc.size)
            return dg.verify(desc.digest, data, what)

        return self._with_retries(once, what)

    def blob_exists(self, repo_ref: Reference, digest: str) -> bool:
        what = f"check blob {dg.short(digest)} in {repo_ref.name}"
        resp = self._send(
            "HEAD",
            repo_ref.registry,
            self._blob_url(repo_ref, digest),
            what=what,
            scopes=[repository_scope(repo_ref.repository, "pull")],
        )
        with contextlib.closing(resp):
            if resp.status_code == 404:
                return False
            self._expect(resp, (200,), what, repo_ref.registry)
            return True

    def mount_blob(self, repo_ref: Reference, digest: str, from_repository: str) -> bool:
        """Ask the registry to link a blob from another repository; True if it did (201)."""
        what = f"mount blob {dg.short(digest)} from {from_repository} into {repo_ref.name}"
        resp = self._send(
            "POST",
            repo_ref.registry,
            self._uploads_url(repo_ref),
            what=what,
            params={"mount": digest, "from": from_repository},
            scopes=[
                repository_scope(repo_ref.repository, "pull", "push"),
                repository_scope(from_repository, "pull"),
            ],
        )
        with contextlib.closing(resp):
            if resp.status_code == 201:
                return True
            self._expect(resp, (202,), what, repo_ref.registry)
            # 202: the registry could not mount and opened an upload session instead: kept for the upload
            # that usually follows, never leaked (replaced, too many or at close: cancelled).
            location = resp.headers.get("Location")
        if location:
            self._keep_session(repo_ref, digest, self._absolute(resp, location))
        return False

    def _keep_session(self, repo_ref: Reference, digest: str, location: str) -> None:
        key = (repo_ref.registry, repo_ref.repository, digest)
        stale: list[tuple[tuple[str, str, str], str]] = []
        with self._mount_sessions_lock:
            if (replaced := self._mount_sessions.pop(key, None)) is not None:
                stale.append((key, replaced))
            self._mount_sessions[key] = location
            while len(self._mount_sessions) > MAX_KEPT_UPLOAD_SESSIONS:
                oldest = next(iter(self._mount_sessions))
                stale.append((oldest, self._mount_sessions.pop(oldest)))
        for (registry, repository, _digest), old in stale:
            self._cancel_upload(Reference(registry=registry, repository=repository), old)

    def _take_session(self, repo_ref: Reference, digest: str) -> str | None:
        with self._mount_sessions_lock:
            return self._mount_sessions.pop((repo_ref.registry, repo_ref.repository, digest), None)

    def push_blob(self, repo_ref: Reference, desc: Descriptor, store: ContentStore) -> None:
        """Upload the stored blob (monolithic, or in chunks when large); `accel.copy.copy_blob` checks
        whether it exists or can be mounted first."""
        path = store.path(desc.digest)
        size = path.stat().st_size
        what = f"push blob {dg.short(desc.digest)} to {repo_ref.name}"
        if size != desc.size:
            raise self._size_error(what, repo_ref.registry, f"{size} (stored)", desc.size)
        upload = self._upload_monolithic if size <= self._chunked_threshold else self._upload_chunked
        kept = self._take_session(repo_ref, desc.digest)
        if kept is not None:
            try:
                upload(repo_ref, desc, path, what, kept)
                return
            except RegistryError as exc:  # e.g. the session expired: a fresh one, with the usual retries
                log.debug("%s: the failed mount's upload session did not take it (%s)", what, exc)
        self._with_retries(lambda: upload(repo_ref, desc, path, what), what)

    def push_manifest(self, ref: Reference, raw: bytes, media_type: str) -> Descriptor:
        """PUT the exact bytes under `ref.identifier` (tag or digest) with the exact Content-Type."""
        digest = dg.of_bytes(raw)
        if ref.digest and ref.digest != digest:
            raise DigestMismatch(ref.digest, digest, f"manifest to push to {ref}")
        what = f"push manifest {ref}"
        resp = self._send(
            "PUT",
            ref.registry,
            self._manifest_url(ref),
            what=what,
            body=raw,
            headers={"Content-Type": media_type},
            scopes=[repository_scope(ref.repository, "pull", "push")],
        )
        with contextlib.closing(resp):
            self._expect(resp, (201,), what, ref.registry)
            stored = resp.headers.get("Docker-Content-Digest")
        if stored and stored != digest:
            raise DigestMismatch(digest, stored, f"manifest {ref} as stored by the registry")
        return Descriptor(media_type=media_type, digest=digest, size=len(raw))

    def referrers(self, repo_ref: Reference, digest: str) -> list[Descriptor] | None:
        """The OCI referrers of `digest`, or None when the registry has no referrers API (404)."""
        what = f"list referrers of {repo_ref.name}@{digest}"
        url = f"{self._base_url(repo_ref.registry)}/v2/{repo_ref.repository}/referrers/{digest}"

        def once() -> list[Descriptor] | None:
            resp = self._send(
                "GET",
                repo_ref.registry,
                url,
                what=what,
                stream=True,
                scopes=[repository_scope(repo_ref.repository, "pull")],
                headers={"Accept": mt.OCI_INDEX},
                retry=False,
            )
            with contextlib.closing(resp):
                if resp.status_code == 404:
                    return None
                self._expect(resp, (200,), what, repo_ref.registry)
                raw = self._read_limited(resp, MAX_MANIFEST_BYTES, what, repo_ref.registry)
            return oci.Index.parse(raw, mt.OCI_INDEX).manifests

        return self._with_retries(once, what)

    def list_tags(self, repo_ref: Reference) -> list[str]:
        url = f"{self._base_url(repo_ref.registry)}/v2/{repo_ref.repository}/tags/list"
        scopes = [repository_scope(repo_ref.repository, "pull")]
        return self._paginate(repo_ref.registry, url, "tags", scopes, f"list tags of {repo_ref.name}")

    def catalog(self, registry: str) -> list[str]:
        url = f"{self._base_url(registry)}/v2/_catalog"
        return self._paginate(registry, url, "repositories", [CATALOG_SCOPE], f"catalog of {registry}")

    # --- uploads -----------------------------------------------------------------------------------

    def _start_upload(self, repo_ref: Reference, what: str) -> str:
        resp = self._send(
            "POST",
            repo_ref.registry,
            self._uploads_url(repo_ref),
            what=what,
            retry=False,
            scopes=[repository_scope(repo_ref.repository, "pull", "push")],
        )
        with contextlib.closing(resp):
            self._expect(resp, (202,), what, repo_ref.registry)
            location = resp.headers.get("Location")
            if not location:
                raise RegistryError(f"{what}: registry gave no upload Location", registry=repo_ref.registry)
            return self._absolute(resp, location)

    def _upload_monolithic(
        self, repo_ref: Reference, desc: Descriptor, path: Path, what: str, location: str | None = None
    ) -> None:
        location = location or self._start_upload(repo_ref, what)
        sent = 0  # bytes sent (not hashed here: the registry checks the digest, see `_finish_upload`)

        meter = progress.current()  # bytes pushed, for a caller watching (accel/progress.py)
        counted = meter.value if meter is not None else 0  # one meter may count several blobs (a push)

        def body() -> Iterator[bytes]:
            nonlocal sent
            sent = 0  # a re-send after a 401 starts over
            with path.open("rb") as f:
                while chunk := f.read(READ_SIZE):
                    cancel.check()
                    sent += len(chunk)
                    yield chunk
                    if meter is not None:
                        meter.set(counted + sent)

        resp = self._send(
            "PUT",
            repo_ref.registry,
            location,
            what=what,
            body=body,
            retry=False,
            params={"digest": desc.digest},
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(desc.size)},
            scopes=[repository_scope(repo_ref.repository, "pull", "push")],
        )
        with contextlib.closing(resp):
            self._finish_upload(resp, desc, path, sent, what, repo_ref.registry)

    def _upload_chunked(
        self, repo_ref: Reference, desc: Descriptor, path: Path, what: str, location: str | None = None
    ) -> None:
        location = location or self._start_upload(repo_ref, what)
        sent = 0  # bytes of the blob sent so far (a re-send after a 401 sends a piece again)
        scopes = [repository_scope(repo_ref.repository, "pull", "push")]
        size = path.stat().st_size
        meter = progress.current()  # bytes pushed, for a caller watching (accel/progress.py)
        counted = meter.value if meter is not None else 0  # one meter may count several blobs (a push)
        with path.open("rb") as f:

            def piece(start: int, length: int) -> Callable[[], Iterator[bytes]]:
                # Streamed in READ_SIZE reads: a chunk is never whole in memory (nor copied while sent).
                def body() -> Iterator[bytes]:
                    nonlocal sent
                    f.seek(start)
                    position, left = start, length
                    while left > 0 and (data := f.read(min(READ_SIZE, left))):
                        cancel.check()
                        position += len(data)
                        sent = max(sent, position)
                        left -= len(data)
                        yield data
                        if meter is not None:
                            meter.set(counted + position)

                return body

            for start in range(0, size, self._chunk_size):
                length = min(self._chunk_size, size - start)
                resp = self._send(
                    "PATCH",
                    repo_ref.registry,
                    location,
                    what=what,
                    body=piece(start, length),
                    retry=False,
                    scopes=scopes,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(length),
                        "Content-Range": f"{start}-{start + length - 1}",
                    },
                )
                with contextlib.closing(resp):
                    self._expect(resp, (202,), what, repo_ref.registry)
                    location = self._absolute(resp, resp.headers.get("Location") or location)
        resp = self._send(
            "PUT",
            repo_ref.registry,
            location,
            what=what,
            body=b"",
            retry=False,
            scopes=scopes,
            params={"digest": desc.digest},
            headers={"Content-Type": "application/octet-stream"},
        )
        with contextlib.closing(resp):
            try:
                self._finish_upload(resp, desc, path, sent, what, repo_ref.registry)
            except DigestMismatch:
                self._cancel_upload(repo_ref, location)  # refused: nothing of it is kept
                raise

    def _finish_upload(
        self, resp: httpx.Response, desc: Descriptor, path: Path, sent: int, what: str, registry: str
    ) -> None:
        """The upload's last answer judged. The bytes sent are not hashed on the way: the registry hashes
        what it received and refuses a blob whose digest is not the one named (the distribution spec's
        DIGEST_INVALID; every registry does, the in-memory one included), so a store file that changed
        since it was written is never committed (tests/integration/test_registry_client.py), and hashing
        it here as well cost a second sha256 of every uploaded byte. Only a refusal hashes the file, to
        say what was sent."""
        if resp.status_code == 400:
            code, _ = self._error_detail(resp)
            if code in ("DIGEST_INVALID", "SIZE_INVALID"):
                actual = _file_digest(path) if sent == desc.size else f"{sent} bytes sent"
                raise DigestMismatch(desc.digest, actual, f"{what} (rejected by the registry: {code})")
        self._expect(resp, (201,), what, registry)
        stored = resp.headers.get("Docker-Content-Digest")
        if stored and stored != desc.digest:
            raise DigestMismatch(desc.digest, stored, f"{what} (registry's digest)")

    def _cancel_upload(self, repo_ref: Reference, location: str) -> None:
        """Best effort: an abandoned session would otherwise linger until the registry's purge."""
        try:
            resp = self._send(
                "DELETE",
                repo_ref.registry,
                location,
                what="cancel upload",
                retry=False,
                scopes=[repository_scope(repo_ref.repository, "pull", "push")],
            )
            resp.close()
        except RegistryError as exc:
            log.debug("could not cancel upload session on %s: %s", repo_ref.registry, exc)

    # --- listing -----------------------------------------------------------------------------------

    def _paginate(self, registry: str, url: str, key: str, scopes: list[str], what: str) -> list[str]:
        items: list[str] = []
        params = {"n": str(self._page_size)} if self._page_size else None
        seen: set[str] = set()
        next_url: str | None = url
        while next_url and next_url not in seen:
            seen.add(next_url)
            resp = self._send("GET", registry, next_url, what=what, scopes=scopes, params=params)
            with contextlib.closing(resp):
                self._expect(resp, (200,), what, registry)
                try:
                    page = resp.json().get(key) or []
                except (ValueError, AttributeError):
                    raise RegistryError(f"{what}: response is not a JSON object", registry=registry) from None
                items.extend(page)
                link = resp.links.get("next", {}).get("url")
                next_url = self._absolute(resp, link) if link else None
            params = None  # the Link URL carries its own query
        return items

    # --- transport ---------------------------------------------------------------------------------

    def _get_blob(self, repo_ref: Reference, digest: str, what: str) -> httpx.Response:
        """A streaming GET of a blob, already checked for 200; the caller closes it."""
        resp = self._send(
            "GET",
            repo_ref.registry,
            self._blob_url(repo_ref, digest),
            what=what,
            stream=True,
            scopes=[repository_scope(repo_ref.repository, "pull")],
            retry=False,
        )
        try:
            self._expect(resp, (200,), what, repo_ref.registry)
        except BaseException:
            resp.close()
            raise
        return resp

    def _with_retries(self, attempt: Callable[[], T], what: str) -> T:
        for number in range(self._retries + 1):
            cancel.check()
            try:
                return attempt()
            except TransientRegistryError as exc:
                cancel.check()  # the failure may be the cancellation's own (a shut socket): no retry
                if number >= self._retries:
                    raise
                delay = min(self._backoff * (2**number), MAX_BACKOFF)
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, MAX_RETRY_AFTER))
                log.info("%s: %s; retry %d/%d in %.1fs", what, exc, number + 1, self._retries, delay)
                cancel.sleep(delay)
        raise AssertionError("unreachable")

    def _send(
        self,
        method: str,
        registry: str,
        url: str,
        *,
        what: str,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        body: Body = None,
        stream: bool = False,
        retry: bool = True,
    ) -> httpx.Response:
        """Send with authentication; returns any non-401, non-transient response for the caller to judge."""

        def once() -> httpx.Response:
            host = normalize_host(registry)
            sent = self._auth.authorization(host, scopes)
            resp = self._transmit(method, url, headers, params, body, sent, stream, what, registry)
            if resp.status_code == 401:
                challenge = resp.headers.get("WWW-Authenticate")
                resp.close()
                answer = self._auth.answer(host, challenge, scopes, sent)
                resp = self._transmit(method, url, headers, params, body, answer, stream, what, registry)
                if resp.status_code == 401:
                    resp.close()
                    raise self._auth.rejection(host, scopes)
            if is_transient_status(resp.status_code):
                code, _ = self._error_detail(resp)
                if code in INPUT_ERROR_CODES:  # a 5xx about our own malformed request: no retry
                    message = self._message(resp, what, registry)
                    resp.close()
                    raise RegistryError(message, status=resp.status_code, registry=registry, code=code)
            if is_transient_status(resp.status_code):
                error = TransientRegistryError(
                    self._message(resp, what, registry), status=resp.status_code, registry=registry
                )
                error.retry_after = self._retry_after(resp)
                resp.close()
                raise error
            return resp

        return self._with_retries(once, what) if retry else once()

    def _transmit(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        body: Body,
        authorization: str | None,
        stream: bool,
        what: str,
        registry: str,
    ) -> httpx.Response:
        request_headers = dict(headers or {})
        if authorization:
            request_headers["Authorization"] = authorization
        content = body() if callable(body) else body
        target = httpx.URL(url)
        if params:
            # Merge, don't replace: upload Locations carry their own state in the query (httpx's
            # `params=` would drop it).
            target = target.copy_merge_params(params)
        try:
            request, response = self._deliver(
                method, target, request_headers, content, stream, what, registry
            )
        except httpx.ConnectError as exc:
            plain = self._plain_http_fallback(registry, target, exc)
            if plain is None:
                # Refused, DNS, TLS: permanent (a connect *timeout* is a ConnectTimeout, transient).
                raise RegistryUnreachable(
                    f"{what}: cannot connect to {registry}: {_connect_failure(exc)}", registry=registry
                ) from None
            failure = _connect_failure(exc)
            # Nothing of the body was sent: the TLS handshake failed first. A callable body starts anew.
            content = body() if callable(body) else body
            try:
                request, response = self._deliver(
                    method, plain, request_headers, content, stream, what, registry
                )
            except httpx.ConnectError as second:
                raise RegistryUnreachable(
                    f"{what}: cannot connect to {registry}: {failure}, and over plain HTTP: "
                    f"{_connect_failure(second)}",
                    registry=registry,
                ) from None
            self._learn_plain_http(registry)
        log.debug("%s %s -> %d", method, request.url.copy_with(query=None), response.status_code)
        return response

    def _deliver(
        self,
        method: str,
        target: httpx.URL,
        headers: Mapping[str, str],
        content: bytes | Iterable[bytes] | None,
        stream: bool,
        what: str,
        registry: str,
    ) -> tuple[httpx.Request, httpx.Response]:
        """One request; connect failures raised as they are (the caller judges them), other transport
        failures as transient."""
        request = self._http.build_request(method, target, headers=headers, content=content)
        try:
            response = self._http.send(request, stream=stream, follow_redirects=method in ("GET", "HEAD"))
        except httpx.ConnectError:
            raise
        except httpx.TransportError as exc:
            # `from None`: the chained httpx error would keep the request (and its Authorization) alive.
            raise TransientRegistryError(
                f"{what}: {type(exc).__name__} talking to {registry}: {exc}", registry=registry
            ) from None
        return request, response

    def _plain_http_fallback(
        self, registry: str, url: httpx.URL, exc: httpx.ConnectError
    ) -> httpx.URL | None:
        """The same URL over plain HTTP, when acceld would retry there: an `insecure` host without an
        explicit `plain_http` whose TLS handshake failed (not its certificate: that is never verified), or
        that refused HTTPS's default port (443; HTTP's is 80; an explicit port would refuse HTTP too)."""
        config = self._hosts.get(normalize_host(registry))
        if config is None or not config.insecure or config.plain_http is not None or url.scheme != "https":
            return None
        if _tls_handshake_failed(exc) or (url.port is None and _refused(exc)):
            return url.copy_with(scheme="http")
        return None

    def _learn_plain_http(self, registry: str) -> None:
        host = normalize_host(registry)
        if host not in self._plain_http_learned:
            self._plain_http_learned.add(host)
            log.info(
                "%s answered plain HTTP, not TLS: using http:// for it from now on (insecure: true, as "
                "acceld does; set plain_http: true to skip the TLS attempt)",
                registry,
            )

    def _stream(self, resp: httpx.Response, what: str, registry: str) -> Iterator[bytes]:
        """The body in the pieces the connection reads (64 KiB at most); a cancellation stops it between
        pieces, and shuts the socket of a read that waits (a stalled or throttled registry) so that it
        returns at once. Not re-chunked: httpx's `iter_bytes(size)` copies every byte three times to cut
        equal blocks (a sixth of a pull's CPU), and the content store takes any size."""
        try:
            with cancel.on_cancel(lambda: _shut_socket(resp)):
                for chunk in resp.iter_bytes():
                    cancel.check()
                    yield chunk
        except httpx.TransportError as exc:
            cancel.check()
            raise TransientRegistryError(
                f"{what}: {type(exc).__name__} while reading from {registry}: {exc}", registry=registry
            ) from None

    def _read_limited(self, resp: httpx.Response, limit: int, what: str, registry: str) -> bytes:
        buffer = bytearray()
        for chunk in self._stream(resp, what, registry):
            buffer += chunk
            if len(buffer) > limit:
                raise _TooLarge(f"{what}: response larger than {limit} bytes", registry=registry)
        return bytes(buffer)

    # --- errors ------------------------------------------------------------------------------------

    def _expect(self, resp: httpx.Response, ok: tuple[int, ...], what: str, registry: str) -> None:
        if resp.status_code in ok:
            return
        status = resp.status_code
        message = self._message(resp, what, registry)
        code, _ = self._error_detail(resp)
        kind: type[RegistryError] = RegistryError
        if status == 401:
            kind = AuthenticationError
        elif status == 403:
            kind = Forbidden
        elif status == 404:
            kind = NotFound
        elif is_transient_status(status):
            kind = TransientRegistryError
        raise kind(message, status=status, registry=registry, code=code)

    def _error_detail(self, resp: httpx.Response) -> tuple[str | None, str | None]:
        """The first distribution error (code, message) in the body, if it has one."""
        try:
            if resp.request.method == "HEAD":
                return None, None
            resp.read()  # error bodies are small; a stream already closed raises and has no detail
            errors = resp.json().get("errors") or []
            first = errors[0]
            return str(first.get("code")), str(first.get("message") or "")
        except Exception:  # any malformed or absent body simply has no detail
            return None, None

    def _message(self, resp: httpx.Response, what: str, registry: str) -> str:
        code, detail = self._error_detail(resp)
        text = f"{what}: registry {registry} answered {resp.status_code}"
        if code:
            text += f" {code}"
        if detail:
            text += f": {detail[:200]}"
        return text

    @staticmethod
    def _size_error(what: str, registry: str, got: str, expected: int | None = None) -> BlobSizeMismatch:
        wanted = f", descriptor says {expected}" if expected is not None else ""
        return BlobSizeMismatch(f"{what}: got {got} bytes{wanted}", registry=registry)

    @staticmethod
    def _retry_after(resp: httpx.Response) -> float | None:
        value = resp.headers.get("Retry-After", "")
        return float(value) if value.strip().isdigit() else None

    # --- URLs and hosts ----------------------------------------------------------------------------

    def _credentials_for(self, host: str) -> Credential | None:
        config = self._hosts.get(host)
        if config is not None and config.auth:
            return config.credential()
        with self._docker_config_lock:
            if self._docker_config is None:
                self._docker_config = DockerConfig.load(self._docker_config_path)
        return self._docker_config.lookup(host)

    @staticmethod
    def _api_host(registry: str) -> str:
        return _HUB_API_HOST if normalize_host(registry) == DOCKER_HUB else registry

    def _base_url(self, registry: str) -> str:
        host = normalize_host(registry)
        plain = host in self._plain_http_learned or uses_plain_http(registry, self._hosts.get(host))
        return f"{'http' if plain else 'https'}://{self._api_host(registry)}"

    def _manifest_url(self, ref: Reference) -> str:
        return f"{self._base_url(ref.registry)}/v2/{ref.repository}/manifests/{ref.identifier}"

    def _blob_url(self, repo_ref: Reference, digest: str) -> str:
        return f"{self._base_url(repo_ref.registry)}/v2/{repo_ref.repository}/blobs/{digest}"

    def _uploads_url(self, repo_ref: Reference) -> str:
        return f"{self._base_url(repo_ref.registry)}/v2/{repo_ref.repository}/blobs/uploads/"

    @staticmethod
    def _absolute(resp: httpx.Response, location: str) -> str:
        return str(resp.request.url.join(location))
