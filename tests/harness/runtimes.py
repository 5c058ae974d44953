"""Container runtimes for the runtime tier (tests/runtime): a private containerd with nydus-snapshotter and
stargz-snapshotter, and a byte-counting proxy in front of the test registry. Images are pulled with
`ctr-remote image rpull` (stargz) or accel-rpull (nydus, containerd's CRI labels) and run with `ctr run`.

containerd 1.6 hard-codes /run/containerd for its shims and fifos, so the daemons share one private mount
namespace (`unshare -m`, held by a `sleep` process) in which a private directory is bind-mounted on /run;
every daemon enters it with `nsenter` (which execs, so the pid we keep is the daemon's). The snapshotters'
FUSE mounts live in that namespace too, where containerd and runc see them. Sockets, state and logs are in
one short private directory (unix socket paths are limited to 108 bytes). Everything is stopped by pid.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from accel import publish
from accel.drivers.nydus import mount
from accel.reference import Reference
from accel.store import ContentStore
from accel.transports import OCILayout
from accel.verify import Verdict, verify_image
from tests.harness import imagegen
from tests.harness.localconvert import convert
from tests.harness.pushing import as_built
from tests.harness.tools import require_tool

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
NAMESPACE = "accel"  # containerd namespace
FIGURES: list[str] = []  # bytes fetched and timings, one line per measured run (tests/runtime prints them)


def namespaces_unavailable() -> str | None:
    """Why this machine cannot give the daemons a private mount namespace, or None."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "unshare (util-linux) is not installed"
    done = subprocess.run(
        [unshare, "-m", "--propagation", "private", "true"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return f"private mount namespaces are refused: {done.stderr.strip()[-200:]}"
    return None


def runtime_unavailable() -> str | None:
    """Why the runtime tier cannot run here (FUSE or namespaces refused), or None."""
    return mount.fuse_unavailable() or namespaces_unavailable()


LAYOUT_REF = Reference("oci", "image", tag="v1")


def nydus_layouts(work: Path, big_file_size: int) -> tuple[OCILayout, OCILayout]:
    """The standard layers in an OCI layout and their Nydus conversion in another (engine calls only)."""
    store = ContentStore(work / "store")
    image = imagegen.generate_image(imagegen.standard_layers(big_file_size=big_file_size), store)
    source = OCILayout(work / "source")
    publish.push_image(source, LAYOUT_REF, as_built(image), store)
    target = OCILayout(work / "target")
    convert(source, LAYOUT_REF, target, LAYOUT_REF, "nydus", store)
    return source, target


def check_mounted(source: OCILayout, target: Any, work: Path) -> Verdict:
    """`accelctl check`'s verdict: `verify_image` with the mounted view."""
    return verify_image(source, LAYOUT_REF, target, LAYOUT_REF, work_dir=work, mounted_view=True)


# --- a byte-counting proxy -------------------------------------------------------------------------


class CountingProxy:
    """Forwards HTTP to `upstream` (host:port) and counts the response bytes of GET requests for blobs:
    what a runtime downloads. Streams bodies (Range requests pass through unchanged)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.blob_bytes = 0
        self.requests: list[tuple[str, str, int]] = []  # method, path, body bytes sent
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def reset(self) -> None:
        with self._lock:
            self.blob_bytes = 0
            self.requests.clear()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _count(self, method: str, path: str, sent: int) -> None:
        with self._lock:
            self.requests.append((method, path, sent))
            if method == "GET" and "/blobs/" in path:
                self.blob_bytes += sent

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("connection", "keep-alive", "proxy-connection", "host")
                }
                conn, resp = None, None
                for attempt in range(3):  # the registry sometimes drops a fresh connection unanswered
                    conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                    try:
                        conn.request(self.command, self.path, body=body, headers=headers)
                        resp = conn.getresponse()
                        break
                    except (http.client.HTTPException, ConnectionError):
                        conn.close()
                        if attempt == 2:
                            self.send_error(502, "upstream registry dropped the connection")
                            return
                assert conn is not None and resp is not None
                try:
                    self._relay(resp)
                except (ConnectionError, TimeoutError):
                    self.close_connection = True  # the client went away
                finally:
                    conn.close()

            def _relay(self, resp: http.client.HTTPResponse) -> None:
                self.send_response_only(resp.status, resp.reason)
                for key, value in resp.getheaders():
                    if key.lower() not in ("connection", "keep-alive", "transfer-encoding"):
                        self.send_header(key, value)
                bodiless = self.command == "HEAD" or resp.status in (204, 304)
                chunked = resp.getheader("Content-Length") is None and not bodiless
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                sent = 0
                if not bodiless:
                    while chunk := resp.read(1 << 16):
                        sent += len(chunk)
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                    if chunked:
                        self.wfile.write(b"0\r\n\r\n")
                proxy._count(self.command, urlsplit(self.path).path, sent)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@contextlib.contextmanager
def counting_proxy(upstream: str) -> Iterator[CountingProxy]:
    proxy = CountingProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.stop()


# --- daemons in a private mount namespace ----------------------------------------------------------


class Daemon:
    """One process we started (its pid is the daemon's), its output in `log_path`."""

    def __init__(self, name: str, command: list[str], log_path: Path) -> None:
        self.name, self.command, self.log_path = name, command, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)

    def log_tail(self, limit: int = 1500) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-limit:]
        return ""


def wait_for(what: str, ready: Any, daemon: Daemon, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not daemon.alive():
            raise RuntimeError(f"{daemon.name} exited before {what}: {daemon.log_tail()}")
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{daemon.name}: no {what} after {timeout:.0f}s: {daemon.log_tail()}")


NYDUSD_WRAPPER = """#!/bin/sh
# nydusd may not raise RLIMIT_NOFILE here (EPERM): nydus-snapshotter has no option for that, so add it.
exec {nydusd} "$@" --rlimit-nofile 0
"""


class RuntimeStack:
    """containerd 1.6 + runc, nydus-snapshotter (proxy plugin `nydus`) and stargz-snapshotter (`stargz`),
    all in one private mount namespace. `ctr(...)`, `pull(...)`, `run(...)` drive it."""

    def __init__(self) -> None:
        self.containerd = require_tool("containerd")
        self.ctr_binary = require_tool("ctr")
        require_tool("runc")
        self.nydus_grpc = require_tool("containerd-nydus-grpc")
        self.stargz_grpc = require_tool("containerd-stargz-grpc")
        self.rpull = require_tool("accel-rpull")
        self.nydusd = str(mount.nydusd_binary())
        self.dir = Path(tempfile.mkdtemp(prefix="accel-rt-", dir="/tmp"))
        self.socket = self.dir / "containerd.sock"
        self.holder: subprocess.Popen[bytes] | None = None
        self.daemons: list[Daemon] = []

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        (self.dir / "run").mkdir()
        (self.dir / "fifo").mkdir()
        # The namespace holder: /run replaced by a private directory, then a sleep that keeps it alive.
        self.holder = subprocess.Popen(
            [
                "unshare", "-m", "--propagation", "private", "sh", "-c",
                f'mount --bind {self.dir / "run"} /run && exec sleep 86400',
            ],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._run_is_private() and time.monotonic() < deadline:
            if self.holder.poll() is not None:
                raise RuntimeError("the mount namespace holder exited")
            time.sleep(0.05)
        self._start_nydus_snapshotter()
        self._start_stargz_snapshotter()
        self._start_containerd()

    def _run_is_private(self) -> bool:
        assert self.holder is not None
        done = subprocess.run(
            ["nsenter", "-t", str(self.holder.pid), "-m", "findmnt", "-n", "-o", "SOURCE", "/run"],
            capture_output=True,
            text=True,
            check=False,
        )
        return done.returncode == 0 and bool(done.stdout.strip())

    def _in_namespace(self, command: list[str]) -> list[str]:
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--", *command]

    def _daemon(self, name: str, command: list[str]) -> Daemon:
        daemon = Daemon(name, self._in_namespace(command), self.dir / f"{name}.log")
        self.daemons.append(daemon)
        daemon.start()
        return daemon

    def _start_nydus_snapshotter(self) -> None:
        wrapper = self.dir / "nydusd"
        wrapper.write_text(NYDUSD_WRAPPER.format(nydusd=self.nydusd))
        wrapper.chmod(0o755)
        nydusd_config = {
            "device": {
                # host and repo come from the image's labels; http: the registry is on loopback.
                "backend": {"type": "registry", "config": {"scheme": "http", "timeout": 10}},
                "cache": {"type": "blobcache"},
            },
            "mode": "direct",
            "digest_validate": False,
            "iostats_files": False,
            "enable_xattr": True,
            "fs_prefetch": {"enable": False},  # read only what the container reads
        }
        (self.dir / "nydusd.json").write_text(json.dumps(nydusd_config))
        config = f"""
version = 1
root = "{self.dir}/nydus"
address = "{self.dir}/nydus.sock"
daemon_mode = "dedicated"
cleanup_on_close = true
[system]
enable = false
[daemon]
nydusd_config = "{self.dir}/nydusd.json"
nydusd_path = "{wrapper}"
fs_driver = "fusedev"
recover_policy = "none"
[cgroup]
enable = false
[log]
log_to_stdout = true
level = "info"
[metrics]
address = ""
[snapshot]
enable_nydus_overlayfs = false
sync_remove = true
[cache_manager]
disable = false
"""
        (self.dir / "nydus.toml").write_text(config)
        command = [self.nydus_grpc, "--config", str(self.dir / "nydus.toml")]
        daemon = self._daemon("nydus-snapshotter", command)
        wait_for("socket", (self.dir / "nydus.sock").exists, daemon)

    def _start_stargz_snapshotter(self) -> None:
        config = """
noprefetch = true
no_background_fetch = true
"""
        (self.dir / "stargz.toml").write_text(config)
        command = [
            self.stargz_grpc,
            "-address", str(self.dir / "stargz.sock"),
            "-config", str(self.dir / "stargz.toml"),
            "-root", str(self.dir / "stargz"),
        ]  # fmt: skip
        daemon = self._daemon("stargz-snapshotter", command)
        wait_for("socket", (self.dir / "stargz.sock").exists, daemon)

    def _start_containerd(self) -> None:
        config = f"""
version = 2
root = "{self.dir}/root"
state = "{self.dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.dir}/containerd.sock.ttrpc"
[proxy_plugins]
  [proxy_plugins.nydus]
    type = "snapshot"
    address = "{self.dir}/nydus.sock"
  [proxy_plugins.stargz]
    type = "snapshot"
    address = "{self.dir}/stargz.sock"
"""
        (self.dir / "containerd.toml").write_text(config)
        daemon = self._daemon("containerd", [self.containerd, "--config", str(self.dir / "containerd.toml")])
        wait_for("socket", lambda: self._ctr_answers(), daemon)

    def _ctr_answers(self) -> bool:
        done = subprocess.run(
            [self.ctr_binary, "-a", str(self.socket), "version"], capture_output=True, timeout=10, check=False
        )
        return done.returncode == 0

    def stop(self) -> None:
        # Containers a failed test left behind first (their shims would outlive containerd), then
        # containerd, then the snapshotters (their FUSE mounts).
        if self.daemons and self.daemons[-1].alive():
            self._remove_containers()
        for daemon in reversed(self.daemons):
            daemon.stop()
        holder, self.holder = self.holder, None
        if holder is not None and holder.poll() is None:
            holder.terminate()
            holder.wait(timeout=STOP_TIMEOUT)

    def _remove_containers(self) -> None:
        def ctr(*args: str) -> str:
            command = [self.ctr_binary, "-a", str(self.socket), "-n", NAMESPACE, *args]
            return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False).stdout

        with contextlib.suppress(subprocess.SubprocessError, OSError):
            for container in ctr("containers", "ls", "-q").split():
                ctr("tasks", "kill", "-s", "SIGKILL", container)
                ctr("tasks", "delete", "-f", container)
                ctr("containers", "delete", container)

    def logs(self) -> str:
        return "\n".join(f"--- {d.name}\n{d.log_tail()}" for d in self.daemons)

    # -- driving it -------------------------------------------------------------------------------

    def ctr(self, *args: str, timeout: float = 120) -> str:
        command = [self.ctr_binary, "-a", str(self.socket), "-n", NAMESPACE, *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}\n{self.logs()}")
        return done.stdout

    def pull(self, ref: str, snapshotter: str, labels: str, timeout: float = 180) -> None:
        """Pull for a remote snapshotter, with the labels it needs: `stargz` with Debian's `ctr-remote image
        rpull` (stargz-snapshotter's own labels), `cri` with accel-rpull (containerd's CRI labels, which that
        ctr-remote cannot set: what nerdctl and a newer `ctr-remote rpull --use-containerd-labels` do)."""
        if labels == "stargz":
            command = [
                require_tool("ctr-remote"), "-a", str(self.socket), "-n", NAMESPACE,
                "image", "rpull", "--plain-http", "--snapshotter", snapshotter, ref,
            ]  # fmt: skip
        else:
            command = [
                self.rpull, "-address", str(self.socket), "-namespace", NAMESPACE,
                "-snapshotter", snapshotter, "-labels", labels, "-plain-http",
                "-timeout", f"{int(timeout)}s", ref,
            ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 10, check=False)
        if done.returncode != 0:
            raise AssertionError(f"pulling {ref} failed:\n{done.stdout}\n{done.stderr}\n{self.logs()}")

    def run(self, ref: str, snapshotter: str, name: str, *command: str, timeout: float = 120) -> str:
        """`ctr run --rm` of `command` in the image; its standard output."""
        return self.ctr(
            "run", "--rm", "--snapshotter", snapshotter, "--fifo-dir", str(self.dir / "fifo"),
            ref, name, *command,
            timeout=timeout,
        )  # fmt: skip

    def cleanup_dir(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def runtime_stack() -> Iterator[RuntimeStack]:
    stack = RuntimeStack()
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        stack.cleanup_dir()
