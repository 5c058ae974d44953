"""accelctl: one-time conversions (`convert`), their local server (`server`), task management against a
running acceld (`task`) and config checks (`config check FILE`: what acceld would ignore is an error here).

Only the standard library is imported at module level, and of it only what a call handed to the runner
needs (traceback, logging, importlib.metadata: when used): parsing and input checks run before any Prefect
import, and `convert` normally hands the run to the warm local runner (service/local.py).

acceld is reached over HTTP (`--server http://host:port`, or acceld's own `--addr host:port`) or over its
unix socket (`--server unix:/run/accel/acceld.sock`; with `--config`, `server.uds` is used when set), where
no Authorization header is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from service.onetime import Checked, ExitCode, Failure, check_request, describe_failure, request_overrides
from service.progress import Progress
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


def _fail(what: str, failure: Failure) -> int:
    """The one line of an expected failure (what failed: why), and its exit code."""
    print(f"accelctl: {what} failed: {failure.message}", file=sys.stderr)
    return int(failure.code)


def _warn(warning: str) -> None:
    print(f"accelctl: warning: {warning}", file=sys.stderr, flush=True)


def _check_request(args: argparse.Namespace) -> Checked:
    """The request checked before any Prefect work; the config's warnings shown here."""
    checked = check_request(args.source, args.config, args.driver, args.target, args.access)
    for warning in checked.warnings:
        _warn(warning)
    return checked


def _convert(args: argparse.Namespace) -> int:
    if not args.config:
        print("accelctl: no config: pass --config FILE or set ACCEL_CONFIG", file=sys.stderr)
        return int(ExitCode.USAGE)
    access = _access(args)
    if isinstance(access, Failure):
        return _fail(f"conversion of {args.source}", access)
    args.access = access
    if os.environ.get("PREFECT_API_URL") or args.in_process:
        checked = _check_request(args)
        if checked.failure is not None:
            return _fail(f"conversion of {args.source}", checked.failure)
        return _convert_in_process(args, checked)
    return _convert_on_local_runner(args)


def _access(args: argparse.Namespace) -> dict[str, Any] | Failure:
    """The credentials, TLS and platform flags as the request carries them (`service.onetime.ACCESS_KEYS`),
    a missing password asked for on a terminal, as skopeo does; never put in any process's arguments."""
    access: dict[str, Any] = {
        "src_tls_verify": args.src_tls_verify,
        "dest_tls_verify": getattr(args, "dest_tls_verify", None),
        "platform": _platform(args),
    }
    for side in ("src", "dest"):
        creds = getattr(args, f"{side}_creds", None)
        if creds is not None and ":" not in creds:
            if not creds:
                return Failure(ExitCode.USAGE, f"--{side}-creds: give USER[:PASSWORD]")
            if not sys.stdin.isatty():
                return Failure(
                    ExitCode.USAGE,
                    f"--{side}-creds {creds}: no password, and no terminal to ask for it on: give "
                    "USER:PASSWORD",
                )
            import getpass

            creds = f"{creds}:{getpass.getpass(f'Password for {creds} (--{side}-creds): ')}"
        access[f"{side}_creds"] = creds
    return {key: value for key, value in access.items() if value is not None}


def _platform(args: argparse.Namespace) -> str | None:
    """--override-os/-arch/-variant as one platform; what is not given is this machine's (as skopeo)."""
    os_name, arch, variant = args.override_os, args.override_arch, args.override_variant
    if os_name is None and arch is None and variant is None:
        return None
    import platform

    machine = platform.machine().lower()
    here = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le"}
    parts = [os_name or "linux", arch or here.get(machine, machine), variant]
    return "/".join(p for p in parts if p)


def _tls_verify(text: str) -> bool:
    """`--src-tls-verify=false` and its spellings (Go's strconv.ParseBool, as skopeo reads it)."""
    value = text.strip().lower()
    if value in ("1", "t", "true", "yes"):
        return True
    if value in ("0", "f", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _exit_code(message: dict[str, Any]) -> ExitCode:
    try:
        return ExitCode(int(message.get("exit") or ExitCode.BUG))
    except ValueError:
        return ExitCode.BUG


def _quiet_prefect_console(verbose: bool) -> None:
    """Before Prefect is imported: its console shows the run's logs only with -v; accel's own warnings are
    shown either way, one line each."""
    if verbose:
        return
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "CRITICAL"
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("accelctl: warning: %(message)s"))
    # The config's warnings were shown by the request's check already.
    handler.addFilter(lambda record: record.name != "accel.config")
    logging.getLogger("accel").addHandler(handler)


def _convert_in_process(args: argparse.Namespace, checked: Checked) -> int:
    """The flow in this process, against PREFECT_API_URL (else Prefect's temporary server)."""
    use_embedded_prefect()
    _quiet_prefect_console(args.verbose)
    if args.debug:
        os.environ["ACCEL_DEBUG"] = "1"
    from prefect.exceptions import CancelledRun

    from accel.overrides import overriding
    from flows.convert_image import convert_image
    from tasks import cancel, progress

    cancelled = cancel.RunCancellation()

    def first_ctrl_c(signum: int, frame: Any) -> None:
        # The run ends CANCELLED within a second or so; a second Ctrl-C interrupts this process (and its run).
        # From a thread: the handler may have interrupted this thread inside the token's own lock.
        threading.Thread(target=cancelled.cancel, args=("cancelled (Ctrl-C)",), daemon=True).start()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print(
            f"accelctl: cancelling the conversion of {args.source} (Ctrl-C again to stop at once)",
            file=sys.stderr,
        )

    previous = signal.signal(signal.SIGINT, first_ctrl_c) if _interruptible() else None
    display = Progress(args.source) if _shows_progress(args) else None
    try:
        with (
            cancel.cancellable(cancelled),
            overriding(checked.overrides),
            display or contextlib.nullcontext(),
            progress.watching(display.update) if display else contextlib.nullcontext(),
        ):
            result = convert_image(
                source=args.source,
                drivers=args.driver or None,
                config=args.config,
                target=args.target,
                return_state=False,
            )
    except CancelledRun:
        if not cancelled.cancelled:
            raise
        print(
            f"accelctl: cancelled the conversion of {args.source}: its run ended CANCELLED, nothing pushed",
            file=sys.stderr,
        )
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:  # Prefect re-raises the run's exception
        failure = describe_failure(exc)
        if failure.code is ExitCode.BUG or args.debug:
            import traceback

            traceback.print_exc()
        return _fail(f"conversion of {args.source}", failure)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if result.skipped:
        print(f"accelctl: nothing to convert in {args.source}: {result.skipped}", file=sys.stderr)
    for t in result.targets:
        print(f"{t.driver}\t{t.reference}\t{t.digest}")
    return 0


def _shows_progress(args: argparse.Namespace) -> bool:
    """The live display: on a terminal, without -v (whose log lines would scroll it away)."""
    return sys.stderr.isatty() and not args.verbose and os.environ.get("TERM") != "dumb"


def _interruptible() -> bool:
    """Ctrl-C is ours to handle: in the main thread, and not ignored (as for a shell's background job)."""
    return (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )


def _check(args: argparse.Namespace) -> int:
    """Prove TARGET against SOURCE (accel.verify): the verdict table; exit 1 on any difference."""
    from accel.errors import AccelError
    from accel.registry import RegistryClient
    from accel.transports import Transports, parse_location
    from accel.verify import verify_image

    access = _access(args)
    if isinstance(access, Failure):
        return _fail(f"check of {args.target}", access)
    try:
        overrides = request_overrides(args.source, args.target, access)
        source, target = parse_location(args.source), parse_location(args.target)
        for location, text in ((source, args.source), (target, args.target)):
            if location.path is not None and not location.path.exists():
                return _fail(
                    f"check of {args.target}",
                    Failure(ExitCode.NOT_FOUND, f"{text}: no such file or directory: {location.path}"),
                )
        if args.config:
            from accel.config import check_file
            from accel.context import Context

            checked = check_file(args.config)
            for warning in checked.warnings:
                _warn(warning)
            ctx = Context(overrides.apply(checked.settings) if overrides else checked.settings)
            client, platforms = ctx.client, ctx.settings.converter.platform_filter()
        elif overrides:
            client, platforms = RegistryClient(hosts=overrides.host_configs()), overrides.platforms()
        else:
            client, platforms = RegistryClient(), []
        routes = Transports(client)
        for reference in (source.reference, target.reference):
            routes.resolve(reference)  # a missing image is NOT_FOUND here, not a difference in the verdict
        verdict = verify_image(
            routes, source.reference, routes, target.reference, platforms=platforms, mounted_view=True
        )
    except AccelError as exc:
        if args.debug:
            import traceback

            traceback.print_exc()
        return _fail(f"check of {args.target} against {args.source}", describe_failure(exc))
    print(verdict.table())
    return 0 if verdict.ok else 1


def _convert_on_local_runner(args: argparse.Namespace) -> int:
    """Hand the conversion to the warm local runner (started once, with the local Prefect server) and print
    its answer; see service/local.py."""
    from service import local

    # Up already: the runner checks the request itself (its engine is imported; this process skips that).
    sock = local.warm_runner()
    if sock is None:
        if (failure := _check_request(args).failure) is not None:
            return _fail(f"conversion of {args.source}", failure)  # bad input starts nothing
        try:
            server, sock, server_started, runner_started = local.ensure_services()
            if server_started:
                print(f"accelctl: started the local Prefect server at {server.api_url}", file=sys.stderr)
            if runner_started:
                print(
                    "accelctl: started the local runner (stop both with `accelctl server stop`)",
                    file=sys.stderr,
                )
        except local.LocalServiceError as exc:
            return _fail(f"conversion of {args.source}", Failure(ExitCode.LOCAL_SERVICE, str(exc)))
        checked_here = True
    else:
        checked_here = False
    request = {
        "source": _absolute_location(args.source),
        "drivers": args.driver or None,
        "config": str(Path(args.config).resolve()),
        "target": _absolute_location(args.target),
        # Credentials and flags: over the socket (owner only), never in arguments or flow parameters.
        "access": args.access or None,
        "verbose": bool(args.verbose),
        "debug": bool(args.debug),
        "warnings": not checked_here,  # the runner sends the config's warnings when this call did not
        # A live display on a terminal only: piped output stays the result lines.
        "progress": _shows_progress(args),
    }
    with sock, sock.makefile("rwb") as stream:
        sent = time.time()
        try:
            stream.write(json.dumps(request).encode() + b"\n")
            stream.flush()
        except KeyboardInterrupt:
            print(f"accelctl: interrupted: the conversion of {args.source} was not started", file=sys.stderr)
            return int(ExitCode.INTERRUPTED)
        progress = Progress(args.source) if request["progress"] else None
        run: dict[str, str] = {}  # the flow run's id and API, once the runner has said them
        try:
            with progress or contextlib.nullcontext():
                return _read_answer(args, stream, sent, progress, run)
        except KeyboardInterrupt:
            pass
        # Ctrl-C: the run is the runner's; ask it to cancel, and wait for its answer (a second Ctrl-C leaves).
        print(
            f"accelctl: cancelling the conversion of {args.source} (Ctrl-C again to leave it running)",
            file=sys.stderr,
            flush=True,
        )
        try:
            stream.write(json.dumps({"cancel": True}).encode() + b"\n")
            stream.flush()
            return _read_answer(args, stream, sent, None, run)
        except (KeyboardInterrupt, OSError):
            print(_detached_line(args.source, run), file=sys.stderr)
            return int(ExitCode.INTERRUPTED)


def _detached_line(source: str, run: dict[str, str]) -> str:
    """What a second Ctrl-C prints: the run goes on (until the cancel asked for takes hold), and the command
    that cancels it from anywhere."""
    if "id" not in run:  # the flow run does not exist yet
        how = "`accelctl server stop` ends it"
    else:
        # This environment's prefect, beside this Python (a venv's bin), told which server the run is on.
        beside = Path(sys.executable).with_name("prefect")
        prefect = str(beside) if beside.exists() else "prefect"
        how = f"cancel it with `PREFECT_API_URL={run['api_url']} {prefect} flow-run cancel {run['id']}`"
    return f"accelctl: detached: the conversion of {source} continues in the local runner; {how}"


def _read_answer(
    args: argparse.Namespace, stream: Any, sent: float, progress: Progress | None, run: dict[str, str]
) -> int:
    """The runner's answer: warnings (and logs with -v) as they come, then the result or the failure. The
    flow run's id goes into `run` when the runner says it."""
    from service import local

    for line in stream:
        message = json.loads(line)
        if "run" in message:
            run.update({key: str(value) for key, value in message["run"].items()})
            continue
        if "progress" in message:
            snapshot = message["progress"]
            if progress is not None and isinstance(snapshot, dict) and "layers" in snapshot:
                progress.update(snapshot)  # (a runner started by an older accel sends another form)
            continue
        if "log" in message:
            print(message["log"], file=sys.stderr, flush=True)
            continue
        if "warning" in message:
            _warn(message["warning"])
            continue
        if args.timings and "timings" in message:
            # Where the call's time went, for bench/oneshot.py: one JSON line on stderr.
            timings = {"sent": sent, **message["timings"], "answered": time.time()}
            print(f"accelctl: timings {json.dumps(timings)}", file=sys.stderr)
        if message.get("exit") == 0:
            if message.get("skipped"):
                print(f"accelctl: nothing to convert in {args.source}: {message['skipped']}", file=sys.stderr)
            for driver, reference, digest in message["targets"]:
                print(f"{driver}\t{reference}\t{digest}")
            return 0
        if message.get("traceback"):
            print(message["traceback"].rstrip(), file=sys.stderr)
        if _exit_code(message) is ExitCode.INTERRUPTED:
            print(
                f"accelctl: cancelled the conversion of {args.source}: {message.get('error')}",
                file=sys.stderr,
            )
            return int(ExitCode.INTERRUPTED)
        return _fail(f"conversion of {args.source}", Failure(_exit_code(message), str(message.get("error"))))
    return _fail(
        f"conversion of {args.source}",
        Failure(
            ExitCode.BUG,
            "the local runner closed the connection; this is a bug in accel "
            f"(its traceback is in {local.local_dir() / 'runner.log'})",
        ),
    )


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
    """What acceld said: the Go acceld's `code` and `message`, accel's `reason`, else the body."""
    if isinstance(body, dict):
        if body.get("message") and body.get("code"):
            return f"{body['code']}: {body['message']}"
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
    if status < 400 and not isinstance(body, dict):
        # The Go acceld answers a bare JSON string ("Ok") and no task: say what it said.
        done = "converted" if args.sync else "accepted the conversion of"
        print(f"accelctl: acceld {done} {args.source}: {_message(body)}", file=sys.stderr)
        return 0
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
        _print_tasks(body or [])  # the Go acceld answers `null` for no tasks
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

    def common(p: argparse.ArgumentParser, default: Any) -> None:
        p.add_argument(
            "--server",
            "--addr",
            default=default,
            help="acceld URL, host:port or unix:SOCKET "
            f"(env ACCELD_URL; default from --config or {DEFAULT_SERVER})",
        )
        p.add_argument(
            "--config", default=default, help="acceld config: server address and webhook auth header"
        )
        p.add_argument("--auth-header", default=default, help="Authorization value (env ACCELD_AUTH_HEADER)")

    # Before the subcommand too, as the Go accelctl takes them (`accelctl task --addr H:P create …`); given
    # after it, they win. SUPPRESS: a subcommand that is not given one leaves the task-level value alone.
    common(task, None)
    task_sub = task.add_subparsers(dest="task_command", required=True)

    def common_after(p: argparse.ArgumentParser) -> None:
        common(p, argparse.SUPPRESS)

    create = task_sub.add_parser("create", help="convert SOURCE on acceld")
    common_after(create)
    create.add_argument("--sync", action="store_true", help="wait for the conversion and print its result")
    create.add_argument("source", help="source image reference, e.g. registry:5000/library/nginx:latest")
    create.set_defaults(func=_task_create)

    listing = task_sub.add_parser("list", aliases=["ls"], help="list conversion tasks, newest first")
    common_after(listing)
    listing.add_argument("--limit", type=int, default=200)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=_task_list)

    get = task_sub.add_parser("get", help="show one conversion task as JSON")
    common_after(get)
    get.add_argument("id", help="task id (the Prefect flow run id)")
    get.set_defaults(func=_task_get)


def _config_check(args: argparse.Namespace) -> int:
    """The check every reader of a config makes (accel.config.check_file), strictly: unknown keys (which
    acceld and one-time mode only warn about) are errors, and so is what acceld refuses to start with."""
    from accel.config import check_file
    from accel.errors import ConfigError

    try:
        checked = check_file(args.file, strict=True)
    except ConfigError as exc:
        print(f"accelctl: {exc}", file=sys.stderr)
        return int(ExitCode.FAILED)
    problems = checked.service_problems()
    for problem in problems:
        print(f"accelctl: {args.file}: acceld would refuse to start: {problem}", file=sys.stderr)
    if problems:
        return int(ExitCode.FAILED)
    print(f"{args.file}: ok")
    return 0


def _add_config_commands(sub: Any) -> None:
    config = sub.add_parser("config", help="acceld config files")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser(
        "check",
        help="validate FILE as acceld does, strictly: unknown keys are errors; exit 1 when acceld would "
        "warn about or refuse it",
    )
    default = os.environ.get("ACCEL_CONFIG") or None
    check.add_argument(
        "file",
        nargs="?" if default else None,
        default=default,
        help="acceld-style YAML config ($ACCEL_CONFIG)",
    )
    check.set_defaults(func=_config_check)


def driver_types() -> list[str]:
    """accel's drivers (accel/drivers' subpackages, as `accel.drivers.DRIVER_TYPES` lists them), without
    importing the engine: `--help` and argument parsing stay fast."""
    drivers = Path(__file__).resolve().parent.parent / "accel" / "drivers"
    return sorted(entry.name for entry in os.scandir(drivers) if (Path(entry.path) / "__init__.py").exists())


def _add_access_flags(parser: argparse.ArgumentParser, target: str) -> None:
    """skopeo's registry flags: credentials and TLS verification per side, and the platform."""
    flags = parser.add_argument_group(
        "registry access and platform (as skopeo's; over the config's provider.source.<host> settings)"
    )
    for side, what in (("src", "the source image"), ("dest", target)):
        flags.add_argument(
            f"--{side}-creds",
            metavar="USER[:PASSWORD]",
            help=f"credentials for the registry of {what} (without :PASSWORD, asked for on a terminal); "
            "kept out of the run's parameters and logs",
        )
        flags.add_argument(
            f"--{side}-tls-verify",
            metavar="BOOL",
            type=_tls_verify,  # a value always (--src-tls-verify=false): a bare flag would eat SOURCE
            help=f"verify the TLS certificate of the registry of {what} (false: skip verification; default: "
            "the config's `insecure`)",
        )
    flags.add_argument(
        "--override-os", metavar="OS", help="use this OS's image of a multi-platform source (default linux)"
    )
    flags.add_argument(
        "--override-arch",
        metavar="ARCH",
        help="use this architecture's image of a multi-platform source, e.g. arm64 (default: this "
        "machine's); only that platform is converted",
    )
    flags.add_argument("--override-variant", metavar="VARIANT", help="and this variant, e.g. v8")


class _Parser(argparse.ArgumentParser):
    """A command-line mistake is one line (argparse prints the whole usage first), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(int(ExitCode.USAGE), f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _VersionAction(argparse.Action):
    """`--version`, looked up only when asked for: the installed distribution's metadata (importlib.metadata)
    costs every other call ~30 ms of CPU."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show the version")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> NoReturn:
        from service.version import version

        print(f"accelctl {version()}")  # on stdout, as argparse's own version action
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="accelctl", description="accel command line")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)
    default_config = os.environ.get("ACCEL_CONFIG") or None
    convert = sub.add_parser(
        "convert",
        help="convert one image now (one-time mode, no acceld needed)",
        epilog="exit codes: 0 done, 1 a driver failed, 2 bad command line/config/reference, 4 not found, "
        "5 access denied, 6 registry unreachable or failing, 7 image refused (limit, malformed), "
        "8 local server/runner, 70 bug (see README, Exit codes)",
    )
    convert.add_argument(
        "--config", default=default_config, help="acceld-style YAML config (default: $ACCEL_CONFIG)"
    )
    drivers = driver_types()
    convert.add_argument(
        "--driver",
        action="append",
        choices=drivers,
        metavar="DRIVER",
        help=f"driver type, one of {', '.join(drivers)} (repeatable); default: all configured",
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
    convert.add_argument("-v", "--verbose", action="store_true", help="show the run's Prefect logs")
    convert.add_argument(
        "--debug", action="store_true", help="show tracebacks of expected failures too (with -v: in the logs)"
    )
    _add_access_flags(convert, "the target (without --target: the source's)")
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
    check.add_argument(
        "--config",
        default=default_config,
        help="acceld-style YAML config (registry credentials, platforms; default: $ACCEL_CONFIG)",
    )
    check.add_argument("--debug", action="store_true", help="show tracebacks of expected failures too")
    _add_access_flags(check, "the converted image")
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
        import logging

        # `convert` sets up its own console (Prefect's logs with -v, accel's warnings either way).
        logging.basicConfig(level=logging.WARNING, format="accelctl: %(levelname)s: %(message)s")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("accelctl: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except Exception:
        # Expected failures are handled where they happen; anything reaching here is a bug.
        import traceback

        traceback.print_exc()
        print("accelctl: this is a bug in accel: please report it with the traceback above", file=sys.stderr)
        return int(ExitCode.BUG)


if __name__ == "__main__":
    sys.exit(main())
