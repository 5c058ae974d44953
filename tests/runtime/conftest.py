"""The runtime tier: converted images mounted with nydusd and run by containerd with nydus-snapshotter and
stargz-snapshotter, reading lazily from a loopback registry through a byte-counting proxy.

Every test below this directory is `runtime`. A machine where FUSE or private mount namespaces are refused
skips the tier with one line saying why (test_runtimes.py, at import). Figures (bytes fetched, timings)
are printed at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import runtimes

RUNTIME_TESTS = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if RUNTIME_TESTS in item.path.resolve().parents:
            item.add_marker(pytest.mark.runtime)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if runtimes.FIGURES:
        terminalreporter.section("runtime tier: bytes fetched and timings")
        for line in runtimes.FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def runtime_stack() -> Iterator[runtimes.RuntimeStack]:
    with runtimes.runtime_stack() as stack:
        yield stack
