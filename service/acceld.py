"""acceld: the HTTP API (uvicorn) plus a runner serving the `convert-image` and `bulk-reconvert` deployments.

    accel-prefect-server &                      # a real Prefect server (SQLite or PostgreSQL)
    PREFECT_API_URL=http://127.0.0.1:4200/api acceld --config config.yaml

The runner is a child process (`acceld --runner`), restarted if it dies and stopped with acceld; flow runs
are its children. `--no-serve` runs the API only, for the work-pool mode where `prefect worker start`
executes the deployments from prefect.yaml.

With `server.uds` the API is served on that unix socket too (only there when `server.host` is ""), created
with mode `server.uds_mode` (0600: acceld's user; 0660: its group too); requests over it need no webhook
Authorization header, the socket's permissions decide who may call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service import local, logformat
from service.logformat import PREFECT_LOGGING_CONFIG
from service.state import PROJECT_ROOT
from service.supervisor import WAKE_SIGNAL

if TYPE_CHECKING:  # imported lazily at run time: `acceld --runner` must not load the API
    from accel.config import Settings
    from accel.reference import Reference
    from service.api.app import TagPinner

log = logging.getLogger("acceld")

# SIGTERM stops acceld within about 10 s whatever state Prefect is in: open requests get API_SHUTDOWN_GRACE
# seconds (accepted pushes are journalled, so a creation still waiting on Prefect is not lost by stopping),
# then the runner is killed at once (its runs end with it; Prefect's graceful stop would mark them CANCELLED,
# and those accepted pushes would never be converted) and its runs are scheduled again, for the next start,
# if Prefect answers within STOP_RECOVERY_SECONDS (else the next start does it).
API_SHUTDOWN_GRACE = 3
STOP_RECOVERY_SECONDS = 3.0

# Runs acceld creates start at once: it wakes its runner (service/supervisor.py WAKE_SIGNAL). The poll finds
# the others (bulk runs' children, runs created from the UI, CLI or an event): Prefect's default (10 s) would
# add up to 10 s before such a run starts; 1 s costs one cheap query a second against the Prefect API.
RUNNER_POLL_SECONDS = "1"


def runtime_env(config_path: str, work_dir: Path) -> None:
    """Settings every acceld process and flow run shares; set before Prefect reads its settings."""
    os.environ["ACCEL_CONFIG"] = config_path
    # Persisted task results (converted layers) let a retried run reuse its conversions.
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(work_dir / "prefect-results"))
    os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", RUNNER_POLL_SECONDS)
    # One log line format in acceld.log for the runner and its flow-run processes too (service/logformat.py).
    os.environ.setdefault("PREFECT_LOGGING_CONFIG_PATH", str(PREFECT_LOGGING_CONFIG))
    for name, value in local.MALLOC_DEFAULTS.items():  # for the runner and its flow-run processes
        os.environ.setdefault(name, value)
    paths = [str(PROJECT_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


def prefect_api_url() -> str | None:
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


async def _wait_for_prefect(timeout: float) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    error: object = None
    while time.monotonic() < deadline:
        async with get_client() as client:
            error = await client.api_healthcheck()
        if error is None:
            return
        await asyncio.sleep(1)
    raise RuntimeError(f"Prefect API did not become healthy in {timeout:.0f}s: {error}")


def bind_unix_socket(path: Path, mode: int) -> socket.socket:
    """A listening unix socket at `path` with file mode `mode`, never wider, not even while it is created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()  # left by an acceld that stopped; acceld removes it too
        else:
            raise OSError(f"{path} exists and is not a socket")
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(previous)
    os.chmod(path, mode)
    return sock


class ApiServers:
    """The API on a TCP socket and/or the unix socket, in one event loop.

    The first server owns the app's lifespan (the metrics poller) and the signals; the unix-socket one serves
    `local_socket_app(app)`, whose requests are marked as local, and stops with it.
    """

    def __init__(
        self, app: Any, *, tcp: socket.socket | None, uds: socket.socket | None, log_level: str = "info"
    ) -> None:
        import uvicorn

        from service.api.app import MAX_HEADERS, local_socket_app

        class Follower(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield  # the first server handles signals and stops the others

        class Leader(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                with super().capture_signals():
                    yield
                    # uvicorn would raise the caught SIGTERM again once served, killing acceld before it
                    # removes its socket and stops its runner; acceld stops itself and exits 0 instead.
                    self._captured_signals.clear()

        self.servers: list[tuple[uvicorn.Server, socket.socket]] = []
        if tcp is not None:
            config = uvicorn.Config(
                app,
                log_level=log_level,
                log_config=None,  # its lines go through acceld's handler, in acceld's format
                access_log=False,
                timeout_graceful_shutdown=API_SHUTDOWN_GRACE,
                # Oversized headers are read whole and refused with a reason (431), not cut off by a reset.
                h11_max_incomplete_event_size=MAX_HEADERS,
            )
            self.servers.append((Leader(config), tcp))
        if uds is not None:
            server_class = Follower if self.servers else Leader
            config = uvicorn.Config(
                local_socket_app(app),
                log_level=log_level,
                log_config=None,
                access_log=False,
                lifespan="off" if self.servers else "auto",
                timeout_graceful_shutdown=API_SHUTDOWN_GRACE,
                h11_max_incomplete_event_size=MAX_HEADERS,
            )
            self.servers.append((server_class(config), uds))
        if not self.servers:
            raise ValueError("no socket to serve the API on")

    @property
    def started(self) -> bool:
        return all(server.started for server, _ in self.servers)

    def stop(self) -> None:
        for server, _ in self.servers:
            server.should_exit = True

    async def serve(self) -> None:
        (first, first_socket), *others = self.servers
        followers = [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in others]
        try:
            await first.serve(sockets=[first_socket])
        finally:
            for server, _ in others:
                server.should_exit = True
            await asyncio.gather(*followers, return_exceptions=True)


def runner_deployments(config_path: str) -> list[tuple[Any, Any, int | None]]:
    """(RunnerDeployment, its flow, runs at a time) for both deployments, as acceld serves them: with this
    acceld's config as their default, the definitions' schedule, and the `harbor.artifact.pushed` trigger
    prefect.yaml declares (so `prefect event emit` converts with or without acceld)."""
    import importlib

    from prefect.deployments.runner import EntrypointType

    from accel.config import load_file
    from deployments.definitions import definitions

    served = []
    for d in definitions(load_file(config_path)):
        flow = getattr(importlib.import_module(d.module), d.function)
        deployment = flow.to_deployment(
            name=d.name,
            parameters=d.parameters(config_path),
            entrypoint_type=EntrypointType.MODULE_PATH,
            cron=d.schedule,
            tags=list(d.tags),
            description=d.description,
            triggers=[t.as_prefect() for t in d.triggers],
        )
        served.append((deployment, flow, d.concurrency_limit))
    return served


def serve_deployments(config_path: str, in_process: bool = False) -> int:
    """The runner child: register and serve both deployments; flow runs are its subprocesses, or threads of
    this process with `in_process` (service/localserve.py: no per-run imports, no UI cancellation).

    Each deployment has slots of its own: `converter.worker` conversions, and one bulk run beside them. A bulk
    run only plans and waits for its conversion runs; in the conversions' slots it would hold one while its
    children wait for it (with `worker: 1`, forever)."""
    from tasks.process import RUNNER_PID_ENV, start_flow_runs_with_runner_death

    served = runner_deployments(config_path)
    if in_process:
        from prefect.settings import get_current_settings

        from service.localserve import serve_in_process

        poll_seconds = get_current_settings().runner.poll_frequency  # as Prefect's runner polls
        serve_in_process(served, poll_seconds, wake_signal=WAKE_SIGNAL)
        return 0
    # Its flow-run processes end when this process does (tasks/process.py), from their first instruction.
    os.environ[RUNNER_PID_ENV] = str(os.getpid())
    if start_flow_runs_with_runner_death():
        from service import flowstarter

        flowstarter.start(os.getpid())  # flow runs forked warm: no 1.5-3 s of imports per run
    else:
        log.warning("flow-run processes are not started with PR_SET_PDEATHSIG; each ends with its flow")
    asyncio.run(_serve_with_runners(served))
    return 0


async def _serve_with_runners(served: list[tuple[Any, Any, int | None]]) -> None:
    """One Prefect runner per deployment, each with that deployment's limit, in this process."""
    import signal

    from prefect.runner import Runner

    runners = []
    for deployment, _flow, limit in served:
        runner = Runner(name=f"acceld-{deployment.name}", limit=limit, pause_on_shutdown=False)
        await runner.aadd_deployment(deployment)
        runners.append(runner)
    started = [asyncio.create_task(runner.start()) for runner in runners]
    await asyncio.sleep(0)  # each `start` installs its own SIGTERM handler first (the last one wins) ...

    polls: set[asyncio.Task[None]] = set()  # held until done (the loop keeps only weak references)

    def poll_now() -> None:  # acceld created a run: look for due runs now, not at the next poll
        for runner in runners:
            if runner.started and not runner.stopping:
                # The runner's own poll, run early: it skips runs it is already submitting.
                poll = asyncio.create_task(runner._get_and_submit_flow_runs())
                polls.add(poll)
                poll.add_done_callback(polled)

    def polled(poll: asyncio.Task[None]) -> None:
        polls.discard(poll)
        if not poll.cancelled() and (exc := poll.exception()) is not None:  # the regular poll still runs
            log.warning("looking for due runs failed: %s: %s", type(exc).__name__, exc)

    def stop_all(*_: object) -> None:  # ... so one handler stops every runner, as `serve` stops its one
        for runner in runners:
            runner.handle_sigterm()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop_all)
        asyncio.get_running_loop().add_signal_handler(WAKE_SIGNAL, poll_now)
    await asyncio.gather(*started, _announce(runners))


async def _announce(runners: list[Any]) -> None:
    """Say when every runner is up (it polls once as it starts): from then on a created run starts at once."""
    while not all(runner.started for runner in runners):
        await asyncio.sleep(0.1)
    seconds = runners[0].query_seconds
    log.info(
        "runner serving %d deployment(s): a run acceld creates starts now, others within %gs",
        len(runners),
        seconds,
    )


def registry_pinner(settings: Settings) -> TagPinner:
    """The API's tag → digest resolver: a HEAD of the tag in a worker thread, through the engine's client."""
    from accel.context import Context

    context = Context(settings)

    async def pin(reference: Reference) -> Reference:
        descriptor = await asyncio.to_thread(context.client.resolve, reference)
        return reference.with_digest(descriptor.digest)

    return pin


ORPHAN_REASON = "acceld's runner stopped while this run was in progress (its process is gone)"


def recover_orphans(prefect_timeout: float = 30.0) -> None:
    """Runs a dead runner of this acceld left RUNNING or PENDING: conversions are scheduled again (their push
    was answered 2xx: Harbor will not send it again), bulk runs marked FAILED. Called with the work dir lock
    held and no runner alive: at start, and before a runner that died is started again."""
    from flows.names import BULK_DEPLOYMENT, CONVERT_DEPLOYMENT
    from service.api.prefect_backend import recover_orphaned_runs

    recovered = asyncio.run(
        asyncio.wait_for(
            recover_orphaned_runs([CONVERT_DEPLOYMENT], [BULK_DEPLOYMENT], ORPHAN_REASON), prefect_timeout
        )
    )
    for run_id in recovered.rescheduled:
        log.warning("orphaned flow run %s (its runner died) scheduled to run again", run_id)
    for run_id in recovered.failed:
        log.warning("marked orphaned flow run %s as FAILED", run_id)
    for run_id in recovered.cancelled:
        log.warning("marked orphaned flow run %s (being cancelled) as CANCELLED", run_id)


def run_api(args: argparse.Namespace, settings: object, config_path: str) -> int:
    import uvicorn

    from accel.config import Settings
    from service.api import create_app
    from service.api.prefect_backend import PrefectBackend
    from service.intake import JOURNAL_FILE, IntakeJournal, JournalUnavailable
    from service.metrics import Metrics
    from service.supervisor import RunnerSupervisor, WorkDirLock

    assert isinstance(settings, Settings)
    if not prefect_api_url():
        print(
            "acceld: no Prefect API configured. Start one (`accel-prefect-server`) and set PREFECT_API_URL, "
            "e.g. PREFECT_API_URL=http://127.0.0.1:4200/api",
            file=sys.stderr,
        )
        return 2
    try:
        asyncio.run(_wait_for_prefect(args.prefect_timeout))
    except RuntimeError as exc:
        print(f"acceld: {exc}", file=sys.stderr)
        return 1

    lock = WorkDirLock(settings.provider.work_dir)
    supervisor = None
    if args.serve:
        if not lock.acquire():
            print(
                f"acceld: another acceld serves from {settings.provider.work_dir} ({lock.path})",
                file=sys.stderr,
            )
            return 1
        # No runner of ours is alive (we hold the lock), so a live-looking run of our deployments was left
        # behind by a runner that died: conversions run again, the rest are FAILED (else PROCESSING forever).
        recover_orphans(prefect_timeout=args.prefect_timeout)
        supervisor = RunnerSupervisor(
            config_path, in_process=args.in_process_runs, before_restart=recover_orphans
        )
        supervisor.start()

    try:
        # Accepted webhooks are on disk before they are answered, and replayed from here when acceld starts.
        journal = IntakeJournal(settings.provider.work_dir / JOURNAL_FILE)
    except JournalUnavailable as exc:
        print(f"acceld: {exc}", file=sys.stderr)
        if supervisor is not None:
            supervisor.stop()
        lock.release()
        return 1
    metrics = Metrics(settings.server.name) if settings.metric.enabled else None
    backend = PrefectBackend(
        settings,
        config_path,
        metrics,
        serves_deployments=args.serve,
        on_scheduled=supervisor.wake if supervisor is not None else None,  # the run starts now, not at a poll
    )
    app = create_app(
        settings,
        backend,
        metrics,
        background=backend.poll_forever if metrics else None,
        pin=registry_pinner(settings),
        readiness=(lambda: [p] if (p := supervisor.problem()) else []) if supervisor is not None else None,
        journal=journal,
    )
    host = args.host if args.host is not None else settings.server.host
    port = args.port if args.port is not None else settings.server.port
    uds = settings.server.uds
    tcp_socket = uds_socket = None
    try:
        if host or uds is None:
            tcp_socket = uvicorn.Config(
                app, host=host or "127.0.0.1", port=port, log_config=None
            ).bind_socket()
            log.info("acceld API on http://%s:%d (Prefect API %s)", host, port, prefect_api_url())
        if uds is not None:
            uds_socket = bind_unix_socket(uds, settings.server.uds_file_mode)
            log.info("acceld API on unix socket %s (mode %s)", uds, settings.server.uds_mode)
        servers = ApiServers(app, tcp=tcp_socket, uds=uds_socket, log_level=args.log_level.lower())
        asyncio.run(servers.serve())
    finally:
        if uds is not None and uds_socket is not None:
            with contextlib.suppress(OSError):
                uds.unlink()
        if supervisor is not None:
            supervisor.stop(grace=5, graceful=False)
            try:
                recover_orphans(prefect_timeout=STOP_RECOVERY_SECONDS)
            except Exception as exc:  # Prefect is down or slow: acceld's next start recovers them
                log.warning("runs in progress are recovered at the next start: %s", type(exc).__name__)
        journal.close()
        lock.release()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from service.version import version

    parser = argparse.ArgumentParser(prog="acceld", description="accel service: webhooks → Prefect flow runs")
    parser.add_argument("--version", action="version", version=f"acceld {version()}")
    parser.add_argument(
        "--config",
        default=os.environ.get("ACCEL_CONFIG") or None,
        help="acceld-style YAML config (default: $ACCEL_CONFIG)",
    )
    parser.add_argument("--host", help="listen address (default: server.host)")
    parser.add_argument("--port", type=int, help="listen port (default: server.port)")
    parser.add_argument(
        "--no-serve",
        dest="serve",
        action="store_false",
        help="API only: deployments are executed by Prefect workers (work-pool mode)",
    )
    parser.add_argument(
        "--in-process-runs",
        action="store_true",
        help="run flow runs as threads of the warm runner process instead of one process each: a webhook's "
        "conversion starts without re-importing Prefect; running flow runs cannot be cancelled from the UI",
    )
    parser.add_argument("--runner", action="store_true", help=argparse.SUPPRESS)  # the runner child
    parser.add_argument("--prefect-timeout", type=float, default=60.0, help="wait this long for Prefect")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--log-format",
        choices=logformat.LOG_FORMATS,
        default=logformat.log_format(),
        help=f"one line per entry (human) or one JSON object per line (json); env {logformat.LOG_FORMAT_ENV}",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The runner and its flow-run processes inherit the format with the environment.
    os.environ[logformat.LOG_FORMAT_ENV] = args.log_format
    logformat.configure(args.log_level)  # before Prefect is imported: it then keeps acceld's handler
    from accel.config import load_file, webhook_auth_problem
    from accel.errors import ConfigError

    if not args.config:
        print("acceld: no config: pass --config FILE or set ACCEL_CONFIG", file=sys.stderr)
        return 2
    config_path = str(Path(args.config).resolve())
    try:
        # The same check as `accelctl config check` and one-time mode (accel.config.check_file); its
        # warnings (unknown keys) go to acceld's log.
        settings = load_file(config_path)
    except ConfigError as exc:
        print(f"acceld: {exc}", file=sys.stderr)
        return 2
    runtime_env(config_path, settings.provider.work_dir)
    if problem := schedule_problem(settings):
        print(f"acceld: {config_path} is invalid: bulk.schedule: {problem}", file=sys.stderr)
        return 2
    if args.runner:
        return serve_deployments(config_path, in_process=args.in_process_runs)
    if problem := webhook_auth_problem(settings):
        print(f"acceld: {problem}", file=sys.stderr)
        return 2
    for host in settings.unauthenticated_hosts():
        log.warning("webhooks for %s are accepted WITHOUT authentication (allow_unauthenticated: true)", host)
    return run_api(args, settings, config_path)


def schedule_problem(settings: Settings) -> str | None:
    """Why `bulk.schedule` is no cron Prefect can run, by Prefect's own schedule model, at start rather than
    when the runner registers it (and crash-loops). The config's own check (cronsim) refuses what this
    would, first; this guards against the two cron parsers disagreeing."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    if settings.bulk.schedule is None:
        return None
    try:
        CronSchedule(cron=settings.bulk.schedule)
    except ValidationError as exc:
        return "; ".join(str(e.get("msg", "")).removeprefix("Value error, ") for e in exc.errors())
    return None


if __name__ == "__main__":
    sys.exit(main())
