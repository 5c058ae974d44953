"""accelctl: one-time conversions (`convert`), their local server (`server`), task management against a
running acceld (`task`) and config checks (`config check FILE`: what acceld would ignore is an error here).

Only the standard library is imported at module level: parsing and input checks run before any Prefect
import, and `convert` normally hands the run to the warm local runner (service/local.py).

acceld is reached over HTTP (`--server http://host:port`, or acceld's own `--addr host:port`) or over its
unix socket (`--server unix:/run/accel/acceld.sock`; with `--config`, `server.uds` is used when set), where
no Authorization header is needed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.onetime import check_request, describe_failure
from service.state import use_embedded_prefect

# accel.transports' local transports, spelled here so the client needs no engine import.
LOCAL_TRANSPORT_PREFIXES = ("oci:", "oci-archive:", "docker-archive:")


def _absolute_location(text: str | None) -> str | None:
    """A local transport's relative path made absolute, from this process's working directory: the runner
    works in another one. Registry references are left as they are."""
    if text is None or not text.startswith(LOCAL_TRANSPORT_PREFIXES):
        return text
    scheme, _, rest = text.partition(":")
    return text if not rest or rest.startswith("/") else f"{scheme}:{os.path.join(os.getcwd(), rest)}"


def _check_request(args: argparse.Namespace) -> str | None:
    return check_request(args.source, args.config, args.driver, args.target)


def _convert(args: argparse.Namespace) -> int:
    if os.environ.get("PREFECT_API_URL") or args.in_process:
        if (error := _check_request(args)) is not None:
            print(f"accelctl: conversion of {args.source} failed: {error}", file=sys.stderr)
            return 1
        return _convert_in_process(args)
    return _convert_on_local_runner(args)


def _convert_in_process(args: argparse.Namespace) -> int:
    """The flow in this process, against PREFECT_API_URL (else Prefect's temporary server)."""
    use_embedded_prefect()
    from flows.convert_image import convert_image

    try:
        result = convert_image(
            source=args.source,
            drivers=args.driver or None,
            config=args.config,
            target=args.target,
            return_state=False,
        )
    except Exception as exc:  # Prefect re-raises the task's exception; name it, don't dump a trace
        print(f"accelctl: conversion of {args.source} failed: {describe_failure(exc)}", file=sys.stderr)
        return 1
    for t in result.targets:
        print(f"{t.driver}\t{t.reference}\t{t.digest}")
    return 0


def _check(args: argparse.Namespace) -> int:
    """Prove TARGET against SOURCE (accel.verify): the verdict table; exit 1 on any difference."""
    from accel.errors import AccelError
    from accel.registry import RegistryClient
    from accel.transports import Transports, parse_location
    from accel.verify import verify_image

    try:
        source, target = parse_location(args.source), parse_location(args.target)
        if args.config:
            from accel.context import context_for

            ctx = context_for(args.config)
            client, platforms = ctx.client, ctx.settings.converter.platform_filter()
        else:
            client, platforms = RegistryClient(), []
        routes = Transports(client)
        verdict = verify_image(
            routes, source.reference, routes, target.reference, platforms=platforms, mounted_view=True
        )
    except AccelError as exc:
        print(f"accelctl: cannot check {args.target} against {args.source}: {exc}", file=sys.stderr)
        return 2
    print(verdict.table())
    return 0 if verdict.ok else 1


def _convert_on_local_runner(args: argparse.Namespace) -> int:
    """Hand the conversion to the warm local runner (started once, with the local Prefect server) and stream
    its progress; see service/local.py."""
    from service import local

    # Up already: the runner checks the request itself (its engine is imported; this process skips that).
    sock = local.warm_runner()
    if sock is None:
        if (error := _check_request(args)) is not None:
            print(f"accelctl: conversion of {args.source} failed: {error}", file=sys.stderr)
            return 1  # bad input starts nothing
        try:
            server, started = local.ensure_server()
            if started:
                print(f"accelctl: started the local Prefect server at {server.api_url}", file=sys.stderr)
            sock, started = local.ensure_runner(server)
            if started:
                print(
                    "accelctl: started the local runner (stop both with `accelctl server stop`)",
                    file=sys.stderr,
                )
        except local.LocalServiceError as exc:
            print(f"accelctl: {exc}", file=sys.stderr)
            return 1
    request = {
        "source": _absolute_location(args.source),
        "drivers": args.driver or None,
        "config": str(Path(args.config).resolve()),
        "target": _absolute_location(args.target),
    }
    with sock, sock.makefile("rwb") as stream:
        sent = time.time()
        stream.write(json.dumps(request).encode() + b"\n")
        stream.flush()
        for line in stream:
            message = json.loads(line)
            if "log" in message:
                print(message["log"], file=sys.stderr, flush=True)
                continue
            if args.timings and "timings" in message:
                # Where the call's time went, for bench/oneshot.py: one JSON line on stderr.
                timings = {"sent": sent, **message["timings"], "answered": time.time()}
                print(f"accelctl: timings {json.dumps(timings)}", file=sys.stderr)
            if message.get("exit") == 0:
                for driver, reference, digest in message["targets"]:
                    print(f"{driver}\t{reference}\t{digest}")
                return 0
            print(f"accelctl: conversion of {args.source} failed: {message.get('error')}", file=sys.stderr)
            return int(message.get("exit") or 1)
    print(
        f"accelctl: the local runner closed the connection (log: {local.local_dir() / 'runner.log'})",
        file=sys.stderr,
    )
    return 1


def _server_status(args: argparse.Namespace) -> int:
    from service import local

    status = local.status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0 if status["server"] else 3
    server, runner = status["server"], status["runner"]
    print(f"state dir: {status['state_dir']}")
    if isinstance(server, dict):
        health = "healthy" if server["healthy"] else "not answering"
        print(f"Prefect server: running, pid {server['pid']}, {server['api_url']} ({health})")
    else:
        print("Prefect server: not running")
    if isinstance(runner, dict):
        print(f"local runner: running, pid {runner['pid']}, {runner['socket']}")
    else:
        print("local runner: not running")
    return 0 if server else 3


def _server_stop(args: argparse.Namespace) -> int:
    from service import local

    stopped = local.stop()
    print("stopped: " + ", ".join(stopped) if stopped else "nothing was running")
    return 0


def _add_server_commands(sub: Any) -> None:
    server = sub.add_parser("server", help="the local Prefect server and runner of one-time mode")
    server_sub = server.add_subparsers(dest="server_command", required=True)
    status = server_sub.add_parser("status", help="show them (exit 3 when the server is not running)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_server_status)
    stop = server_sub.add_parser("stop", help="stop the local runner and Prefect server")
    stop.set_defaults(func=_server_stop)


DEFAULT_SERVER = "http://127.0.0.1:2077"
UNIX_PREFIX = "unix:"


def _server_and_auth(args: argparse.Namespace, source: str | None = None) -> tuple[str, str | None]:
    """acceld's URL and the webhook Authorization value: flags, then environment, then the config file."""
    server = args.server or os.environ.get("ACCELD_URL")
    auth = args.auth_header or os.environ.get("ACCELD_AUTH_HEADER")
    if args.config and (server is None or auth is None):
        from accel.config import load_file
        from accel.reference import Reference

        settings = load_file(args.config)
        if server is None and settings.server.uds is not None:
            server = f"{UNIX_PREFIX}{settings.server.uds}"  # local, and needs no auth header
        elif server is None:
            host = settings.server.host
            host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            server = f"http://{host}:{settings.server.port}"
        if auth is None and source:
            configured = settings.host(Reference.parse(source).registry)
            if configured is not None and configured.webhook.auth_header is not None:
                auth = configured.webhook.auth_header.get_secret_value()
        elif auth is None:
            # A read (task list/get): any host's header is accepted for it.
            auth = next(
                (
                    h.webhook.auth_header.get_secret_value()
                    for h in settings.provider.source.values()
                    if h.webhook.auth_header
                ),
                None,
            )
    server = (server or DEFAULT_SERVER).rstrip("/")
    if not server.startswith(UNIX_PREFIX) and "://" not in server:
        server = f"http://{server}"  # acceld's accelctl takes host:port (`--addr`)
    return server, auth


def _request(method: str, url: str, **kwargs: Any) -> Any:
    """`url` is the server (http://… or unix:PATH) and the path, e.g. `unix:/run/acceld.sock/api/v1/…`."""
    import httpx

    transport = None
    if url.startswith(UNIX_PREFIX):
        socket_path, _, path = url.removeprefix(UNIX_PREFIX).partition("/api/")
        transport = httpx.HTTPTransport(uds=socket_path)
        url = f"http://localhost/api/{path}"
    try:
        with httpx.Client(transport=transport, timeout=kwargs.pop("timeout", 30.0)) as client:
            resp = client.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise SystemExit(f"accelctl: cannot reach acceld at {url}: {exc}") from None
    try:
        body = resp.json()
    except ValueError:
        body = {"reason": resp.text}
    return resp.status_code, body


def _message(body: Any) -> Any:
    """What went wrong: acceld's `message`, accel's `reason`, else the body."""
    if isinstance(body, dict):
        return body.get("message") or body.get("reason") or body
    return body


def _print_tasks(tasks: list[dict[str, Any]]) -> None:
    print("ID\tSTATUS\tCREATED\tSOURCE\tTARGET\tREASON")
    for t in tasks:
        print(
            f"{t['id']}\t{t['status']}\t{t['created']}\t{t['source']}\t{t.get('target', '')}\t"
            f"{t.get('reason', '')}"
        )


def _task_create(args: argparse.Namespace) -> int:
    """Posts the Harbor payload acceleration-service's own accelctl sends: one resource_url."""
    server, auth = _server_and_auth(args, args.source)
    payload = {"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": args.source}]}}
    headers = {"Authorization": auth} if auth else {}
    status, body = _request(
        "POST",
        f"{server}/api/v1/conversions",
        params={"sync": "true" if args.sync else "false"},
        json=payload,
        headers=headers,
        timeout=None if args.sync else 30.0,
    )
    tasks = body.get("tasks", []) if isinstance(body, dict) else []
    if status >= 400 or (args.sync and any(t["status"] != "COMPLETED" for t in tasks)):
        reason = _message(body)
        print(f"accelctl: acceld answered {status}: {reason}", file=sys.stderr)
        if tasks:
            _print_tasks(tasks)
        return 1
    if not tasks:
        print(f"accelctl: nothing to convert: {body.get('reason', '')}", file=sys.stderr)
        return 0
    if args.sync:
        _print_tasks(tasks)
    else:
        for t in tasks:
            print(t["id"])
    return 0


def _task_list(args: argparse.Namespace) -> int:
    server, auth = _server_and_auth(args)
    headers = {"Authorization": auth} if auth else {}
    status, body = _request(
        "GET", f"{server}/api/v1/conversions", params={"limit": args.limit}, headers=headers
    )
    if status != 200:
        print(f"accelctl: acceld answered {status}: {_message(body)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        _print_tasks(body)
    return 0


def _task_get(args: argparse.Namespace) -> int:
    server, auth = _server_and_auth(args)
    headers = {"Authorization": auth} if auth else {}
    status, body = _request("GET", f"{server}/api/v1/conversions/{args.id}", headers=headers)
    if status != 200:
        print(f"accelctl: acceld answered {status}: {_message(body)}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2))
    return 0


def _add_task_commands(sub: Any) -> None:
    task = sub.add_parser("task", help="conversion tasks on a running acceld")
    task_sub = task.add_subparsers(dest="task_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--server",
            "--addr",
            help="acceld URL, host:port or unix:SOCKET "
            f"(env ACCELD_URL; default from --config or {DEFAULT_SERVER})",
        )
        p.add_argument("--config", help="acceld config: server address and webhook auth header")
        p.add_argument("--auth-header", help="Authorization value (env ACCELD_AUTH_HEADER)")

    create = task_sub.add_parser("create", help="convert SOURCE on acceld")
    common(create)
    create.add_argument("--sync", action="store_true", help="wait for the conversion and print its result")
    create.add_argument("source", help="source image reference, e.g. registry:5000/library/nginx:latest")
    create.set_defaults(func=_task_create)

    listing = task_sub.add_parser("list", help="list conversion tasks, newest first")
    common(listing)
    listing.add_argument("--limit", type=int, default=200)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=_task_list)

    get = task_sub.add_parser("get", help="show one conversion task as JSON")
    common(get)
    get.add_argument("id", help="task id (the Prefect flow run id)")
    get.set_defaults(func=_task_get)


def _config_check(args: argparse.Namespace) -> int:
    """Strict load: unknown keys (which acceld and acceld here only warn about) are errors too."""
    from accel.config import load_file
    from accel.errors import ConfigError

    try:
        load_file(args.file, strict=True)
    except ConfigError as exc:
        print(f"accelctl: {exc}", file=sys.stderr)
        return 1
    print(f"{args.file}: ok")
    return 0


def _add_config_commands(sub: Any) -> None:
    config = sub.add_parser("config", help="acceld config files")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate FILE strictly: unknown keys are errors")
    check.add_argument("file", help="acceld-style YAML config")
    check.set_defaults(func=_config_check)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="accelctl", description="accel command line")
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="convert one image now (one-time mode, no acceld needed)")
    convert.add_argument("--config", required=True, help="acceld-style YAML config")
    convert.add_argument(
        "--driver", action="append", help="driver type (repeatable); default: all configured"
    )
    convert.add_argument(
        "--target",
        help="where to write (oci:DIR[:TAG], oci-archive:FILE[:TAG] or a registry reference); "
        "default: beside the source, tag + the driver's suffix",
    )
    convert.add_argument(
        "--in-process",
        action="store_true",
        help="run the flow in this process (Prefect's temporary server) instead of the local runner",
    )
    # bench/oneshot.py's stage breakdown (local runner only): not part of the documented interface.
    convert.add_argument("--timings", action="store_true", help=argparse.SUPPRESS)
    convert.add_argument(
        "source",
        help="source image: a registry reference (e.g. registry:5000/library/nginx:latest), oci:DIR[:TAG], "
        "oci-archive:FILE[:TAG] or docker-archive:FILE[:REPO:TAG]",
    )
    convert.set_defaults(func=_convert)
    check = sub.add_parser(
        "check", help="prove a converted image against its source: verdict per layer, exit 1 on a difference"
    )
    check.add_argument("--config", help="acceld-style YAML config (registry credentials, platforms)")
    check.add_argument("source", help="the source image (any transport, as for convert)")
    check.add_argument("target", help="the converted image (any transport)")
    check.set_defaults(func=_check)
    _add_server_commands(sub)
    _add_task_commands(sub)
    _add_config_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func is not _convert:
        # `convert` keeps Prefect's own console logging: one line per task run, named after its layer.
        logging.basicConfig(level=logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
