"""Failure classes of registry traffic (issue 9): transient ones retried per request, permanent ones at once.

Against the real docker-registry behind the fault-injecting proxy, a refused port and a TLS server whose
certificate nobody trusts.
"""

from __future__ import annotations

import datetime as dt
import http.server
import os
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from accel import constants as mt
from accel.oci import Descriptor
from accel.reference import Reference
from accel.registry import (
    BlobSizeMismatch,
    HostConfig,
    RegistryClient,
    RegistryError,
    RegistryUnreachable,
    TransientRegistryError,
    is_transient,
)
from accel.store import ContentStore
from tests.harness.registry import free_port

pytestmark = pytest.mark.registry


@pytest.fixture
def proxied_client(fault_proxy) -> Iterator[RegistryClient]:
    """A client of the registry through the fault proxy, retrying quickly (faults are the point here)."""
    with RegistryClient({fault_proxy.host: HostConfig()}, backoff=0.01, retries=3) as c:
        yield c


def pushed_blob(client: RegistryClient, store: ContentStore, ref: Reference, size: int) -> Descriptor:
    data = os.urandom(size)
    desc = Descriptor(media_type=mt.OCI_CONFIG, digest=store.put_bytes(data), size=size)
    client.push_blob(ref, desc, store)
    return desc


def test_a_truncated_config_body_is_retried(fault_proxy, proxied_client, store):
    ref = Reference.parse(f"{fault_proxy.host}/faults/truncated:v1")
    desc = pushed_blob(proxied_client, store, ref, 780)
    fault_proxy.clear()
    fault_proxy.fail(r"/blobs/sha256:", truncate=True, method="GET", times=2)
    assert len(proxied_client.fetch_blob_bytes(ref, desc)) == 780
    assert fault_proxy.count(r"/blobs/sha256:", "GET") == 3


def test_a_body_truncated_every_time_is_transient_and_says_so(fault_proxy, proxied_client, store):
    """Not `BlobSizeMismatch … got more than 780 bytes`: it got 390, and a later try may get them all."""
    ref = Reference.parse(f"{fault_proxy.host}/faults/always-truncated:v1")
    desc = pushed_blob(proxied_client, store, ref, 780)
    fault_proxy.clear()
    fault_proxy.fail(r"/blobs/sha256:", truncate=True, method="GET", times=100)
    with pytest.raises(TransientRegistryError) as caught:
        proxied_client.fetch_blob_bytes(ref, desc)
    assert is_transient(caught.value) and not isinstance(caught.value, BlobSizeMismatch)
    assert "more than" not in str(caught.value)
    with pytest.raises(TransientRegistryError):
        proxied_client.fetch_blob(ref, desc, ContentStore(store.root.parent / "other"))
    assert fault_proxy.count(r"/blobs/sha256:", "GET") == 8  # (1 + 3 retries) per fetch


def test_a_truncated_layer_is_retried(fault_proxy, proxied_client, store, tmp_path):
    ref = Reference.parse(f"{fault_proxy.host}/faults/layer:v1")
    desc = pushed_blob(proxied_client, store, ref, 200_000)
    fault_proxy.clear()
    fault_proxy.fail(r"/blobs/sha256:", truncate=True, method="GET", times=1)
    path = proxied_client.fetch_blob(ref, desc, ContentStore(tmp_path / "fresh"))
    assert path.stat().st_size == 200_000
    assert fault_proxy.count(r"/blobs/sha256:", "GET") == 2


def test_a_5xx_about_malformed_input_is_not_retried(fault_proxy, proxied_client):
    """Its error body says the request was malformed (a HEAD has no body, so this is a GET)."""
    fault_proxy.fail(r"/manifests/", status=500, code="NAME_INVALID", times=100)
    with pytest.raises(RegistryError) as caught:
        proxied_client.fetch_manifest(Reference.parse(f"{fault_proxy.host}/faults/bad:v1"))
    assert caught.value.status == 500 and not is_transient(caught.value)
    assert fault_proxy.count(r"/manifests/") == 1


def test_connection_refused_fails_at_once_with_one_line():
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with RegistryClient({host: HostConfig()}) as c, pytest.raises(RegistryUnreachable) as caught:
        c.resolve(Reference.parse(f"{host}/faults/refused:v1"))
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "\n" not in message and "connection refused" in message and host in message
    assert not is_transient(caught.value)


@pytest.fixture
def untrusted_tls_server(tmp_path: Path) -> Iterator[str]:
    """An HTTPS server with a self-signed certificate that no trust store holds; yields its host."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_tls_verification_failure_fails_at_once_with_one_line(untrusted_tls_server):
    host = untrusted_tls_server
    started = time.monotonic()
    with (
        RegistryClient({host: HostConfig(plain_http=False)}) as c,
        pytest.raises(RegistryUnreachable) as caught,
    ):
        c.resolve(Reference.parse(f"{host}/faults/tls:v1"))
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "\n" not in message and "TLS certificate verification failed" in message
    assert not is_transient(caught.value)


def test_the_proxy_holds_a_chosen_request_until_released(
    fault_proxy, proxied_client, store, repo_name, tmp_path
):
    """FaultProxy.stall (the e2e kill and timeout tests stop a conversion with it): the first matching
    request passes, the next waits until released, then goes on to the registry."""
    ref = Reference.parse(f"{fault_proxy.host}/{repo_name}:v1")
    desc = pushed_blob(proxied_client, store, ref, 1000)
    stall = fault_proxy.stall(rf"/blobs/{desc.digest}$", method="GET", after=1)
    assert proxied_client.fetch_blob_bytes(ref, desc)  # the first passes
    assert not stall.reached.is_set()
    fetched: list[bytes] = []
    second = threading.Thread(target=lambda: fetched.append(proxied_client.fetch_blob_bytes(ref, desc)))
    second.start()
    assert stall.reached.wait(30)
    second.join(0.5)
    assert second.is_alive() and fetched == []  # held
    stall.release()
    second.join(30)
    assert len(fetched) == 1 and len(fetched[0]) == 1000
