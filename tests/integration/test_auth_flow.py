"""Conversions against registries that require credentials (htpasswd Basic, bearer tokens), and what a
rejected password looks like: a FAILED run that names the registry and never shows the secret."""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from accel import constants as mt
from accel.oci import Manifest
from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from accel.registry.errors import AuthenticationError
from accel.store import ContentStore
from tests.harness import configs, imagegen, pushing

pytestmark = [pytest.mark.registry, pytest.mark.prefect]

WRONG_PASSWORD = "not-the:right-one"


@pytest.fixture(params=["htpasswd_registry", "token_registry"])
def secured(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


@pytest.fixture
def secured_client(secured) -> Iterator[RegistryClient]:
    """A client holding the credentials of the `secured` registry (htpasswd or token auth)."""
    with RegistryClient({secured.host: HostConfig(auth=secured.account.auth)}) as c:
        yield c


def write_config(path: Path, host: str, auth: str) -> str:
    fast = configs.driver("estargz", compression_level=1)
    return str(configs.write_config(path, {host: {"auth": auth}}, [fast]))


def _push_source(client: RegistryClient, store: ContentStore, host: str) -> tuple[Reference, str]:
    source = Reference.parse(f"{host}/auth/{uuid.uuid4().hex[:10]}:v1")
    return source, pushing.push(client, store, source, imagegen.standard_image(store, big_file_size=1024))


def test_conversion_with_configured_credentials(prefect_api, secured, secured_client, store, tmp_path):
    from flows.convert_image import convert_image

    source, digest = _push_source(secured_client, store, secured.host)
    config = write_config(tmp_path / "config.yaml", secured.host, secured.account.auth)
    if secured.token_server is not None:
        secured.token_server.requests.clear()  # forget the grants for pushing the source

    result = convert_image(source=str(source), config=config)

    [target] = result.targets
    target_ref = Reference.parse(target.reference)
    assert target_ref == source.with_tag("v1-estargz")
    assert secured_client.resolve(target_ref).digest == target.digest
    _, raw = secured_client.fetch_manifest(target_ref)
    assert Manifest.parse(raw).annotations[mt.ACCEL_SOURCE_DIGEST] == digest
    if secured.token_server is None:
        # The anonymous view sees nothing: the image really is behind the credentials.
        with RegistryClient({secured.host: HostConfig()}) as anonymous, pytest.raises(AuthenticationError):
            anonymous.resolve(target_ref)
    else:
        # The token server handed the configured user push rights for the run's own requests.
        granted = {
            g
            for r in secured.token_server.requests
            if r.username == secured.account.username
            for g in r.granted
        }
        assert f"repository:{source.repository}:pull,push" in granted


def test_rejected_password_fails_the_run_without_leaking_it(
    prefect_api, secured, secured_client, store, tmp_path, caplog, capfd
):
    from flows.convert_image import convert_image

    source, _ = _push_source(secured_client, store, secured.host)
    wrong_auth = base64.b64encode(f"{secured.account.username}:{WRONG_PASSWORD}".encode()).decode()
    config = write_config(tmp_path / "config.yaml", secured.host, wrong_auth)
    secrets = [WRONG_PASSWORD, wrong_auth, secured.account.password, secured.account.auth]

    rejected_before = secured.token_server.rejected if secured.token_server else 0
    with caplog.at_level(logging.DEBUG):
        state = convert_image(source=str(source), config=config, return_state=True)

    assert state.is_failed()
    if secured.token_server is not None:
        assert secured.token_server.rejected > rejected_before
    message = state.message or ""
    assert secured.host in message and "rejected the credentials" in message, message
    run_logs = _flow_run_logs(state.state_details.flow_run_id)
    assert any("rejected the credentials" in line for line in run_logs), run_logs
    captured = capfd.readouterr()
    seen = "\n".join([message, *run_logs, caplog.text, captured.out, captured.err])
    for secret in secrets:
        assert secret not in seen
    with pytest.raises(AuthenticationError, match="rejected the credentials") as exc:
        state.result()
    assert not any(secret in str(exc.value) for secret in secrets)


def _flow_run_logs(flow_run_id) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all()  # logs reach the API in batches: send what is queued first
    with get_client(sync_client=True) as prefect:
        logs = prefect.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [entry.message for entry in logs]
