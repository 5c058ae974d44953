"""Conversion slots: at most N at once, the largest announced layer first, none held by a silent one."""

from __future__ import annotations

import threading
import time

from tasks.slots import ConversionSlots


def _run_all(slots: ConversionSlots, arrivals: list[tuple[str, int]], hold: float = 0.05) -> list[str]:
    """Each (key, size) asks for a slot on its own thread, in list order: the next thread starts only once
    the one before has asked (registered under the slots' lock). Returns the order they got one."""
    order: list[str] = []
    lock = threading.Lock()
    asked = {key: threading.Event() for key, _ in arrivals}
    may_start = slots._may_start

    def may_start_once_asked(key: str, size: int, waited: float) -> bool:
        asked[key].set()  # `slot` checks first right after registering `key`, holding the lock
        return may_start(key, size, waited)

    slots._may_start = may_start_once_asked  # type: ignore[method-assign]

    def convert(key: str, size: int) -> None:
        with slots.slot(key, size):
            with lock:
                order.append(key)
            time.sleep(hold)

    threads = []
    for key, size in arrivals:
        thread = threading.Thread(target=convert, args=(key, size), daemon=True)
        thread.start()
        threads.append(thread)
        assert asked[key].wait(30)  # the small layers ask first
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    return order


def test_the_largest_announced_layers_take_the_slots_first_whatever_order_they_ask_in() -> None:
    slots = ConversionSlots(limit=2)
    layers = [("small", 10), ("medium", 50), ("large", 100), ("tiny", 1)]
    for key, size in layers:
        slots.announce(key, size)
    assert _run_all(slots, layers) == ["large", "medium", "small", "tiny"]


def test_without_announcements_it_is_first_come_first_served() -> None:
    slots = ConversionSlots(limit=1)
    layers = [("small", 10), ("medium", 50), ("large", 100)]
    order = _run_all(slots, layers, hold=0.1)
    assert order[0] == "small"  # nobody larger was announced: the first to ask does not wait


def test_a_withdrawn_conversion_does_not_hold_smaller_ones_back() -> None:
    slots = ConversionSlots(limit=2, wait_for_larger=60)
    slots.announce("cached", 1000)  # its task run is answered by the cache: it never asks
    slots.announce("small", 10)
    started = threading.Event()

    def convert() -> None:
        with slots.slot("small", 10):
            started.set()

    thread = threading.Thread(target=convert, daemon=True)
    thread.start()
    assert not started.wait(0.3)  # it waits for the larger layer
    slots.withdraw("cached")
    assert started.wait(10)
    thread.join(10)


def test_a_larger_layer_that_never_asks_holds_the_others_only_for_a_while() -> None:
    slots = ConversionSlots(limit=2, wait_for_larger=0.3)
    slots.announce("stuck", 1000)  # e.g. no thread left to start its task run
    began = time.monotonic()
    with slots.slot("small", 10):
        waited = time.monotonic() - began
    assert 0.3 <= waited < 10


def test_never_more_than_the_limit_at_once() -> None:
    slots = ConversionSlots(limit=2)
    running = 0
    peak = 0
    lock = threading.Lock()

    def convert(key: str, size: int) -> None:
        nonlocal running, peak
        with slots.slot(key, size):
            with lock:
                running += 1
                peak = max(peak, running)
            time.sleep(0.02)
            with lock:
                running -= 1

    layers = [(f"layer{i}", i % 3) for i in range(12)]
    for key, size in layers:
        slots.announce(key, size)
    threads = [threading.Thread(target=convert, args=layer, daemon=True) for layer in layers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert peak == 2
