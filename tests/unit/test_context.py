"""The per-process Context is keyed by the config file's content, not its mtime."""

from __future__ import annotations

import gc
import os

import pytest

from accel.context import context_for
from accel.errors import ConfigError
from tests.harness.configs import driver, write_config


def test_same_content_is_one_context_and_new_content_a_new_one(tmp_path):
    path = write_config(tmp_path / "config.yaml", {"127.0.0.1:1": {}}, [driver("estargz")])
    first = context_for(path)
    assert context_for(str(path)) is first
    stat = path.stat()
    # Rewritten with the same content and a later mtime: still the same settings, so the same context.
    path.write_text(path.read_text())
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert context_for(path) is first
    # Edited within the same mtime (coarse clocks, fast edits): the new content still takes effect.
    write_config(path, {"127.0.0.1:1": {}}, [driver("zstdchunked")])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    edited = context_for(path)
    assert edited is not first
    assert [d.type for d in edited.settings.converter.all_drivers()] == ["zstdchunked"]


def test_a_missing_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        context_for(tmp_path / "missing.yaml")


def test_an_edited_config_replaces_its_context_and_closes_the_old_client(tmp_path):
    path = write_config(tmp_path / "config.yaml", {"127.0.0.1:1": {}}, [driver("estargz")])
    first = context_for(path)
    http = first.client._http
    write_config(path, {"127.0.0.1:1": {}}, [driver("zstdchunked")])
    assert context_for(path) is not first
    assert not http.is_closed  # a task still running with the old context keeps its client
    del first
    gc.collect()
    assert http.is_closed  # released: its connections are closed, not leaked
