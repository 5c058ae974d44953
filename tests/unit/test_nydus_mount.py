"""The mounted view's row where this machine cannot mount: it says why instead of silently skipping."""

from __future__ import annotations

from pathlib import Path

import pytest

from accel.drivers.nydus import mount
from accel.drivers.nydus.reader import MOUNT_LABEL
from tests.harness import nydus as nh
from tests.harness.runtimes import check_mounted, nydus_layouts

pytestmark = [nh.needs_builder, pytest.mark.nydus]


def test_a_machine_without_fuse_gets_a_row_saying_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mount, "fuse_unavailable", lambda: "/dev/fuse does not exist")
    source, target = nydus_layouts(tmp_path, 64 * 1024)
    verdict = check_mounted(source, target, tmp_path / "verify")
    assert verdict.ok, verdict.table()
    [row] = [row for row in verdict.layers if row.format == MOUNT_LABEL]
    assert row.checks == ["not mounted: /dev/fuse does not exist"]
    assert "not mounted: /dev/fuse does not exist" in verdict.table()


def test_mount_points_are_read_from_mountinfo(tmp_path: Path) -> None:
    assert mount.is_mounted(Path("/proc"))
    assert not mount.is_mounted(tmp_path)


def test_the_daemon_reads_only_what_is_read() -> None:
    config = mount.daemon_config(mount.RegistryBlobs("127.0.0.1:5000", "a/b", scheme="http"), Path("/c"))
    assert config["fs_prefetch"] == {"enable": False}
    assert config["device"]["backend"] == {
        "type": "registry",
        "config": {"scheme": "http", "host": "127.0.0.1:5000", "repo": "a/b"},
    }
    assert config["device"]["cache"]["type"] == "blobcache"  # RAFS v6 needs it
