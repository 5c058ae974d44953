"""Issue 22's durability acceptance: `kill -9` of acceld (and in some rounds of its runner too) at random
points during a 30-push burst, repeated 5 times; every push is converted exactly once.

One burst of 30 Harbor pushes (30 distinct one-layer images) is sent by a sender that behaves like Harbor:
a push answered non-2xx, or not answered at all, is sent again until it is answered 2xx. While it goes on,
acceld is killed five times with SIGKILL, each time at a random moment after a random number of pushes was
answered: a kill may land between the journal write and the answer, between a flow run's creation and the
journal's settling, or while runs are PENDING or RUNNING (their processes die with the runner). After each
kill, no process acceld started may be alive 10 s later, and acceld is started again on the same work dir.

At the end, each image has exactly one conversion run and it COMPLETED (none lost, none run twice: acceld's
task list lists every run of `convert-image`, failed ones too), and its target tag is a valid eStargz image
of that source. The moments are drawn from a seed, printed with any failure (ACCEL_KILLBURST_SEED=… to
replay one).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from accel.store import ContentStore
from tests.harness import imagegen
from tests.harness.api import harbor_for, wait_until
from tests.harness.conversions import assert_converted
from tests.harness.pushing import push
from tests.harness.registry import free_port
from tests.harness.services import WEBHOOK_AUTH, Acceld, PrefectServer, acceld_settings, descendants, tail

BURST = 30
KILLS = 5
SENDERS = 3  # pushes in flight at once, so some kill lands while requests are being answered
SEND_GAP = (0.0, 2.5)  # seconds a sender waits before each push: the burst spans the first kills
KILL_WINDOW = (1.0, 10.0)  # seconds after acceld is ready that a kill comes
ORPHAN_GRACE = 10.0  # seconds within which every process of a killed acceld must be gone


def _tiny_image(host: str, store: ContentStore, index: int) -> Reference:
    """One layer of one small file: the cheapest image that is still a conversion of its own."""
    layer = imagegen.TarBuilder(auto_parents=True)
    layer.file("seed.txt", f"kill burst {index} {uuid.uuid4().hex}\n".encode())
    image = imagegen.generate_image([layer], store)
    ref = Reference.parse(f"{host}/killburst/{uuid.uuid4().hex[:10]}:v{index}")
    with RegistryClient({host: HostConfig()}) as client:
        return ref.with_digest(push(client, store, ref, image))


class HarborSender:
    """Sends each push until it is answered 2xx, as Harbor's webhook job does (a connection error or a
    non-2xx answer is retried); counts the pushes answered so far."""

    def __init__(self, url: str, refs: list[Reference], rng: random.Random) -> None:
        self.url = url
        self.refs = refs
        self.gaps = [rng.uniform(*SEND_GAP) for _ in refs]  # drawn up front: the seed decides them
        self.answered = 0
        self.retries = 0
        self.answers: dict[str, dict] = {}
        self.stopped = threading.Event()  # the test failed: nobody will start acceld again
        self._lock = threading.Lock()

    def send(self, index: int) -> None:
        time.sleep(self.gaps[index])
        ref = self.refs[index]
        while not self.stopped.is_set():
            try:
                r = httpx.post(
                    f"{self.url}/api/v1/conversions", json=harbor_for(ref), headers=WEBHOOK_AUTH, timeout=10
                )
                if 200 <= r.status_code < 300:
                    with self._lock:
                        self.answers[str(ref)] = r.json()
                        self.answered += 1
                    return
            except httpx.HTTPError:
                pass
            with self._lock:
                self.retries += 1
            time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill(service: Acceld, with_runner: bool) -> list[int]:
    """`kill -9` of acceld (and of its runner: every direct child but its flow runs' processes, which are
    the runner's children); the pids still alive ORPHAN_GRACE seconds later."""
    started = descendants(service.pid)
    runners = [p for p in started if _parent(p) == service.pid] if with_runner else []
    for pid in [service.pid, *runners]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    service.wait(timeout=10)
    deadline = time.monotonic() + ORPHAN_GRACE
    while any(_alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in started if _alive(p)]
    for pid in left:  # not to disturb the rest of the run; the test fails on them
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


@contextlib.contextmanager
def _stopping(sender: HarborSender) -> Iterator[None]:
    """The sender gives up when the test fails (else the pool would wait for it forever)."""
    try:
        yield
    except BaseException:
        sender.stopped.set()
        raise


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Any failure names the seed that drew this run's kill points."""
    try:
        yield
    except (AssertionError, RuntimeError) as exc:
        raise AssertionError(f"{exc}\n(seed {seed}: rerun with ACCEL_KILLBURST_SEED={seed})") from exc


def test_kill_9_during_a_push_burst_converts_every_push_exactly_once(registry, tmp_path):
    seed = int(os.environ.get("ACCEL_KILLBURST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"kill burst seed {seed}")
    rng = random.Random(seed)
    # How long after acceld is ready (started, or restarted) each kill comes, and whether its runner dies
    # too. Pushes are spread out, so the first kills land while pushes are being answered and the later
    # ones while the runs they created are pending or running.
    kill_after = [rng.uniform(*KILL_WINDOW) for _ in range(KILLS)]
    with_runner = [rng.random() < 0.5 for _ in range(KILLS)]

    store = ContentStore(tmp_path / "source")
    refs = [_tiny_image(registry.host, store, i) for i in range(BURST)]
    prefect = PrefectServer(tmp_path / "prefect")  # its own: the runs counted are this test's only
    prefect.start()
    service = Acceld(
        tmp_path / "acceld", prefect, acceld_settings(tmp_path / "acceld", free_port(), [registry.host])
    )
    rounds: list[str] = []
    try:
        with _seeded(seed):
            service.start(timeout=300)
            sender = HarborSender(service.url, refs, rng)
            with ThreadPoolExecutor(SENDERS) as pool, _stopping(sender):
                sending = [pool.submit(sender.send, i) for i in range(BURST)]
                for round_, (after, runner) in enumerate(zip(kill_after, with_runner, strict=True)):
                    time.sleep(after)
                    answered = sender.answered
                    left = _kill(service, with_runner=runner)
                    rounds.append(
                        f"round {round_}: killed {after:.1f}s after ready, {answered} pushes answered, "
                        f"{'with' if runner else 'without'} its runner"
                    )
                    print(rounds[-1], flush=True)
                    assert left == [], f"alive {ORPHAN_GRACE:g} s after {rounds[-1]}: {left}"
                    service.start(timeout=300)
                for job in sending:
                    job.result(timeout=600)
            print(f"{sender.retries} sends retried")  # (each round was printed as it happened)

            def listed() -> list[dict] | None:
                r = httpx.get(
                    f"{service.url}/api/v1/conversions",
                    params={"limit": 1000},
                    headers=WEBHOOK_AUTH,
                    timeout=60,
                )
                if r.status_code != 200:
                    return None
                tasks = r.json()
                done = {t["source"] for t in tasks if t["status"] != "PROCESSING"}
                return tasks if all(str(ref) in done for ref in refs) else None

            tasks = wait_until(listed, timeout=900, what=f"every one of the {BURST} pushes to have a run")
            time.sleep(3)  # a second run created late (a replay) would show in the next listing
            tasks = listed() or tasks
            runs = {str(ref): [t for t in tasks if t["source"] == str(ref)] for ref in refs}
            extra = {
                s: [(t["id"], t["status"], t["reason"]) for t in r] for s, r in runs.items() if len(r) != 1
            }
            assert extra == {}, f"images without exactly one run: {extra}\n" + "\n".join(rounds)
            failed = {
                s: (r[0]["status"], r[0]["reason"]) for s, r in runs.items() if r[0]["status"] != "COMPLETED"
            }
            assert failed == {}, f"runs that did not complete: {failed}\n" + "\n".join(rounds)
            for ref in refs:
                assert_converted(ref)
    finally:
        service.stop()
        log = service.log()
        print("\n".join(line for line in log.splitlines() if "orphan" in line or "replaying" in line))
        print(tail(service.log_path, 3000))
        prefect.stop()
