"""The warm runner of one-time mode: a process that has Prefect and the flows imported, listening on a unix
socket under `<state>/local/`, running each `accelctl convert` request in-process (as dockerd does for
docker), so a call pays neither Python nor Prefect imports nor a flow-run process start.

Protocol, one JSON object per line. Request: {"source", "drivers" (list or null), "config" (absolute path),
"target" (any transport, or null)}.
After the request, the caller may send {"cancel": true} (its Ctrl-C): the run ends CANCELLED within a
second or so, its running layer tasks stopped too (`tasks/cancel.py`), and the answer is {"exit": 130,
"error": …}; so does `prefect flow-run cancel ID` of the run (the runner watches its state).
Optional request keys: "access" (accelctl's --src-creds, --dest-creds, --src/dest-tls-verify and platform
flags, `service.onetime.ACCESS_KEYS`: applied to this run's context only, `accel/overrides.py`; the socket
is the owner's only), "verbose" (send the run's log lines), "progress" (send {"progress": snapshot}
every half second while the layers move, snapshot as `tasks.progress.RunProgress.snapshot`: accelctl's
live display on a terminal),
"debug" (keep the tracebacks of expected failures), "warnings" (send the config's warnings: the client did
not check the request itself).
Answers: {"run": {"id": flow run id, "api_url": the Prefect API}} once the flow run exists (so that a caller
that leaves can say how to cancel it), any number of {"warning": line} (the config's, and accel's own
warnings during the run) and, with "verbose", {"log": line} (Prefect's console lines of the run: one per
task run), then one
{"exit": 0, "targets": [[driver, reference, digest], …], "skipped": why nothing was converted or null,
"timings": {…}} or
{"exit": code, "error": one line, "traceback": text (a bug, or "debug")}, code as `service.onetime.ExitCode`.
`timings` (for `accelctl convert --timings` and bench/oneshot.py): wall-clock times (time.time()) at which
the runner received the request, finished checking it, got its turn and had the flow's result, plus the
flow's own stage durations (`stages`, seconds).

Conversions run one at a time (a queued call waits); each keeps its own flow run in the Prefect server, so
the UI shows them as any other. Started and stopped by `service.local` (`accelctl server stop`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socketserver
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.memory import release_free_memory
from service.onetime import ExitCode, check_request, describe_failure

if TYPE_CHECKING:
    from prefect.context import SyncClientContext

    from tasks.cancel import RunCancellation

log = logging.getLogger("accel.localrunner")

CTRL_C = "cancelled (Ctrl-C)"  # the reason a caller's {"cancel": true} gives


class _Forwarder(logging.Handler):
    """Sends the current conversion's log lines (all with `verbose`, else accel's warnings) to its caller;
    a closed caller does not stop the run."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.send: Callable[[dict[str, Any]], None] | None = None
        self.verbose = False

    def emit(self, record: logging.LogRecord) -> None:
        send = self.send
        if send is None or not record.name.startswith(("prefect.flow_runs", "prefect.task_runs", "accel")):
            return
        config = record.name == "accel.config"  # its warnings come from the request's check, once per call
        with contextlib.suppress(Exception):
            if self.verbose:
                send({"log": self.format(record)})
            elif record.name.startswith("accel") and record.levelno >= logging.WARNING and not config:
                send({"warning": record.getMessage()})


class Runner:
    def __init__(self) -> None:
        from prefect.logging.formatters import PrefectFormatter

        self.forwarder = _Forwarder()
        self.forwarder.setFormatter(
            PrefectFormatter(
                format="%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s",
                flow_run_fmt="%(asctime)s.%(msecs)03d | %(levelname)-7s | Flow run %(flow_run_name)r - "
                "%(message)s",
                task_run_fmt="%(asctime)s.%(msecs)03d | %(levelname)-7s | Task run %(task_run_name)r - "
                "%(message)s",
                datefmt="%H:%M:%S",
            )
        )
        logging.getLogger().addHandler(self.forwarder)
        self.one_at_a_time = threading.Lock()
        # No heartbeats: they detect a flow-run process that died, and here the caller sees that at once (its
        # socket closes). Their thread is joined at flow end and cost up to a second per call. Built once:
        # deriving Prefect settings takes tens of milliseconds.
        from prefect.context import get_settings_context
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

        context = get_settings_context()
        self.profile = context.profile
        self.settings = context.settings.copy_with_update(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
        from flows.convert_image import convert_image

        self._client_context: SyncClientContext | None = None  # made by the first conversion
        # The flow with its result storage named (the default local path, as every run in this runner had)
        # and its own result unpersisted (as the server, which is ours and has no default storage block,
        # answered): otherwise the engine asks the server for its default storage three times per run.
        self.convert_image = convert_image.with_options(
            result_storage=Path(self.settings.results.local_storage_path), persist_result=False
        )

    def client_context(self) -> SyncClientContext:
        """One API client for every run, made current in each conversion's thread (conversions run one at a
        time): the flow engine otherwise opens its own per run (an httpx client whose TLS context alone costs
        ~45 ms of CPU, and a CSRF token request). Made by the first conversion: this runner starts while
        its server may not answer yet."""
        from prefect.context import SyncClientContext

        if self._client_context is None:
            context = SyncClientContext()
            context.__enter__()  # entered for the runner's life: the engine's own `get_or_create` finds it
            self._client_context = context
        return self._client_context

    def convert(
        self,
        request: dict[str, Any],
        send: Callable[[dict[str, Any]], None],
        cancelled: RunCancellation | None = None,
    ) -> None:
        """Run one request; `cancelled` (set on the caller's {"cancel": true}) ends its run CANCELLED."""
        from prefect.context import SettingsContext, SyncClientContext
        from prefect.exceptions import CancelledRun
        from prefect.settings import PREFECT_API_URL

        from accel.overrides import overriding
        from tasks import cancel, expected, progress

        cancelled = cancelled or cancel.RunCancellation()
        api_url = PREFECT_API_URL.value()
        cancelled.on_started = lambda run_id: send({"run": {"id": run_id, "api_url": api_url}})
        timings: dict[str, Any] = {"received": time.time()}

        # The client skipped this check because this runner was up: bad input fails before any Prefect work.
        drivers = request.get("drivers") or None
        target = request.get("target") or None
        checked = check_request(
            str(request["source"]), str(request["config"]), drivers, target, request.get("access")
        )
        if request.get("warnings", True):
            for warning in checked.warnings:
                send({"warning": warning})
        if checked.failure is not None:
            send({"exit": int(checked.failure.code), "error": checked.failure.message})
            return
        timings["checked"] = time.time()
        debug = bool(request.get("debug"))
        no_heartbeats = SettingsContext(profile=self.profile, settings=self.settings)
        with (
            self.one_at_a_time,
            no_heartbeats,
            cancel.cancellable(cancelled),
            overriding(checked.overrides),  # the caller's credentials: in this context, not in parameters
        ):
            if cancelled.cancelled:  # cancelled while it waited for its turn: nothing ran
                send({"exit": int(ExitCode.INTERRUPTED), "error": "cancelled before it started"})
                return
            timings["started"] = time.time()
            client_token = None
            self.forwarder.send = send
            self.forwarder.verbose = bool(request.get("verbose"))
            expected.show_tracebacks = debug
            watch = progress.watching(lambda snapshot: send({"progress": snapshot}))
            try:
                client_token = SyncClientContext.__var__.set(self.client_context())
                with watch if request.get("progress") else contextlib.nullcontext():
                    result = self.convert_image(
                        source=str(request["source"]),
                        drivers=drivers,
                        config=str(request["config"]),
                        target=target,
                        return_state=False,
                    )
            except Exception as exc:  # the flow's (or Prefect's) error is the caller's answer, not a crash
                if cancelled.cancelled and isinstance(exc, CancelledRun):
                    why = f" ({cancelled.reason})" if cancelled.reason != CTRL_C else ""
                    send(
                        {
                            "exit": int(ExitCode.INTERRUPTED),
                            "error": f"its run ended CANCELLED{why}, nothing pushed",
                        }
                    )
                    return
                failure = describe_failure(exc)
                answer: dict[str, Any] = {"exit": int(failure.code), "error": failure.message}
                if failure.code is ExitCode.BUG or debug:
                    answer["traceback"] = traceback.format_exc()
                    log.error("conversion of %s failed", request["source"], exc_info=True)
                send(answer)
                return
            finally:
                if client_token is not None:
                    SyncClientContext.__var__.reset(client_token)
                self.forwarder.send = None
                expected.show_tracebacks = False
                release_free_memory()  # an idle runner holds what it uses idle, not its last peak
        timings["finished"] = time.time()
        timings["stages"] = result.seconds
        targets = [[t.driver, t.reference, t.digest] for t in result.targets]
        send({"exit": 0, "targets": targets, "skipped": result.skipped, "timings": timings})


def _handler(runner: Runner) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            lock = threading.Lock()

            def send(message: dict[str, Any]) -> None:
                with lock:
                    self.wfile.write(json.dumps(message).encode() + b"\n")
                    self.wfile.flush()

            try:
                request = json.loads(self.rfile.readline())
                if not isinstance(request, dict) or "source" not in request or "config" not in request:
                    raise ValueError("expected {source, drivers, config}")
            except ValueError as exc:
                send({"exit": int(ExitCode.USAGE), "error": f"bad request: {exc}"})
                return
            from tasks.cancel import RunCancellation

            cancelled = RunCancellation()
            threading.Thread(target=self._read_cancel, args=(cancelled,), daemon=True).start()
            runner.convert(request, send, cancelled)

        def _read_cancel(self, cancelled: RunCancellation) -> None:
            """The caller's later lines: {"cancel": true} (its Ctrl-C). A caller that leaves (EOF) detaches:
            its run goes on."""
            with contextlib.suppress(OSError, ValueError):
                for line in self.rfile:
                    if json.loads(line).get("cancel"):
                        log.info("cancel requested")
                        cancelled.cancel(CTRL_C)

    return Handler


def warm_up(modules: Sequence[str] = ("flows.convert_image",)) -> None:
    """Import now what the first conversion would otherwise wait for: `modules` and every driver (a warm
    process's start: this runner's, and acceld's flow-run starter's, service/flowstarter.py)."""
    import importlib

    for name in modules:
        importlib.import_module(name)
    from accel.drivers import DRIVER_TYPES, driver_class

    for name in DRIVER_TYPES:
        with contextlib.suppress(ImportError):
            driver_class(name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.localrunner")
    parser.add_argument("--socket", required=True, help="unix socket path to listen on")
    args = parser.parse_args(argv)
    path = Path(args.socket)

    warm_up()
    runner = Runner()
    path.unlink(missing_ok=True)
    server = socketserver.ThreadingUnixStreamServer(str(path), _handler(runner))
    server.daemon_threads = True
    os.chmod(path, 0o600)  # the caller's registry credentials are used on its behalf: owner only

    def _stop(signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"accel local runner listening on {path} (pid {os.getpid()})", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
