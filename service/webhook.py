"""Registry events → the images they announce. Pure parsing and validation: no HTTP server, no Prefect.

Three inputs, all JSON:
- Harbor's "Default" webhook payload: `{type, occur_at, operator, event_data: {resources, repository}}`.
- Harbor's CloudEvents payload (`application/cloudevents+json`, structured mode): `{specversion, type:
  "harbor.artifact.pushed", data: {resources, repository}, operator, ...}`.
- distribution's notification envelope (`application/vnd.docker.distribution.events.v1+json`):
  `{events: [{action, target: {mediaType, digest, repository, tag, url}, request: {host}}]}`.

Each parser returns a `WebhookEvent`: the pushed images to convert, or why the event is ignored. Anything
malformed raises `InvalidWebhook` with a reason meant for the HTTP 400 answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from accel import constants as mt
from accel.errors import AccelError, InvalidReference
from accel.reference import Reference

MAX_BODY_BYTES = 1 << 20  # Harbor payloads are a few hundred bytes; anything near 1 MiB is not one
MAX_RESOURCES = 256  # resources (Harbor) or events (distribution) per request

HARBOR_PUSH_TYPE = "PUSH_ARTIFACT"
CLOUDEVENTS_PUSH_TYPE = "harbor.artifact.pushed"
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"
DISTRIBUTION_CONTENT_TYPES = (
    "application/vnd.docker.distribution.events.v1+json",
    "application/vnd.docker.distribution.events.v2+json",
)

# Webhook sources, also the `source` label of the webhook request metric.
SOURCE_HARBOR = "harbor"
SOURCE_CLOUDEVENTS = "cloudevents"
SOURCE_DISTRIBUTION = "distribution"

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$|^sha512:[0-9a-f]{128}$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # ASCII: \w admits any Unicode letter


class InvalidWebhook(AccelError):
    """The request body is not a payload we understand; the message says what is wrong."""


@dataclass(frozen=True)
class PushedImage:
    """One image a registry says was pushed: tag and/or digest (the digest pins it when both are known)."""

    reference: Reference

    @property
    def registry(self) -> str:
        return self.reference.registry


@dataclass(frozen=True)
class WebhookEvent:
    source: str  # SOURCE_HARBOR | SOURCE_CLOUDEVENTS | SOURCE_DISTRIBUTION
    event_type: str
    images: tuple[PushedImage, ...] = ()
    ignored: tuple[str, ...] = field(default=())  # why items (or the whole event) were left out

    @property
    def registries(self) -> list[str]:
        return sorted({i.registry for i in self.images})


def decode_json(body: bytes) -> Any:
    """The body as JSON, refusing oversized, non-UTF-8 and non-JSON input with a readable reason."""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidWebhook(f"body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
    if not body.strip():
        raise InvalidWebhook("body is empty; expected a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidWebhook("body is not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise InvalidWebhook(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidWebhook("body is nested too deeply") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise InvalidWebhook(f"{where} must be a JSON object, got {_kind(value)}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidWebhook(f"{where} must be a JSON array, got {_kind(value)}")
    if len(value) > MAX_RESOURCES:
        raise InvalidWebhook(f"{where} has {len(value)} items; at most {MAX_RESOURCES} are accepted")
    return value


def _string(value: Any, where: str, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidWebhook(f"{where} must be a non-empty string, got {_kind(value)}")
    return value.strip()


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


def _explicit_tag(resource_url: str) -> bool:
    """Whether the reference text names a tag itself (`repo:tag`), not just a digest or nothing."""
    name = resource_url.split("@", 1)[0]
    return name.rfind(":") > name.rfind("/")


def pushed_reference(resource_url: str, digest: str | None = None, tag: str | None = None) -> Reference:
    """Harbor's `resource_url` plus the resource's `digest`/`tag` → one reference pinned to the digest.

    Harbor puts the digest in `tag` when an artifact was pushed by digest, so a digest-shaped tag is no tag.
    """
    try:
        ref = Reference.parse(resource_url)
    except InvalidReference as exc:
        raise InvalidWebhook(f"resource_url: {exc}") from None
    if "/" not in resource_url.split("@", 1)[0].split("://", 1)[-1]:
        raise InvalidWebhook(f"resource_url {resource_url!r} has no registry host")
    if digest is not None and not _DIGEST_RE.match(digest):
        raise InvalidWebhook(f"digest {digest!r} is not a sha256/sha512 digest")
    if ref.digest and digest and ref.digest != digest:
        raise InvalidWebhook(f"resource_url digest {ref.digest} differs from the resource digest {digest}")
    pinned = digest or ref.digest
    if tag is not None and tag != "" and not _DIGEST_RE.match(tag):
        if not _TAG_RE.match(tag):
            raise InvalidWebhook(f"tag {tag!r} is not a valid tag")
        chosen_tag: str | None = tag
    else:
        chosen_tag = ref.tag if _explicit_tag(resource_url) else None
    if chosen_tag is None and pinned is None:
        chosen_tag = ref.tag  # `repo` alone means `repo:latest`, as everywhere else
    return Reference(registry=ref.registry, repository=ref.repository, tag=chosen_tag, digest=pinned)


def _harbor_images(event_data: Any, where: str) -> tuple[PushedImage, ...]:
    data = _object(event_data, where)
    resources = _list(data.get("resources"), f"{where}.resources")
    if not resources:
        raise InvalidWebhook(f"{where}.resources is empty; nothing to convert")
    if "repository" in data and data["repository"] is not None:
        _object(data["repository"], f"{where}.repository")
    images = []
    for i, item in enumerate(resources):
        res = _object(item, f"{where}.resources[{i}]")
        url = _string(res.get("resource_url"), f"{where}.resources[{i}].resource_url")
        digest = _string(res.get("digest"), f"{where}.resources[{i}].digest", required=False) or None
        tag = _string(res.get("tag"), f"{where}.resources[{i}].tag", required=False)
        assert url is not None
        images.append(PushedImage(pushed_reference(url, digest, tag)))
    return tuple(dict.fromkeys(images))  # the same artifact listed twice is one conversion


def parse_harbor_default(payload: Any) -> WebhookEvent:
    doc = _object(payload, "payload")
    event_type = _string(doc.get("type"), "type")
    assert event_type is not None
    if event_type != HARBOR_PUSH_TYPE:
        return WebhookEvent(SOURCE_HARBOR, event_type, ignored=(f"event type {event_type} is not a push",))
    return WebhookEvent(SOURCE_HARBOR, event_type, _harbor_images(doc.get("event_data"), "event_data"))


def parse_cloudevent(payload: Any) -> WebhookEvent:
    doc = _object(payload, "payload")
    spec = _string(doc.get("specversion"), "specversion")
    if spec != "1.0":
        raise InvalidWebhook(f"specversion {spec!r} is not supported (expected 1.0)")
    event_type = _string(doc.get("type"), "type")
    assert event_type is not None
    if event_type != CLOUDEVENTS_PUSH_TYPE:
        return WebhookEvent(
            SOURCE_CLOUDEVENTS, event_type, ignored=(f"event type {event_type} is not a push",)
        )
    return WebhookEvent(SOURCE_CLOUDEVENTS, event_type, _harbor_images(doc.get("data"), "data"))


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


# What a Harbor webhook may be sent as (Harbor sends JSON; none given is taken as JSON too, as curl users do).
HARBOR_CONTENT_TYPES = ("application/json", CLOUDEVENTS_CONTENT_TYPE, "text/json")


def parse_harbor(body: bytes, content_type: str | None = None) -> WebhookEvent:
    """Harbor's Default or CloudEvents payload, told apart by content type or, failing that, by shape."""
    media_type = _media_type(content_type)
    if media_type and media_type not in HARBOR_CONTENT_TYPES:
        raise InvalidWebhook(
            f"content type {media_type} is not a Harbor payload ({', '.join(HARBOR_CONTENT_TYPES)})"
        )
    payload = decode_json(body)
    if _media_type(content_type) == CLOUDEVENTS_CONTENT_TYPE or (
        isinstance(payload, dict) and "specversion" in payload
    ):
        return parse_cloudevent(payload)
    return parse_harbor_default(payload)


def _event_registry(event: Mapping[str, Any], where: str) -> str:
    request = event.get("request")
    if request is not None:
        host = _string(_object(request, f"{where}.request").get("host"), f"{where}.request.host", False)
        if host:
            return host
    url = _string(_object(event["target"], f"{where}.target").get("url"), f"{where}.target.url", False)
    if url:
        host = urlsplit(url).netloc
        if host:
            return host
    raise InvalidWebhook(f"{where} names no registry host (request.host or target.url)")


def parse_distribution(body: bytes, content_type: str | None = None) -> WebhookEvent:
    """distribution's notification envelope: only tagged manifest/index pushes are images to convert.

    Untagged manifest pushes are the children of an index (or digest-only pushes); the index push that
    follows names the image. Blob pushes and pulls are not images.
    """
    media_type = _media_type(content_type)
    if media_type and media_type not in (*DISTRIBUTION_CONTENT_TYPES, "application/json"):
        raise InvalidWebhook(
            f"content type {media_type} is not a distribution envelope "
            f"({', '.join(DISTRIBUTION_CONTENT_TYPES)})"
        )
    doc = _object(decode_json(body), "envelope")
    events = _list(doc.get("events"), "events")
    images: list[PushedImage] = []
    ignored: list[str] = [] if events else ["the envelope holds no events"]
    for i, item in enumerate(events):
        where = f"events[{i}]"
        event = _object(item, where)
        action = _string(event.get("action"), f"{where}.action")
        target = _object(event.get("target"), f"{where}.target")
        target_type = _string(target.get("mediaType"), f"{where}.target.mediaType", required=False)
        if action != "push":
            ignored.append(f"{where}: action {action} is not a push")
            continue
        if target_type not in mt.ALL_MANIFEST_TYPES:
            what = target_type or "unknown media type"
            ignored.append(f"{where}: {what} is not an image manifest or index")
            continue
        repository = _string(target.get("repository"), f"{where}.target.repository")
        digest = _string(target.get("digest"), f"{where}.target.digest", required=False) or None
        tag = _string(target.get("tag"), f"{where}.target.tag", required=False) or None
        if not tag:
            ignored.append(f"{where}: untagged manifest push (index child or push by digest)")
            continue
        registry = _event_registry(event, where)
        images.append(PushedImage(pushed_reference(f"{registry}/{repository}:{tag}", digest, tag)))
    return WebhookEvent(
        SOURCE_DISTRIBUTION, "push", tuple(dict.fromkeys(images)), ignored=tuple(dict.fromkeys(ignored))
    )
