"""Reading Nydus images back with the real `nydus-image` (for `reader`, so `accel.verify`, and the tests).

nydus-image 2.2.0's `unpack` reads every file of a bootstrap from one data blob, so full-fidelity trees
come per layer (`unpack_layer`: the layer's own bootstrap, pulled from its blob trailer, and its blob); a
merged image bootstrap is validated by `check` and listed by `check --verbose` (`checked_inodes`). Blobs are
looked up in a ContentStore directory, whose file names are the hex digests, which are the blob ids.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import tarfile
from collections.abc import Mapping
from pathlib import Path

from accel import digest as dg
from accel import trees
from accel.drivers.nydus import tools
from accel.drivers.nydus.trailer import BOOTSTRAP_TAR_NAME, ENTRY_BOOTSTRAP, extract_trailer_entry
from accel.errors import AccelError
from accel.store import ContentStore

# `check --verbose` lists inodes like: inode: file "/etc/hosts": ... i_size 36 ... link None ...
# The kind is file, dir, symlink, hardlink (any inode with several names) or empty (devices, FIFOs).
_INODE_LINE = re.compile(
    r'^inode: (\w*) "(.*)": .* i_size (\d+) .* has_xattr (\w+) link (None|Some\("(.*)"\))'
)


class NydusReadError(AccelError):
    """nydus-image refused a bootstrap or blob, or a layer holds no bootstrap."""


def builder(explicit: Path | None = None) -> Path:
    """The nydus-image binary (ConfigError when there is none)."""
    return explicit or tools.nydus_builder()


def run(binary: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run([str(binary), *args], capture_output=True, text=True, input=stdin, check=False)
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()
        raise NydusReadError(f"nydus-image {args[0]} failed: {output[-400:]}")
    return done.stdout


def blob_dir(store: ContentStore) -> Path:
    """The store's blob directory: blobs named by their hex digest, which is what `--blob-dir` wants."""
    return store.path(dg.of_bytes(b"")).parent


def bootstrap_of_layer(layer_blob: Path, out: Path) -> Path:
    """`image/image.boot` of a bootstrap layer (a gzip tar) written to `out`."""
    try:
        with gzip.open(layer_blob, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if member.name.lstrip("./") == BOOTSTRAP_TAR_NAME:
                    content = tar.extractfile(member)
                    assert content is not None
                    out.write_bytes(content.read())
                    return out
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise NydusReadError(f"bootstrap layer unreadable: {exc}") from exc
    raise NydusReadError(f"no {BOOTSTRAP_TAR_NAME} in the bootstrap layer")


def check(binary: Path, bootstrap: Path, blobs: Path, work: Path) -> dict[str, object]:
    """`nydus-image check --output-json`: the builder's own validation of a bootstrap."""
    report = work / f"{bootstrap.name}.check.json"
    run(
        binary,
        "check",
        "--log-level",
        "warn",
        "--blob-dir",
        str(blobs),
        "--output-json",
        str(report),
        str(bootstrap),
    )
    return json.loads(report.read_text())


def checked_inodes(binary: Path, bootstrap: Path, blobs: Path) -> dict[str, tuple[str, int, str]]:
    """path → (kind, size, symlink target) from the builder's own validation listing."""
    listing = run(
        binary, "check", "--log-level", "warn", "--verbose", "--blob-dir", str(blobs), str(bootstrap)
    )
    inodes = {}
    for line in listing.splitlines():
        match = _INODE_LINE.match(line)
        if match:
            kind, path, size, _, _link, target = match.groups()
            if trees.normalize_path(path):  # the root is not compared
                inodes[trees.normalize_path(path)] = (kind, int(size), target or "")
    return inodes


def expected_listing(applied: Mapping[str, trees.Entry]) -> dict[str, tuple[str, int, str]]:
    """An applied tree in the shape `checked_inodes` reports."""
    linked = {entry.linkname for entry in applied.values() if entry.type == "hardlink"}
    expected = {}
    for path, entry in applied.items():
        real = applied[entry.linkname] if entry.type == "hardlink" else entry
        kind = {"reg": "file", "dir": "dir", "symlink": "symlink"}.get(real.type, "")
        if entry.type == "hardlink" or path in linked:
            kind = "hardlink"
        size = real.size if real.type == "reg" else len(real.linkname) if real.type == "symlink" else None
        expected[path] = (
            kind,
            size if size is not None else -1,
            real.linkname if real.type == "symlink" else "",
        )
    return expected


def compare_listing(
    applied: Mapping[str, trees.Entry], listed: Mapping[str, tuple[str, int, str]]
) -> str | None:
    """The first path where the merged bootstrap's listing differs from the applied source tree."""
    expected = expected_listing(applied)
    for path in sorted(expected.keys() | listed.keys()):
        want, got = expected.get(path), listed.get(path)
        if got is None:
            return f"{path}: only in source"
        if want is None:
            return f"{path}: only in target"
        if want[0] != got[0] or want[2] != got[2] or (want[1] >= 0 and want[1] != got[1]):
            return f"{path}: {want} in source, {got} in target (kind, size, link target)"
    return None


def unpack_layer(binary: Path, store: ContentStore, blob_digest: str, work: Path) -> Path:
    """One layer's tree as a tar, rebuilt by `nydus-image unpack` from the bootstrap in its trailer."""
    try:
        bootstrap = extract_trailer_entry(store, blob_digest, ENTRY_BOOTSTRAP)
    except AccelError as exc:
        raise NydusReadError(f"layer bootstrap: {exc}") from exc
    return unpack_with_bootstrap(binary, store, blob_digest, bootstrap.digest, work)


def unpack_with_bootstrap(
    binary: Path, store: ContentStore, blob_digest: str, bootstrap_digest: str, work: Path
) -> Path:
    """One layer's tree as a tar, rebuilt by `nydus-image unpack` from a given bootstrap and the blob."""
    output = work / f"{dg.hex_of(blob_digest)}.tar"
    run(binary, "unpack", "--log-level", "warn", "--blob", str(store.path(blob_digest)),
        "--output", str(output), str(store.path(bootstrap_digest)))  # fmt: skip
    return output
