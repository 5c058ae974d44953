"""The FastAPI app: webhooks in, conversion tasks out.

Harbor's webhook client gives up after 3 seconds, so the webhook path does only parsing, checks and one
call to the backend (creating a flow run); `?sync=true` is for `accelctl task create --sync`, which waits.
Every refusal is a 4xx with a reason: a malformed body must never look like a server fault. Error bodies
carry acceld's `code` (ERR_…) and `message` beside accel's `status` and `reason`, so clients of the Go
service (its accelctl prints `message`) read them.

Requests that arrive over `server.uds` (see `LOCAL_SOCKET`) need no webhook Authorization header: whoever
may open the socket file (0600/0660) is trusted, which is how the Go accelctl's header-less requests are
served without opening the network to unauthenticated ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from accel.config import Settings
from accel.errors import AccelError
from accel.plan import is_own_output, plan_conversion
from accel.reference import Reference
from service.api.conversions import (
    COMPLETED,
    BackendUnavailable,
    ConversionBackend,
    ConversionTask,
    SubmitRequest,
    TaskNotFound,
)
from service.intake import IntakeJournal, JournalUnavailable
from service.metrics import Metrics
from service.webhook import (
    MAX_BODY_BYTES,
    SOURCE_DISTRIBUTION,
    SOURCE_HARBOR,
    InvalidWebhook,
    PushedImage,
    WebhookEvent,
    parse_distribution,
    parse_harbor,
)

log = logging.getLogger("acceld.api")
T = TypeVar("T")

# Resolves a tag to the digest it names now (a registry HEAD), so a tag-only request is keyed by content.
TagPinner = Callable[[Reference], Awaitable[Reference]]

# acceld's error codes (pkg/errdefs; ERR_INVALID_ENDPOINT from its router). ERR_ALREADY_CONVERTED and
# ERR_SAME_TAG never reach an HTTP body in acceld (it answers 200 and skips); here those pushes are answered
# 200 `ignored` with the reason.
ERR_ILLEGAL_PARAMETER = "ERR_ILLEGAL_PARAMETER"
ERR_UNAUTHORIZED = "ERR_UNAUTHORIZED"
ERR_CONVERT_FAILED = "ERR_CONVERT_FAILED"
ERR_ALREADY_CONVERTED = "ERR_ALREADY_CONVERTED"
ERR_UNHEALTHY = "ERR_UNHEALTHY"
ERR_SAME_TAG = "ERR_SAME_TAG"
ERR_INVALID_ENDPOINT = "ERR_INVALID_ENDPOINT"
_CODE_BY_STATUS = {
    400: ERR_ILLEGAL_PARAMETER,
    401: ERR_UNAUTHORIZED,
    403: ERR_UNAUTHORIZED,  # acceld refuses a registry it has no config for as unauthorised
    404: ERR_INVALID_ENDPOINT,
    405: ERR_INVALID_ENDPOINT,
    500: ERR_CONVERT_FAILED,
    503: ERR_UNHEALTHY,
}
# ASGI scope extension set on requests that came in over the unix socket (`server.uds`).
LOCAL_SOCKET = "accel.local_socket"

DEFAULT_SYNC_TIMEOUT = 3600.0
ANSWER_WITHIN = 2.0  # seconds; Harbor's webhook client times out after 3
# A backstop: the Prefect backend answers 503 within 4 s when Prefect is silent (its first read is bounded);
# describing many runs of a busy server may take longer than that and is not cut off before this.
READ_WITHIN = 60.0
MAX_LIST = 1000
MAX_AUTHORIZATION = (
    8192  # characters; longer is refused with 431 (the server reads headers up to MAX_HEADERS)
)
MAX_HEADERS = 2 << 20  # bytes of a request's headers the server reads before it answers at all
REPLAY_EVERY = 60.0  # seconds between replays of the intake journal's unsettled requests


@dataclass(frozen=True)
class CreationRetry:
    """How a pending run creation is retried while the orchestrator fails it: after `first_delay` seconds,
    then doubling up to `max_delay`, for `retry_for` seconds in all (tests pass tiny delays)."""

    retry_for: float = 600.0
    first_delay: float = 1.0
    max_delay: float = 30.0


class _Refused(Exception):
    """A webhook request refused with `status`; `result` is the metric label."""

    def __init__(self, status: int, result: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.result = result
        self.reason = reason


def _error(status: int, reason: str, code: str | None = None, **extra: Any) -> JSONResponse:
    code = code or _CODE_BY_STATUS.get(status, ERR_ILLEGAL_PARAMETER if status < 500 else ERR_UNHEALTHY)
    body = {"status": status, "reason": reason, "code": code, "message": reason, **extra}
    return JSONResponse(body, status_code=status)


def over_local_socket(scope: MutableMapping[str, Any]) -> bool:
    return LOCAL_SOCKET in (scope.get("extensions") or {})


Asgi = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any
]


def local_socket_app(app: Asgi) -> Asgi:
    """`app` as served on the unix socket: its requests are marked `LOCAL_SOCKET`."""

    async def marked(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = dict(scope)
            scope["extensions"] = {**(scope.get("extensions") or {}), LOCAL_SOCKET: {}}
        await app(scope, receive, send)

    return marked


# Not API requests: `/metrics` (echo-contrib skips it too) and accel's own probes, which the Go service has
# not (a kubelet probing them every few seconds would swamp the request counters Go's dashboards read).
UNCOUNTED_PATHS = frozenset({"/metrics", "/readyz", "/livez"})


class AcceldApiMetrics:
    """ASGI middleware: acceld's API metrics per request, as echo-contrib's middleware records them."""

    def __init__(self, app: Asgi, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in UNCOUNTED_PATHS:
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        status = 500
        sent = 0

        async def counting_send(message: Any) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = getattr(scope.get("route"), "path", None)
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers") or ()]
            host = next((v for k, v in headers if k.lower() == "host"), "")
            self.metrics.api_request(
                status,
                scope.get("method", ""),
                host,
                route or scope.get("path", ""),
                time.monotonic() - start,
                _approximate_request_size(scope, headers, host),
                sent,
            )


def _approximate_request_size(
    scope: MutableMapping[str, Any], headers: list[tuple[str, str]], host: str
) -> int:
    """Go's estimate: path, method, protocol, header names and values (Host apart), host, Content-Length."""
    size = len(scope.get("path", "")) + len(scope.get("method", ""))
    size += len(f"HTTP/{scope.get('http_version', '1.1')}")
    size += sum(len(k) + len(v) for k, v in headers if k.lower() != "host") + len(host)
    length = next((v for k, v in headers if k.lower() == "content-length"), None)
    if length is not None and length.isdigit():
        size += int(length)
    return size


async def _read_body(request: Request) -> bytes:
    """At most MAX_BODY_BYTES, without buffering a bigger body first."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _Refused(400, "invalid", "Content-Length is not a number")
        if int(declared) > MAX_BODY_BYTES:
            raise _Refused(400, "invalid", f"body is {declared} bytes; the limit is {MAX_BODY_BYTES}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _Refused(400, "invalid", f"body exceeds the limit of {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class Api:
    """Request handling with its dependencies; `create_app` wires it into FastAPI routes."""

    def __init__(
        self,
        settings: Settings,
        backend: ConversionBackend,
        metrics: Metrics | None,
        sync_timeout: float = DEFAULT_SYNC_TIMEOUT,
        pin: TagPinner | None = None,
        answer_within: float = ANSWER_WITHIN,
        creation_retry: CreationRetry = CreationRetry(),
        journal: IntakeJournal | None = None,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.pin = pin
        self.backend = backend
        self.metrics = metrics
        self.sync_timeout = sync_timeout
        self.answer_within = answer_within
        self.creation_retry = creation_retry
        self._background: set[asyncio.Future[ConversionTask | None]] = set()
        self._in_flight: set[int] = set()  # journal entries whose creation is under way in this process

    async def _submit(self, source: str, image: PushedImage) -> ConversionTask:
        request = self.submit_request(await self._pinned(image))
        task = await self.backend.submit(request)
        log.info("%s push of %s → task %s", source, image.reference, task.id)
        return task

    async def _submit_recorded(self, source: str, image: PushedImage, entry: int | None) -> ConversionTask:
        """`_submit`, with the outcome written to the intake journal entry (when there is one)."""
        if entry is None or self.journal is None:
            return await self._submit(source, image)
        journal = self.journal
        try:
            task = await self._submit(source, image)
        except BackendUnavailable as exc:  # the orchestrator, not the request: tried again later
            with contextlib.suppress(JournalUnavailable):
                await asyncio.to_thread(journal.attempt, entry, f"{type(exc).__name__}: {exc}")
            raise
        except Exception as exc:  # the request itself cannot become a run: replaying it would not help
            with contextlib.suppress(JournalUnavailable):
                await asyncio.to_thread(journal.settle, entry, None, f"{type(exc).__name__}: {exc}")
            raise
        try:
            await asyncio.to_thread(journal.settle, entry, task.id)
        except JournalUnavailable as exc:  # the run exists; a replay would find it by its idempotency key
            log.warning("%s", exc)
        return task

    def _in_background(
        self, job: asyncio.Future[ConversionTask], source: str, image: PushedImage, entry: int | None
    ) -> None:
        """Keep creating `image`'s run after the answer went out (see `_keep_trying`)."""
        if entry is not None:
            self._in_flight.add(entry)
        keeper = asyncio.ensure_future(self._keep_trying(job, source, image, entry))
        self._background.add(keeper)
        keeper.add_done_callback(self._background.discard)
        if entry is not None:
            keeper.add_done_callback(lambda _: self._in_flight.discard(entry))

    def background_jobs(self) -> list[asyncio.Future[ConversionTask | None]]:
        return list(self._background)

    async def replay(self) -> int:
        """Submit again every journal entry without a flow run that no creation in this process is working
        on: requests an earlier acceld accepted and died before creating, and ones whose creation gave up
        while the orchestrator was down. Returns how many were started."""
        if self.journal is None:
            return 0
        try:
            entries = await asyncio.to_thread(self.journal.unsettled)
        except JournalUnavailable as exc:
            log.error("%s", exc)
            return 0
        started = 0
        for entry in entries:
            if entry.id in self._in_flight:
                continue
            image = PushedImage(Reference.parse(entry.reference))
            log.info(
                "replaying the accepted %s push of %s (journal entry %d)",
                entry.source,
                image.reference,
                entry.id,
            )
            job = asyncio.ensure_future(self._submit_recorded(entry.source, image, entry.id))
            self._in_background(job, entry.source, image, entry.id)
            started += 1
        return started

    async def replay_forever(self, every: float = REPLAY_EVERY) -> None:
        while True:
            await self.replay()
            if self.journal is not None:
                with contextlib.suppress(JournalUnavailable):
                    await asyncio.to_thread(self.journal.forget_settled)
            await asyncio.sleep(every)

    async def _pinned(self, image: PushedImage) -> PushedImage:
        """A tag-only image pinned to the digest its tag names now: a re-pushed tag is a new conversion,
        not the old run's answer. When the registry cannot say, the tag goes on unpinned (its run resolves
        it, and a failed run does not block the next request)."""
        if image.reference.digest is not None or self.pin is None:
            return image
        try:
            return PushedImage(await self.pin(image.reference))
        except Exception as exc:
            log.warning("cannot resolve %s to a digest (%s); submitting the tag", image.reference, exc)
            return image

    async def _keep_trying(
        self, job: asyncio.Future[ConversionTask], source: str, image: PushedImage, entry: int | None = None
    ) -> ConversionTask | None:
        """A creation the caller was answered `pending` for: it must not be lost when the orchestrator
        fails it (a busy Prefect answers 503). Retried with backoff as `creation_retry` says (the
        idempotency key makes a repeat harmless); giving up is logged with the image, and a journalled
        request stays in the journal for the next replay."""
        loop = asyncio.get_running_loop()
        retry = self.creation_retry
        deadline = loop.time() + retry.retry_for
        delay = retry.first_delay
        while True:
            try:
                return await job
            except BackendUnavailable as exc:
                if loop.time() + delay > deadline:
                    kept = f"; it stays in the intake journal (entry {entry})" if entry is not None else ""
                    log.error(
                        "gave up creating the conversion of %s for now: %s%s", image.reference, exc, kept
                    )
                    return None
                log.warning(
                    "creating the conversion of %s failed (%s); retrying in %.0fs",
                    image.reference,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, retry.max_delay)
                job = asyncio.ensure_future(self._submit_recorded(source, image, entry))
            except Exception:
                log.exception("creating the conversion of %s failed", image.reference)
                return None

    def _count(self, source: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.webhook_request(source, result)

    def _authenticated(self, authorization: str | None, local: bool = False) -> bool:
        """Whether the Authorization header is some configured host's `webhook.auth_header`. Checked
        before the body is read; without it a request may only name hosts that explicitly allow
        unauthenticated webhooks, so a caller without credentials learns nothing about the others. Requests
        over the unix socket (`local`) are authorised by the socket's file permissions instead."""
        if local:
            return True
        if authorization is not None and len(authorization) > MAX_AUTHORIZATION:
            raise _Refused(431, "invalid", f"Authorization header longer than {MAX_AUTHORIZATION} characters")
        given = (authorization or "").encode()
        secrets = [h.webhook.secret for h in self.settings.provider.source.values()]
        # Compared with every secret (no early exit): the time taken says nothing about which matched.
        matches = [hmac.compare_digest(given, s.encode()) for s in secrets if s is not None]
        if any(matches):
            return True
        if not self.settings.unauthenticated_hosts():
            raise self._unauthorized(authorization)
        return False

    def may_read(self, authorization: str | None, local: bool) -> bool:
        """Whether a read of the API (task list, a task, metrics, the schema) is allowed: over the unix
        socket, with any configured host's `webhook.auth_header`, or when no host has one to check (every
        host allows unauthenticated webhooks, so there is nothing to authenticate with)."""
        if local:
            return True
        secrets = [h.webhook.secret for h in self.settings.provider.source.values() if h.webhook.secret]
        if not secrets:
            return True
        given = (authorization or "").encode()
        return any([hmac.compare_digest(given, s.encode()) for s in secrets])

    @staticmethod
    def _unauthorized(authorization: str | None) -> _Refused:
        what = "missing" if not authorization else "not accepted"
        return _Refused(401, "unauthorized", f"Authorization header {what}")

    def _require_open_hosts(self, event: WebhookEvent, authorization: str | None) -> None:
        """An unauthenticated event may name only hosts configured with `allow_unauthenticated`."""
        open_hosts = set(self.settings.unauthenticated_hosts())
        if any(i.registry not in open_hosts for i in event.images):
            raise self._unauthorized(authorization)
        if not event.images and open_hosts != set(self.settings.provider.source):
            raise self._unauthorized(authorization)  # an event naming no image: only if no host needs auth

    def _check_access(
        self, images: tuple[PushedImage, ...], authorization: str | None, local: bool = False
    ) -> None:
        """After authentication: unknown registry → 403 (never pull from one); a host whose auth_header
        the header does not match → 403 (authenticated, but for another registry) — unless the request came
        over the unix socket (`local`), whose file permissions decide who may call."""
        for registry in sorted({i.registry for i in images}):
            host = self.settings.host(registry)
            if host is None:
                raise _Refused(403, "forbidden", f"registry {registry} is not configured in provider.source")
            if local:
                continue
            expected = host.webhook.secret
            if expected is None:
                if not host.webhook.allow_unauthenticated:
                    raise _Refused(
                        403, "forbidden", f"registry {registry} has no webhook.auth_header configured"
                    )
                continue
            if not hmac.compare_digest((authorization or "").encode(), expected.encode()):
                raise _Refused(
                    403, "forbidden", f"the Authorization header is not the one of registry {registry}"
                )

    def submit_request(self, image: PushedImage) -> SubmitRequest:
        plan = plan_conversion(self.settings, image.reference)
        return SubmitRequest(
            image.reference,
            plan.drivers,
            plan.target_repository,
            plan.idempotency_key,
            plan.target_names(),
        )

    async def accept(
        self,
        event: WebhookEvent,
        authorization: str | None,
        sync: bool,
        authenticated: bool = True,
        local: bool = False,
    ) -> JSONResponse:
        if not authenticated:
            self._require_open_hosts(event, authorization)
        if not event.images:
            self._count(event.source, "ignored")
            return JSONResponse({"status": "ignored", "reason": "; ".join(event.ignored), "tasks": []})
        self._check_access(event.images, authorization, local)
        wanted = [i for i in event.images if not is_own_output(self.settings, i.reference)]
        ignored = list(event.ignored) + [
            f"{i.reference} is accel's own output (converted image, referrers index or cache tag)"
            for i in event.images
            if i not in wanted
        ]
        if len(wanted) < len(event.images):
            log.info("ignored: %s", "; ".join(ignored))
        if not wanted:
            self._count(event.source, "ignored")
            return JSONResponse({"status": "ignored", "reason": "; ".join(ignored), "tasks": []})
        if sync:
            return await self._accept_and_wait(event.source, wanted)
        # Harbor waits 3 s at most and does not resend a 2xx. A slow orchestrator must not turn into a
        # timeout there, nor a dying acceld into a lost push: each image is journalled before anything else
        # (or the request is refused with 503, to be sent again), and creation goes on in the background
        # (the idempotency key makes a repeat harmless).
        entries: list[int | None] = [None] * len(wanted)
        if self.journal is not None:
            journal = self.journal
            try:
                entries = list(
                    await asyncio.to_thread(journal.record, event.source, [str(i.reference) for i in wanted])
                )
            except JournalUnavailable as exc:
                raise _Refused(503, "unavailable", f"{exc}; nothing was accepted, send it again") from None
        # In flight from here: a replay in the meantime must not submit them a second time.
        self._in_flight.update(e for e in entries if e is not None)
        submissions = [
            asyncio.ensure_future(self._submit_recorded(event.source, i, e))
            for i, e in zip(wanted, entries, strict=True)
        ]
        _, pending = await asyncio.wait(submissions, timeout=self.answer_within)
        for job in pending:
            index = submissions.index(job)
            self._in_background(job, event.source, wanted[index], entries[index])
        # Every image ends in exactly one of: tasks (its run exists), pending (being created, and journalled
        # when there is a journal), refused (it can never become a run here: the reason says why).
        tasks: list[ConversionTask] = []
        waiting = [index for index, job in enumerate(submissions) if job in pending]
        refused: list[tuple[int, BaseException]] = []
        for index, job in enumerate(submissions):
            if job in pending:
                continue
            error = job.exception()
            if isinstance(error, BackendUnavailable) and entries[index] is not None:
                # Journalled, so durable: pending, not failed (retried from here and by the replay).
                self._in_background(job, event.source, wanted[index], entries[index])
                waiting.append(index)
                continue
            if (entry := entries[index]) is not None:
                self._in_flight.discard(entry)  # settled: its run exists, or it was refused
            if error is None:
                tasks.append(job.result())
            else:
                refused.append((index, error))
        reasons = [
            {"reference": str(wanted[index].reference), "reason": _one_line(error)}
            for index, error in refused
        ]
        for reason in reasons:
            log.warning("%s push of %s refused: %s", event.source, reason["reference"], reason["reason"])
        if not tasks and not waiting:
            unavailable = [e for _, e in refused if isinstance(e, BackendUnavailable)]
            if unavailable:
                raise unavailable[0]  # 503: nothing was recorded, the sender retries
            self._count(event.source, "refused")
            return _error(
                422, "; ".join(f"{r['reference']}: {r['reason']}" for r in reasons), refused=reasons
            )
        self._count(event.source, "accepted")
        return JSONResponse(
            {
                "status": "accepted",
                "tasks": [_task_json(t) for t in tasks],
                "pending": [str(wanted[index].reference) for index in sorted(waiting)],
                "ignored": ignored,
                "refused": reasons,
            },
            status_code=202,
        )

    async def _accept_and_wait(self, source: str, wanted: list[PushedImage]) -> JSONResponse:
        """`?sync=true`: create the runs and answer with their outcome (the caller sees any failure, so
        nothing is journalled)."""
        submissions = [asyncio.ensure_future(self._submit(source, i)) for i in wanted]
        tasks = list(await asyncio.gather(*submissions))
        finished = [await self.backend.wait(t.id, self.sync_timeout) for t in tasks]
        ok = all(t.status == COMPLETED for t in finished)
        self._count(source, "completed" if ok else "failed")
        body = {"status": "completed" if ok else "failed", "tasks": [_task_json(t) for t in finished]}
        if not ok:
            body["reason"] = "; ".join(f"{t.source}: {t.reason or t.status}" for t in finished if t.reason)
            body |= {"code": ERR_CONVERT_FAILED, "message": body["reason"]}
        # acceleration-service answers a failed synchronous conversion with 500; unfinished ones stay 202.
        if any(t.status == "PROCESSING" for t in finished):
            return JSONResponse(body, status_code=202)
        return JSONResponse(body, status_code=200 if ok else 500)

    async def webhook(
        self, request: Request, source: str, parse: Callable[[bytes, str | None], WebhookEvent]
    ) -> JSONResponse:
        try:
            authorization = request.headers.get("authorization")
            local = over_local_socket(request.scope)
            authenticated = self._authenticated(authorization, local)  # before anything else is looked at
            body = await _read_body(request)
            try:
                event = parse(body, request.headers.get("content-type"))
            except InvalidWebhook as exc:
                raise _Refused(400, "invalid", str(exc)) from None
            return await self.accept(
                event,
                authorization,
                _flag(request.query_params.get("sync")),
                authenticated,
                local=local,
            )
        except _Refused as exc:
            self._count(source, exc.result)
            log.warning("webhook refused (%d): %s", exc.status, exc.reason)
            return _error(exc.status, exc.reason)
        except BackendUnavailable as exc:
            self._count(source, "unavailable")
            log.error("webhook accepted but the orchestrator is unavailable: %s", exc)
            return _error(503, f"orchestrator unavailable: {exc}")


async def _in_time(read: Awaitable[T]) -> T:
    """A backend read, or BackendUnavailable (503) when the orchestrator does not answer in READ_WITHIN."""
    try:
        return await asyncio.wait_for(read, timeout=READ_WITHIN)
    except TimeoutError:
        raise BackendUnavailable(f"no answer within {READ_WITHIN:g} s") from None


def _one_line(error: BaseException) -> str:
    """Why a request was refused, on one line: an accel error as it is, anything else with its type."""
    text = " ".join(str(error).split())
    return text if isinstance(error, AccelError) else f"{type(error).__name__}: {text}"


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _task_json(task: ConversionTask) -> dict[str, Any]:
    return task.model_dump(mode="json")


def work_dir_problem(work_dir: Path) -> str | None:
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=work_dir, prefix=".readyz-"):
            pass
    except OSError as exc:
        return f"work dir {work_dir} is not writable: {exc.strerror or exc}"
    return None


def create_app(
    settings: Settings,
    backend: ConversionBackend,
    metrics: Metrics | None = None,
    *,
    sync_timeout: float = DEFAULT_SYNC_TIMEOUT,
    background: Callable[[], Any] | None = None,
    pin: TagPinner | None = None,
    readiness: Callable[[], list[str]] | None = None,
    answer_within: float = ANSWER_WITHIN,
    creation_retry: CreationRetry = CreationRetry(),
    journal: IntakeJournal | None = None,
    replay_every: float = REPLAY_EVERY,
) -> FastAPI:
    """`background`: a coroutine function run for the app's lifetime (e.g. the metrics poller); `pin`:
    how tag-only requests learn their digest (None: they stay tag-only); `readiness`: more problems for
    /readyz (e.g. a crash-looping runner); `answer_within`: how long a webhook waits for its run creations
    before answering them `pending`; `creation_retry`: how a pending creation is retried; `journal`: where
    accepted webhooks are recorded before they are answered (replayed at start and every `replay_every`
    seconds; None: not recorded, as in tests of other things)."""
    if metrics is None and settings.metric.enabled:
        metrics = Metrics(settings.server.name)
    api = Api(settings, backend, metrics, sync_timeout, pin, answer_within, creation_retry, journal)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        jobs = [asyncio.create_task(background())] if background else []
        if journal is not None:
            jobs.append(asyncio.create_task(api.replay_forever(replay_every)))
        try:
            yield
        finally:
            # Creations still waiting on the orchestrator stop with acceld: their requests are journalled
            # (replayed by the next start) or were answered with their outcome.
            for job in [*jobs, *api.background_jobs()]:
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await job
            close = getattr(backend, "aclose", None)
            if close is not None:
                await close()

    app = FastAPI(
        title="acceld", version="v1", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.api = api
    if metrics is not None:
        app.add_middleware(AcceldApiMetrics, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, "; ".join(str(e.get("msg")) for e in exc.errors()) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(BackendUnavailable)
    async def _unavailable(request: Request, exc: BackendUnavailable) -> JSONResponse:
        return _error(503, f"orchestrator unavailable: {exc}")

    @app.post("/api/v1/conversions")
    async def create_conversion(request: Request) -> JSONResponse:
        return await api.webhook(request, SOURCE_HARBOR, parse_harbor)

    @app.post("/api/v1/notifications/distribution")
    async def distribution_notification(request: Request) -> JSONResponse:
        return await api.webhook(request, SOURCE_DISTRIBUTION, parse_distribution)

    def refused_read(request: Request) -> JSONResponse | None:
        """401 for a read without the webhook Authorization header (see `Api.may_read`)."""
        if api.may_read(request.headers.get("authorization"), over_local_socket(request.scope)):
            return None
        what = "missing" if not request.headers.get("authorization") else "not accepted"
        return _error(
            401, f"Authorization header {what} (reads take a webhook auth_header, or the unix socket)"
        )

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> Response:
        return refused_read(request) or JSONResponse(app.openapi())

    @app.get("/api/v1/conversions")
    async def list_conversions(request: Request, limit: int = 200) -> JSONResponse:
        if refused := refused_read(request):
            return refused
        if not 1 <= limit <= MAX_LIST:
            return _error(400, f"limit must be between 1 and {MAX_LIST}")
        return JSONResponse([_task_json(t) for t in await _in_time(backend.list(limit))])

    @app.get("/api/v1/conversions/{task_id}")
    async def get_conversion(request: Request, task_id: str) -> JSONResponse:
        if refused := refused_read(request):
            return refused
        try:
            return JSONResponse(_task_json(await _in_time(backend.get(task_id))))
        except TaskNotFound:
            return _error(404, f"no conversion task {task_id}", code=ERR_ILLEGAL_PARAMETER)

    @app.get("/api/v1/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/livez")
    async def livez() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        problems = []
        work_problem = work_dir_problem(settings.provider.work_dir)
        if work_problem:
            problems.append(work_problem)
        try:
            problems += await asyncio.wait_for(backend.problems(), timeout=5)
        except TimeoutError:
            problems.append("orchestrator did not answer within 5 s")
        if readiness is not None:
            problems += readiness()
        if problems:
            body = {
                "status": "not ready",
                "problems": problems,
                "code": ERR_UNHEALTHY,
                "message": "; ".join(problems),
            }
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ready"})

    if metrics is not None:
        registered = metrics

        @app.get("/metrics")
        async def prometheus_metrics(request: Request) -> Response:
            if not settings.metric.open and (refused := refused_read(request)):
                return refused
            return Response(registered.render(), media_type=registered.content_type)

    log.debug("acceld API ready (pid %d)", os.getpid())
    return app
