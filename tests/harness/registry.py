"""Real registries for tests: `docker-registry serve` on loopback, htpasswd and token auth, and a fault proxy.

Everything binds 127.0.0.1 on a free port and keeps its data in a directory the caller owns (a pytest tmp
dir). `RegistryServer` is restartable; `TokenServer` is a tiny distribution-compatible token service that
signs ES256 JWTs with a self-signed certificate (sent in the `x5c` header, trusted via `rootcertbundle`);
`FaultProxy` sits in front of a registry and answers chosen requests with an error status, a dropped
connection or a tampered body.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.client
import http.server
import json
import random
import re
import secrets
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

REGISTRY_BINARY = "docker-registry"
TOKEN_SERVICE = "accel-test-registry"
TOKEN_ISSUER = "accel-test-token-issuer"


def registry_available() -> bool:
    return shutil.which(REGISTRY_BINARY) is not None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Account:
    username: str
    password: str = field(repr=False)

    @property
    def auth(self) -> str:
        """base64("user:password"), the form HostConfig.auth and docker config.json take."""
        return base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def write_htpasswd(path: Path, accounts: Mapping[str, str]) -> None:
    import bcrypt  # test-only dependency (pyproject `test` extra)

    lines = []
    for username, password in accounts.items():
        # Cost 4 is bcrypt's minimum: a hash per test session should not cost seconds.
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        lines.append(f"{username}:{hashed}\n")
    path.write_text("".join(lines))


# --- the registry process --------------------------------------------------------------------------


class RegistryServer:
    """One `docker-registry serve` process with filesystem storage and deletes enabled."""

    def __init__(
        self,
        workdir: Path,
        *,
        auth: dict[str, Any] | None = None,
        account: Account | None = None,
        token_server: TokenServer | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.account = account
        self.token_server = token_server
        self.config_path = self.workdir / "config.yml"
        self.log_path = self.workdir / "registry.log"
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "storage")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            # A fixed secret keeps upload sessions valid across a restart.
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
        }
        if auth:
            config["auth"] = auth
        self.config_path.write_text(yaml.safe_dump(config))
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"RegistryServer({self.host})"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"registry exited with {self._proc.returncode}: {self._log_tail()}")
            if _answers(f"{self.url}/v2/"):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"registry on {self.host} not ready after {timeout}s: {self._log_tail()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return ""

    def __enter__(self) -> RegistryServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.token_server is not None:
            self.token_server.stop()


def _answers(url: str) -> bool:
    """True once the HTTP API answers at all (200 anonymous, 401 with auth)."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    except OSError:
        return False


def anonymous_registry(workdir: Path) -> RegistryServer:
    return RegistryServer(workdir)


def htpasswd_registry(workdir: Path, account: Account) -> RegistryServer:
    workdir.mkdir(parents=True, exist_ok=True)
    htpasswd = workdir / "htpasswd"
    write_htpasswd(htpasswd, {account.username: account.password})
    auth = {"htpasswd": {"realm": "accel-test", "path": str(htpasswd)}}
    return RegistryServer(workdir, auth=auth, account=account)


def token_registry(workdir: Path, account: Account) -> RegistryServer:
    workdir.mkdir(parents=True, exist_ok=True)
    tokens = TokenServer(workdir, {account.username: account.password})
    tokens.start()
    auth = {
        "token": {
            "realm": tokens.realm,
            "service": TOKEN_SERVICE,
            "issuer": TOKEN_ISSUER,
            "rootcertbundle": str(tokens.cert_path),
        }
    }
    return RegistryServer(workdir, auth=auth, account=account, token_server=tokens)


# --- the token server ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRequest:
    username: str | None  # None: anonymous
    requested: tuple[str, ...]
    granted: tuple[str, ...]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues distribution bearer tokens: known users get what they ask for, anonymous users only `pull`."""

    def __init__(self, workdir: Path, users: Mapping[str, str], service: str = TOKEN_SERVICE) -> None:
        self.users = dict(users)
        self.service = service
        self.requests: list[TokenRequest] = []
        self.rejected = 0  # requests with wrong credentials
        self._lock = threading.Lock()
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TOKEN_ISSUER)])
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = Path(workdir) / "token-cert.pem"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread = None

    def grant(self, username: str | None, scopes: list[str]) -> list[dict[str, Any]]:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = [a for a in actions.split(",") if a]
            if kind == "repository":
                allowed = wanted if username else [a for a in wanted if a == "pull"]
            elif kind == "registry" and name == "catalog":
                allowed = wanted if username else []
            else:
                allowed = []
            if allowed:
                access.append({"type": kind, "name": name, "actions": allowed})
        return access

    def issue(self, username: str | None, access: list[dict[str, Any]], lifetime: int = 300) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [self._x5c]}
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": username or "",
            "aud": self.service,
            "exp": now + lifetime,
            "nbf": now - 5,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS wants raw r||s, not DER
        return f"{signing_input}.{_b64url(signature)}"

    def _authenticate(self, header: str | None) -> tuple[bool, str | None]:
        """(credentials acceptable, username); no header means anonymous."""
        if not header:
            return True, None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False, None
        try:
            username, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return False, None
        ok = username in self.users and secrets.compare_digest(self.users[username], password)
        return ok, username if ok else None

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        tokens = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path != "/token":
                    self.send_error(404)
                    return
                query = parse_qs(url.query)
                ok, username = tokens._authenticate(self.headers.get("Authorization"))
                if not ok:
                    with tokens._lock:
                        tokens.rejected += 1
                    self._json(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
                    return
                scopes = [s for value in query.get("scope", []) for s in value.split()]
                access = tokens.grant(username, scopes)
                granted = tuple(f"{a['type']}:{a['name']}:{','.join(a['actions'])}" for a in access)
                with tokens._lock:
                    tokens.requests.append(TokenRequest(username, tuple(scopes), granted))
                token = tokens.issue(username, access)
                self._json(200, {"token": token, "access_token": token, "expires_in": 300})

            def _json(self, status: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


# --- the fault proxy -------------------------------------------------------------------------------

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
)


@dataclass
class Fault:
    """Answer the next `times` requests matching `method` and `path` (regex on the path) with `action`."""

    path: re.Pattern[str]
    method: str | None
    status: int | None
    reset: bool
    tamper: bool
    times: int
    hits: int = 0
    truncate: bool = False  # announce the whole body, send half of it, close the connection
    code: str = "UNKNOWN"  # the distribution error code of a `status` answer

    def matches(self, method: str, path: str) -> bool:
        return (
            self.hits < self.times
            and (self.method is None or self.method == method)
            and self.path.search(path) is not None
        )


@dataclass
class Stall:
    """Hold requests matching `method` and `path` (regex on the path), after letting the first `after` of
    them through, until `release()`: the registry stops answering at a chosen point of a conversion.
    `reached` is set when the first request is held; a held request goes on to the registry once released
    (after `STALL_CAP` seconds at most, so no test leaves a thread behind for ever)."""

    path: re.Pattern[str]
    method: str | None
    after: int
    times: int
    seen: int = 0
    held: int = 0
    reached: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and self.path.search(path) is not None

    def release(self) -> None:
        self.released.set()


STALL_CAP = 600.0


@dataclass(frozen=True)
class ProxyHit:
    method: str
    path: str  # without the query string
    status: int | None  # None: the connection was reset
    injected: bool


class FaultProxy:
    """An HTTP proxy in front of `upstream` ("host:port") that injects faults on request.

    Bodies are buffered (test payloads are small). Requests keep their Host header, so the registry builds
    upload Locations that point back at the proxy.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.hits: list[ProxyHit] = []
        self._faults: list[Fault] = []
        self._stalls: list[Stall] = []
        self._lock = threading.Lock()
        self._random_rate = 0.0
        self._random = random.Random(0)
        self._throttle: tuple[re.Pattern[str], int] | None = None
        self._open = threading.Event()  # cleared by hold(): requests wait until release()
        self._open.set()
        self.held = 0  # requests that arrived while held
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"FaultProxy({self.host} -> {self.upstream})"

    def fail(
        self,
        path: str,
        *,
        status: int | None = None,
        reset: bool = False,
        tamper: bool = False,
        truncate: bool = False,
        method: str | None = None,
        times: int = 1,
        code: str = "UNKNOWN",
    ) -> Fault:
        if (status is not None) + reset + tamper + truncate != 1:
            raise ValueError("choose exactly one of status, reset, tamper, truncate")
        fault = Fault(re.compile(path), method, status, reset, tamper, times, truncate=truncate, code=code)
        with self._lock:
            self._faults.append(fault)
        return fault

    def stall(self, path: str, *, method: str | None = None, after: int = 0, times: int = 1) -> Stall:
        """Hold the matching requests after the first `after` of them (`times` of them) until the returned
        Stall is released."""
        stall = Stall(re.compile(path), method, after, times)
        with self._lock:
            self._stalls.append(stall)
        return stall

    def throttle(self, bytes_per_second: int | None, path: str = "") -> None:
        """Send the bodies of answers to requests matching `path` (regex on the path) at about
        `bytes_per_second` (None: at full speed again): a slow registry, so a conversion takes a while."""
        with self._lock:
            self._throttle = None if bytes_per_second is None else (re.compile(path), bytes_per_second)

    def _rate_for(self, path: str) -> int | None:
        with self._lock:
            if self._throttle is None or self._throttle[0].search(path) is None:
                return None
            return self._throttle[1]

    def fail_randomly(self, rate: float, seed: int = 0) -> None:
        """Besides explicit faults, answer a `rate` share of all requests with a 503, a reset or a body cut
        in half (one of the three at random); 0 turns it off."""
        with self._lock:
            self._random_rate = rate
            self._random = random.Random(seed)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            for stall in self._stalls:
                stall.release()
            self._stalls.clear()
            self.hits.clear()
            self._random_rate = 0.0
            self._throttle = None

    def hold(self) -> None:
        """Make every request wait (a registry that stopped answering) until release()."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def count(self, path: str = "", method: str | None = None) -> int:
        pattern = re.compile(path)
        with self._lock:
            return sum(
                1 for h in self.hits if (method is None or h.method == method) and pattern.search(h.path)
            )

    def stop(self) -> None:
        self.clear()  # held requests go on, their threads end
        if self._thread.is_alive():
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
            if self._random_rate and self._random.random() < self._random_rate:
                kind = self._random.choice(["status", "reset", "truncate"])
                return Fault(
                    re.compile(""),
                    None,
                    503 if kind == "status" else None,
                    kind == "reset",
                    False,
                    1,
                    truncate=kind == "truncate",
                )
        return None

    def _take_stall(self, method: str, path: str) -> Stall | None:
        with self._lock:
            for stall in self._stalls:
                if stall.matches(method, path):
                    stall.seen += 1
                    if stall.seen > stall.after and stall.held < stall.times:
                        stall.held += 1
                        return stall
        return None

    def _record(self, hit: ProxyHit) -> None:
        with self._lock:
            self.hits.append(hit)

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                method, path = self.command, urlsplit(self.path).path
                body = self._read_body()
                if not proxy._open.is_set():
                    with proxy._lock:
                        proxy.held += 1
                    proxy._open.wait()
                if (stall := proxy._take_stall(method, path)) is not None:
                    stall.reached.set()
                    stall.released.wait(STALL_CAP)
                fault = proxy._take_fault(method, path)
                if fault is not None and fault.reset:
                    proxy._record(ProxyHit(method, path, None, True))
                    # SO_LINGER 0: close with RST, like a crashed peer or a dropping load balancer.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                if fault is not None and fault.status is not None:
                    proxy._record(ProxyHit(method, path, fault.status, True))
                    doc = {"errors": [{"code": fault.code, "message": "fault injected by test proxy"}]}
                    self._reply(
                        fault.status, [("Content-Type", "application/json")], json.dumps(doc).encode()
                    )
                    return
                status, headers, data = self._forward(method, body)
                if fault is not None and fault.tamper and data:
                    data = data[:-1] + bytes([data[-1] ^ 0xFF])
                proxy._record(ProxyHit(method, path, status, fault is not None))
                if fault is not None and fault.truncate and len(data) > 1:
                    self._reply(status, headers, data, send=len(data) // 2)
                    self.close_connection = True
                    return
                self._reply(status, headers, data)

            def _forward(self, method: str, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if body or method in ("PUT", "POST", "PATCH"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    conn.request(method, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    return resp.status, list(resp.getheaders()), data
                finally:
                    conn.close()

            def _reply(
                self, status: int, headers: list[tuple[str, str]], data: bytes, send: int | None = None
            ) -> None:
                self.send_response_only(status)
                upstream_length = None
                for key, value in headers:
                    lower = key.lower()
                    if lower == "content-length":
                        upstream_length = value
                    elif lower not in _HOP_BY_HOP:
                        self.send_header(key, value)
                length = upstream_length if self.command == "HEAD" and upstream_length else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command == "HEAD":
                    return
                body = memoryview(data if send is None else data[:send])
                rate = proxy._rate_for(urlsplit(self.path).path)
                if rate is None:
                    self.wfile.write(body)
                    return
                step = max(1, rate // 10)  # ten writes a second
                for start in range(0, len(body), step):
                    self.wfile.write(body[start : start + step])
                    self.wfile.flush()
                    time.sleep(0.1)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@contextlib.contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.stop()
