"""The `nydus-image` process: running create/merge with its output logged, feeding a tar through a FIFO.

The builder reads its input tar from a path, so a layer is streamed into a FIFO while the builder runs
(fixed up on the way, see `tar.builder_compatible_tar`, or `tar.ScanningFeed` when the same read scans the
layer) instead of being written to disk first.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import logging
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, BinaryIO

from accel import cancel
from accel.drivers.nydus.tar import builder_compatible_tar
from accel.errors import DriverError
from accel.store import ContentStore

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 40
FIFO_BUFFER_SIZE = 1 << 20

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def run_builder(
    builder: Path,
    args: list[str],
    *,
    what: str,
    stdin_text: str | None = None,
    fifo: Path | None = None,
    source: BinaryIO | None = None,
    chunks: Iterable[bytes] | None = None,
) -> None:
    """Run the builder; optionally feed `fifo` (its input path) while it runs: `source` fixed up by
    `builder_compatible_tar`, or `chunks` as they are.

    When `chunks` raises, the builder is killed and the exception propagates. When the builder stops reading
    (it failed, or it ended at the end-of-archive marker), what remains of `chunks` stays unread.
    """
    if source is not None and chunks is not None:
        raise ValueError("run_builder feeds either a source or chunks, not both")
    command = [str(builder), *args]
    log.debug("running %s", " ".join(command))
    # Backtraces are for the builder's developers; a panic is summarised in one line below.
    env = os.environ | {"RUST_BACKTRACE": "0"}
    proc = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    threads = [threading.Thread(target=_pump_log, args=(proc.stdout, tail, what), daemon=True)]
    if stdin_text is not None:
        assert proc.stdin is not None
        threads.append(threading.Thread(target=_write_text, args=(proc.stdin, stdin_text), daemon=True))
    for thread in threads:
        thread.start()
    try:
        # A cancelled conversion kills the builder, wherever it is (accel.cancel): the feed then stops on a
        # broken pipe, and the wait returns.
        with cancel.on_cancel(proc.kill):
            if fifo is not None and source is not None:
                chunks = builder_compatible_tar(source)
            if fifo is not None and chunks is not None:
                _feed_fifo(fifo, chunks, proc)
            returncode = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        for thread in threads:
            thread.join()
    cancel.check()  # killed because the conversion was cancelled: not a builder failure
    if returncode != 0:
        raise DriverError(failure_message(what, returncode, list(tail)))


# log-panics prints "thread 'main' panicked at '<message>': <file>:<line>" followed by a backtrace.
_PANIC = re.compile(r"panicked at '(?P<message>.*)'(?::\s*(?P<where>\S+))?")
_BACKTRACE_FRAME = re.compile(r"^\s*\d+:\s|^\s*at\s|note: .*RUST_BACKTRACE")
_BACKTRACE_HINT = re.compile(r"note: .*RUST_BACKTRACE")


def failure_message(what: str, returncode: int, output: list[str]) -> str:
    """How a failed builder run is reported: a panic or abort in one line, an error with its own words.

    nydus-image 2.2.0 panics (exit 101) or aborts (SIGABRT, exit -6) on some inputs it cannot handle;
    its backtrace says nothing to a user, so only the panic message is kept.
    """
    if returncode < 0:
        try:
            how = f"aborted ({signal.Signals(-returncode).name})"
        except ValueError:
            how = f"killed by signal {-returncode}"
    else:
        how = f"failed with exit code {returncode}"
    for line in output:
        panic = _PANIC.search(line)
        if panic:
            return f"nydus-image {what} {how}: it panicked: {panic.group('message')}"
    if returncode < 0:
        last = next((line for line in reversed(output) if not _BACKTRACE_FRAME.search(line)), "")
        return f"nydus-image {what} {how}" + (f": {last.strip()}" if last else "")
    detail = "\n".join(line for line in output if not _BACKTRACE_HINT.search(line)) or "(no output)"
    return f"nydus-image {what} {how}:\n{detail}"


@contextlib.contextmanager
def scratch_dir(store: ContentStore) -> Iterator[Path]:
    # Inside the store's ingest area, so finished files move into blobs/ with a rename.
    with tempfile.TemporaryDirectory(prefix="nydus-", dir=store.root / "ingest") as name:
        yield Path(name)


def _pump_log(stream: IO[bytes], tail: collections.deque[str], what: str) -> None:
    for raw in stream:
        line = _ANSI_ESCAPE.sub("", raw.decode("utf-8", "replace")).rstrip()
        if line:
            tail.append(line)
            log.info("nydus-image %s: %s", what, line)
    stream.close()


def _write_text(stream: IO[bytes], text: str) -> None:
    # The builder may exit without reading stdin; that is its business, not an error here.
    with contextlib.suppress(BrokenPipeError, OSError):
        stream.write(text.encode())
    with contextlib.suppress(BrokenPipeError, OSError):
        stream.close()


def _open_fifo_writer(fifo: Path, proc: subprocess.Popen[bytes]) -> int | None:
    """Open the FIFO once the builder opened it for reading; None when the builder exited first."""
    delay = 0.001
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            if proc.poll() is not None:
                return None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            continue
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        # A deeper FIFO lets the feeder parse headers ahead while the builder compresses (and the other way
        # round): 7% off a Debian rootfs conversion. The default pipe-max-size allows it unprivileged.
        set_pipe_size = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
        if set_pipe_size is not None:
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, set_pipe_size, FIFO_BUFFER_SIZE)
        return fd


def _feed_fifo(fifo: Path, chunks: Iterable[bytes], proc: subprocess.Popen[bytes]) -> None:
    fd = _open_fifo_writer(fifo, proc)
    if fd is None:
        return
    with os.fdopen(fd, "wb", buffering=0) as sink:
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    written = sink.write(view)
                    view = view[written or 0 :]
        except BrokenPipeError:
            # The builder stopped reading (it failed); its exit code and output tell why.
            pass
