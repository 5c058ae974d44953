"""Parsing Harbor (Default, CloudEvents) and distribution payloads into pushed images."""

from __future__ import annotations

import json

import pytest

from accel.plan import conversion_key, is_converted_tag
from accel.reference import Reference
from service.webhook import (
    MAX_BODY_BYTES,
    InvalidWebhook,
    parse_distribution,
    parse_harbor,
    pushed_reference,
)
from tests.harness.api import harbor_event

DIGEST = "sha256:" + "dd" * 32
OTHER = "sha256:" + "ee" * 32


def harbor_body(resources, kind="PUSH_ARTIFACT") -> bytes:
    return json.dumps(harbor_event(resources, kind)).encode()


def test_default_payload_pins_tag_to_digest():
    event = parse_harbor(
        harbor_body([{"resource_url": "harbor.io:8443/library/app:v1", "digest": DIGEST, "tag": "v1"}])
    )
    assert event.source == "harbor"
    [image] = event.images
    assert image.reference == Reference("harbor.io:8443", "library/app", "v1", DIGEST)
    assert event.registries == ["harbor.io:8443"]


def test_push_by_digest_has_no_tag():
    # Harbor fills `tag` with the digest when an artifact is pushed by digest.
    ref = pushed_reference(f"harbor.io/library/app@{DIGEST}", DIGEST, DIGEST)
    assert ref.tag is None and ref.digest == DIGEST


def test_resource_without_digest_keeps_tag():
    ref = pushed_reference("harbor.io/library/app:v2", None, None)
    assert (ref.tag, ref.digest) == ("v2", None)


def test_conflicting_digests_are_refused():
    with pytest.raises(InvalidWebhook, match="differs"):
        pushed_reference(f"harbor.io/library/app@{DIGEST}", OTHER, None)


def test_duplicate_resources_collapse():
    resource = {"resource_url": "h.io/a/b:v1", "digest": DIGEST, "tag": "v1"}
    assert len(parse_harbor(harbor_body([resource, resource])).images) == 1


def test_other_event_types_are_ignored_not_refused():
    event = parse_harbor(harbor_body([], kind="DELETE_ARTIFACT"))
    assert event.images == () and "DELETE_ARTIFACT" in event.ignored[0]


def test_cloudevents_by_content_type_and_by_shape():
    doc = {
        "specversion": "1.0",
        "id": "x",
        "source": "/projects/1/webhook/policies/3",
        "type": "harbor.artifact.pushed",
        "datacontenttype": "application/json",
        "data": {"resources": [{"resource_url": "h.io/a/b:v1", "digest": DIGEST, "tag": "v1"}]},
        "operator": "robot$ci",
    }
    for content_type in ("application/cloudevents+json; charset=utf-8", "application/json"):
        event = parse_harbor(json.dumps(doc).encode(), content_type)
        assert event.source == "cloudevents"
        assert [str(i.reference) for i in event.images] == [f"h.io/a/b:v1@{DIGEST}"]
    pulled = parse_harbor(json.dumps({**doc, "type": "harbor.artifact.pulled"}).encode())
    assert pulled.images == ()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"\xff", "UTF-8"),
        (b"{", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"type": "PUSH_ARTIFACT"}', "event_data must be a JSON object"),
        (b'{"type": "PUSH_ARTIFACT", "event_data": {"resources": []}}', "empty"),
        (harbor_body([{"digest": DIGEST}]), "resource_url must be a non-empty string"),
        (harbor_body([{"resource_url": "app:v1"}]), "no registry host"),
        (harbor_body([{"resource_url": "h.io/a/b:v1", "digest": "md5:00"}]), "not a sha256"),
        (harbor_body([{"resource_url": "h.io/A/b:v1"}]), "resource_url"),
        (b" " * (MAX_BODY_BYTES + 1), "limit"),
        (b'{"specversion": "0.3", "type": "x"}', "specversion"),
    ],
)
def test_malformed_payloads_say_why(body, message):
    with pytest.raises(InvalidWebhook, match=message):
        parse_harbor(body)


def envelope(*events) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def event(action="push", media_type="application/vnd.oci.image.manifest.v1+json", tag="v1", host="r:5000"):
    target = {"mediaType": media_type, "digest": DIGEST, "repository": "team/app", "size": 10}
    if tag:
        target["tag"] = tag
    target["url"] = f"http://{host}/v2/team/app/manifests/{DIGEST}"
    return {"id": "1", "action": action, "target": target, "request": {"host": host}}


def test_distribution_takes_tagged_manifest_pushes_only():
    parsed = parse_distribution(
        envelope(
            event(),
            event(action="pull"),
            event(media_type="application/vnd.oci.image.layer.v1.tar+gzip"),
            event(tag=None),
            event(media_type="application/vnd.docker.distribution.manifest.list.v2+json", tag="multi"),
        ),
        "application/vnd.docker.distribution.events.v1+json",
    )
    assert [str(i.reference) for i in parsed.images] == [
        f"r:5000/team/app:v1@{DIGEST}",
        f"r:5000/team/app:multi@{DIGEST}",
    ]
    assert len(parsed.ignored) == 3


def test_distribution_host_falls_back_to_target_url():
    e = event(host="mirror.io")
    del e["request"]
    [image] = parse_distribution(envelope(e)).images
    assert image.registry == "mirror.io"


def test_distribution_refuses_other_content_types_and_shapes():
    with pytest.raises(InvalidWebhook, match="content type"):
        parse_distribution(envelope(event()), "text/plain")
    with pytest.raises(InvalidWebhook, match="events must be a JSON array"):
        parse_distribution(b'{"events": {}}')


def test_an_envelope_without_events_is_ignored_saying_so():
    event = parse_distribution(b'{"events": []}')
    assert event.images == () and event.ignored == ("the envelope holds no events",)


def test_harbor_payloads_must_be_json_by_content_type():
    body = json.dumps(harbor_event([{"resource_url": "h.test/a/b:v1", "tag": "v1"}])).encode()
    for content_type in (None, "application/json", "application/json; charset=utf-8"):
        assert parse_harbor(body, content_type).images
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ):
        with pytest.raises(InvalidWebhook, match="is not a Harbor payload"):
            parse_harbor(body, content_type)


def test_converted_and_referrers_tags():
    assert is_converted_tag("v1-esgz", ["-esgz"])
    assert is_converted_tag("sha256-" + "a" * 64, ["-esgz"])  # referrers tag schema
    assert not is_converted_tag("v1", ["-esgz"])
    assert not is_converted_tag(None, ["-esgz"])


def test_conversion_key_is_stable_and_sensitive():
    ref = Reference.parse(f"h.io/a/b:v1@{DIGEST}")
    key = conversion_key(ref, ["estargz", "zstdchunked"], {"estargz": {"level": 9}}, None)
    assert key == conversion_key(ref, ["zstdchunked", "estargz"], {"estargz": {"level": 9}}, None)
    assert key != conversion_key(
        ref.with_digest(OTHER), ["estargz", "zstdchunked"], {"estargz": {"level": 9}}, None
    )
    assert key != conversion_key(ref, ["estargz"], {"estargz": {"level": 9}}, None)
    assert key != conversion_key(ref, ["estargz", "zstdchunked"], {"estargz": {"level": 1}}, None)
    assert key != conversion_key(ref, ["estargz", "zstdchunked"], {"estargz": {"level": 9}}, "mirror/b")
