"""Registry auth pieces without a registry: challenges, scopes, credentials, plain-HTTP policy, token flow."""

from __future__ import annotations

import base64
import json
import logging
import ssl
import stat
from pathlib import Path

import httpx
import pytest

from accel.reference import Reference
from accel.registry import (
    AuthenticationError,
    BlobSizeMismatch,
    Credential,
    DockerConfig,
    HostConfig,
    NotFound,
    RegistryClient,
    RegistryUnreachable,
    TransientRegistryError,
    is_loopback_host,
    is_transient,
    uses_plain_http,
)
from accel.registry.auth import merge_scopes, normalize_host, parse_challenges

SECRET = "pa:ss:word-91c2"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- challenges and scopes -------------------------------------------------------------------------


def test_bearer_challenge_with_comma_in_scope():
    header = (
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:team/app:pull,push repository:base/img:pull"'
    )
    [challenge] = parse_challenges(header)
    assert challenge.scheme == "bearer"
    assert challenge.realm == "https://auth.example.com/token"
    assert challenge.service == "registry.example.com"
    assert challenge.scopes == ("repository:team/app:pull,push", "repository:base/img:pull")


def test_challenges_with_unquoted_empty_and_escaped_values():
    header = 'Basic realm="say \\"hi\\"", Bearer realm=https://t.example/token, service="", Scope="a:b:pull"'
    basic, bearer = parse_challenges(header)
    assert (basic.scheme, basic.realm) == ("basic", 'say "hi"')
    assert bearer.realm == "https://t.example/token"
    assert bearer.service == ""
    assert bearer.scopes == ("a:b:pull",)


def test_merge_scopes_unions_actions_per_resource():
    merged = merge_scopes(["repository:a:pull", "repository:a:push,pull", "repository:b:pull", "bad"])
    assert merged == ("repository:a:pull,push", "repository:b:pull")
    assert merge_scopes(["repository:b:pull", "repository:a:push,pull"]) == merge_scopes(
        ["repository:a:pull,push", "repository:b:pull"]
    )


# --- credentials -----------------------------------------------------------------------------------


def test_auth_field_keeps_colons_in_the_password():
    cred = Credential.from_auth_field(b64(f"alice:{SECRET}"))
    assert (cred.username, cred.password) == ("alice", SECRET)
    assert SECRET not in repr(cred)
    assert cred.basic_header() == "Basic " + b64(f"alice:{SECRET}")


@pytest.mark.parametrize("bad", ["not base64!", b64("no-colon"), b64(f":{SECRET}")])
def test_malformed_auth_field_is_refused_without_echoing_it(bad):
    with pytest.raises(ValueError) as caught:
        Credential.from_auth_field(bad)
    assert bad not in str(caught.value) and SECRET not in str(caught.value)


def test_reprs_never_show_secrets():
    config = HostConfig(auth=b64(f"alice:{SECRET}"))
    client = RegistryClient({"registry.example.com": config}, docker_config=Path("/nonexistent"))
    try:
        for text in (repr(config), str(config), repr(client), str(client)):
            assert SECRET not in text and config.auth not in text
    finally:
        client.close()


@pytest.mark.parametrize(
    ("key", "host"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("http://127.0.0.1:5000", "127.0.0.1:5000"),
        ("https://Registry.Example.com/v2/", "registry.example.com"),
    ],
)
def test_docker_config_key_forms(tmp_path, key, host):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {key: {"auth": b64(f"bob:{SECRET}")}}}))
    cred = DockerConfig.load(path).lookup(host)
    assert cred == Credential("bob", SECRET)
    assert DockerConfig.load(path).lookup("other.example.com") is None


def test_docker_config_username_password_entries_and_env_discovery(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(
        json.dumps({"auths": {"r.example.com": {"username": "carol", "password": SECRET}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert DockerConfig.load().lookup("r.example.com") == Credential("carol", SECRET)


def test_docker_config_home_discovery_reads_only_the_users_file(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert DockerConfig.load().lookup("r.example.com") is None  # no ~/.docker/config.json: no credentials
    (tmp_path / ".docker").mkdir()
    auths = {"auths": {"r.example.com": {"auth": b64("dan:x:y")}}}
    (tmp_path / ".docker" / "config.json").write_text(json.dumps(auths))
    assert DockerConfig.load().lookup("r.example.com") == Credential("dan", "x:y")


def test_basic_header_is_base64_of_user_colon_password():
    header = Credential("bob", SECRET).basic_header()
    assert header.startswith("Basic ")
    assert base64.b64decode(header.removeprefix("Basic ")).decode() == f"bob:{SECRET}"


def test_credential_helper_is_asked_for_the_host(tmp_path, monkeypatch):
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text(
        "#!/bin/sh\nread host\n"
        f'printf \'{{"ServerURL":"%s","Username":"dave","Secret":"{SECRET}"}}\' "$host"\n'
    )
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{helper.parent}:/usr/bin:/bin")
    config = DockerConfig({}, creds_store=None, cred_helpers={"helped.example.com": "fake"})
    assert config.lookup("helped.example.com") == Credential("dave", SECRET)
    assert config.lookup("unhelped.example.com") is None
    assert DockerConfig({}, creds_store="missing-helper").lookup("x.example.com") is None


# --- plain HTTP only for loopback ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.8.9.10", True),
        ("[::1]:5000", True),
        ("registry.localhost:443", True),
        ("10.0.0.1:5000", False),
        ("registry.example.com", False),
        ("localhost.example.com:5000", False),
        ("docker.io", False),
    ],
)
def test_loopback_detection(host, loopback):
    assert is_loopback_host(host) is loopback
    assert uses_plain_http(host, None) is loopback
    assert uses_plain_http(host, HostConfig()) is loopback


def test_plain_http_is_only_used_where_configured():
    assert uses_plain_http("registry.internal:5000", HostConfig(plain_http=True)) is True
    assert uses_plain_http("127.0.0.1:5000", HostConfig(plain_http=False)) is False


def _recording_client(handler, **kwargs) -> RegistryClient:
    return RegistryClient(
        transport=httpx.MockTransport(handler), docker_config=Path("/nonexistent"), backoff=0.0, **kwargs
    )


def test_scheme_chosen_per_host_and_hub_uses_its_api_host():
    urls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        urls.append(str(request.url))
        return httpx.Response(404)

    with _recording_client(handler, hosts={"intranet:5000": HostConfig(plain_http=True)}) as client:
        for text in ("localhost:5000/a:1", "registry.example.com/a:1", "intranet:5000/a:1", "busybox:1"):
            with pytest.raises(NotFound):
                client.resolve(Reference.parse(text))
    assert [u.split("/v2/")[0] for u in urls] == [
        "http://localhost:5000",
        "https://registry.example.com",
        "http://intranet:5000",
        "https://registry-1.docker.io",
    ]


def _plain_http_server(urls: list[str]):
    """A handler for a plain-HTTP registry: a TLS connection fails its handshake the way OpenSSL reports
    an HTTP answer to a ClientHello; plain HTTP gets a manifest."""

    def handler(request: httpx.Request) -> httpx.Response:
        urls.append(f"{request.method} {request.url}")
        if request.url.scheme == "https":
            reason = "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1000)"
            handshake = ssl.SSLError(1, reason)
            handshake.reason = "WRONG_VERSION_NUMBER"  # as the ssl module sets it
            raise httpx.ConnectError(reason) from handshake
        digest = "sha256:" + "a" * 64
        return httpx.Response(
            200,
            headers={
                "Content-Type": "application/vnd.oci.image.manifest.v1+json",
                "Docker-Content-Digest": digest,
                "Content-Length": "2",
            },
        )

    return handler


def test_an_insecure_host_answering_plain_http_is_spoken_to_over_http_as_acceld_does(caplog):
    """acceld's `insecure: true` on a plain-HTTP registry converts (it retries over HTTP); so does accel,
    for a host that is not loopback and has no `plain_http`, once, then over HTTP only."""
    urls: list[str] = []
    hosts = {"registry.example.com:5000": HostConfig(insecure=True)}
    with (
        _recording_client(_plain_http_server(urls), hosts=hosts) as client,
        caplog.at_level(logging.INFO, logger="accel.registry.client"),
    ):
        for _ in range(2):
            client.resolve(Reference.parse("registry.example.com:5000/app:v1"))
    assert urls == [
        "HEAD https://registry.example.com:5000/v2/app/manifests/v1",
        "HEAD http://registry.example.com:5000/v2/app/manifests/v1",
        "HEAD http://registry.example.com:5000/v2/app/manifests/v1",
    ]
    [line] = [r.getMessage() for r in caplog.records if "answered plain HTTP" in r.getMessage()]
    assert "registry.example.com:5000" in line and "plain_http: true" in line


def test_an_insecure_host_refusing_https_port_443_is_tried_on_http_port_80():
    """acceld retries over HTTP after a refused connection too: HTTPS's default port refused, HTTP's (80)
    answers. A refused explicit port is not retried (HTTP would go to the same port)."""
    urls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        urls.append(str(request.url))
        if request.url.scheme == "https":
            raise httpx.ConnectError("[Errno 111] Connection refused") from ConnectionRefusedError(
                111, "refused"
            )
        return httpx.Response(404)

    hosts = {
        "registry.example.com": HostConfig(insecure=True),
        "other.example.com:5000": HostConfig(insecure=True),
    }
    with _recording_client(handler, hosts=hosts) as client:
        with pytest.raises(NotFound):
            client.resolve(Reference.parse("registry.example.com/app:v1"))
        with pytest.raises(RegistryUnreachable, match="connection refused"):
            client.resolve(Reference.parse("other.example.com:5000/app:v1"))
    assert [u.split("/v2/")[0] for u in urls] == [
        "https://registry.example.com",
        "http://registry.example.com",
        "https://other.example.com:5000",
    ]


@pytest.mark.parametrize(
    "config",
    [None, HostConfig(), HostConfig(insecure=True, plain_http=False)],
    ids=["unknown", "secure", "tls"],
)
def test_no_fallback_to_plain_http_without_insecure(config):
    """Without `insecure` (or with `plain_http: false`) a TLS failure stays a failure: no silent downgrade."""
    urls: list[str] = []
    hosts = {"registry.example.com:5000": config} if config is not None else {}
    with (
        _recording_client(_plain_http_server(urls), hosts=hosts) as client,
        pytest.raises(RegistryUnreachable, match="TLS handshake failed"),
    ):
        client.resolve(Reference.parse("registry.example.com:5000/app:v1"))
    assert all(u.startswith("HEAD https://") for u in urls)


def test_an_insecure_loopback_host_tries_tls_first():
    """`insecure` on loopback is acceld's TLS-first too (a self-signed TLS registry on loopback works)."""
    assert uses_plain_http("127.0.0.1:5000", HostConfig(insecure=True)) is False
    assert uses_plain_http("127.0.0.1:5000", HostConfig(insecure=True, plain_http=True)) is True


# --- the bearer flow, scripted ---------------------------------------------------------------------


class ScriptedRegistry:
    """A registry that wants bearer tokens and a token server that grants anything to `user`."""

    realm = "https://auth.example.com/token"

    def __init__(self) -> None:
        self.token_requests: list[tuple[str | None, tuple[str, ...]]] = []
        self.issued = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example.com":
            auth = request.headers.get("Authorization")
            if auth and auth != "Basic " + b64(f"user:{SECRET}"):
                return httpx.Response(401)
            scopes = tuple(request.url.params.get_list("scope"))
            self.token_requests.append((auth and "user", scopes))
            self.issued += 1
            return httpx.Response(
                200, json={"token": f"t{self.issued}:{' '.join(scopes)}", "expires_in": 300}
            )
        repo = request.url.path.split("/")[2]
        needed = f"repository:{repo}:pull"
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or needed.rsplit(":", 1)[0] not in auth:
            challenge = f'Bearer realm="{self.realm}",service="reg",scope="{needed}"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return httpx.Response(200, json={"name": repo, "tags": ["v1"]})


def test_bearer_tokens_are_fetched_once_per_scope_with_credentials():
    script = ScriptedRegistry()
    hosts = {"reg.example.com": HostConfig(auth=b64(f"user:{SECRET}"))}
    with _recording_client(script, hosts=hosts) as client:
        for _ in range(3):
            assert client.list_tags(Reference.parse("reg.example.com/one:x")) == ["v1"]
        assert client.list_tags(Reference.parse("reg.example.com/two:x")) == ["v1"]
    assert script.token_requests == [
        ("user", ("repository:one:pull",)),
        ("user", ("repository:two:pull",)),
    ]


def test_bearer_without_credentials_asks_for_an_anonymous_token():
    script = ScriptedRegistry()
    with _recording_client(script) as client:
        assert client.list_tags(Reference.parse("reg.example.com/one:x")) == ["v1"]
    assert script.token_requests == [(None, ("repository:one:pull",))]


def test_token_server_rejecting_credentials_is_an_authentication_error():
    script = ScriptedRegistry()
    hosts = {"reg.example.com": HostConfig(auth=b64(f"user:wrong-{SECRET}"))}
    with _recording_client(script, hosts=hosts) as client, pytest.raises(AuthenticationError) as caught:
        client.list_tags(Reference.parse("reg.example.com/one:x"))
    assert "reg.example.com" in str(caught.value) and SECRET not in str(caught.value)
    assert not is_transient(caught.value)


# --- transient classification ----------------------------------------------------------------------


def test_is_transient():
    assert is_transient(TransientRegistryError("x", status=503))
    assert is_transient(httpx.ReadTimeout("slow"))
    assert is_transient(httpx.ConnectTimeout("slow to connect"))
    assert is_transient(httpx.RemoteProtocolError("peer closed connection without sending complete body"))
    # Refused, DNS failure, TLS verification: no retry cures them in seconds.
    assert not is_transient(httpx.ConnectError("refused"))
    assert not is_transient(RegistryUnreachable("x"))
    assert not is_transient(BlobSizeMismatch("x"))
    assert not is_transient(NotFound("x", status=404))
    assert not is_transient(AuthenticationError("x", status=401))
    assert not is_transient(ValueError("x"))


def test_retries_use_backoff_and_honour_the_count():
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(429, headers={"Retry-After": "0"})

    with _recording_client(handler, retries=4) as client, pytest.raises(TransientRegistryError) as caught:
        client.blob_exists(Reference.parse("localhost:1/a:b"), "sha256:" + "0" * 64)
    assert caught.value.status == 429
    assert calls == ["HEAD"] * 5


def test_normalize_host():
    assert normalize_host("https://index.docker.io/v1/") == "docker.io"
    assert normalize_host("HTTP://Host:5000/path") == "host:5000"
