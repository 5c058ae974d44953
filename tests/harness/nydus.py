"""Reading Nydus images back with the real `nydus-image` builder, for the unit and flow tests.

nydus-image 2.2.0's `unpack` reads every file of a bootstrap from one data blob, so it can only rebuild
single-layer trees: each layer is checked through its own bootstrap + blob with `unpack_layer` (full
fidelity), and a merged image bootstrap through `merged_tree`, built from `check` (validity, blob list,
inode listing) plus `inspect` (metadata and the chunk list of every regular file, whose data is read back
from the blobs and hashed). Blobs are looked up in a ContentStore by their digest, which is the blob id.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
from pathlib import Path

import pytest
import zstandard

from accel import digest as dg
from accel.drivers.nydus import readback, tools

# The engine's readers, re-exported for the tests.
from accel.drivers.nydus.readback import blob_dir as blob_dir
from accel.drivers.nydus.readback import bootstrap_of_layer as bootstrap_of_layer
from accel.errors import ConfigError
from accel.store import ContentStore
from tests.harness import trees

EROFS_MAGIC = 0xE0F5E1E2  # RAFS v6 superblock at offset 1024
RAFS_V5_MAGIC = 0x52414653  # "RAFS" at offset 0, followed by the version 0x500


def _builder_or_none() -> Path | None:
    try:
        return tools.nydus_builder()
    except ConfigError:
        return None


BUILDER = _builder_or_none()
needs_builder = pytest.mark.skipif(
    BUILDER is None, reason="nydus-image not found (run scripts/install-nydus to build nydus-rs 2.2.0)"
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """`nydus-image ARGS`; the test fails with the builder's output when it exits non-zero."""
    assert BUILDER is not None
    done = subprocess.run([str(BUILDER), *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"nydus-image {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def unpack_layer(store: ContentStore, blob_digest: str, bootstrap_digest: str, work: Path) -> Path:
    """One layer's tree as a tar, rebuilt by `nydus-image unpack` from the given bootstrap and its blob."""
    assert BUILDER is not None
    return readback.unpack_with_bootstrap(BUILDER, store, blob_digest, bootstrap_digest, work)


def fs_version_of(bootstrap: bytes) -> str:
    """RAFS version from the superblock magic: "6" (EROFS) or "5"."""
    if struct.unpack_from("<I", bootstrap, 1024)[0] == EROFS_MAGIC:
        return "6"
    magic, version = struct.unpack_from("<II", bootstrap, 0)
    assert (magic, version) == (RAFS_V5_MAGIC, 0x500), "bootstrap is neither RAFS v5 nor v6"
    return "5"


def check(bootstrap: Path, blobs: Path, work: Path) -> dict[str, object]:
    """`nydus-image check --output-json`: the builder's own validation of a bootstrap, as a dict."""
    assert BUILDER is not None
    return readback.check(BUILDER, bootstrap, blobs, work)


def checked_inodes(bootstrap: Path, blobs: Path) -> dict[str, tuple[str, int, str]]:
    """path -> (kind, size, symlink target) from the builder's own validation listing."""
    assert BUILDER is not None
    return readback.checked_inodes(BUILDER, bootstrap, blobs)


def inspect_dir(bootstrap: Path, directory: str, names: list[str]) -> list[str]:
    """`stat` each name of one directory in an interactive inspect session; one output block per name."""
    assert BUILDER is not None
    commands = [f"cd {part}" for part in directory.split("/") if part]
    commands += [f"stat {name}" for name in names] + ["exit"]
    done = subprocess.run(
        [str(BUILDER), "inspect", "--log-level", "warn", str(bootstrap)],
        input="\n".join(commands) + "\n",
        capture_output=True,
        text=True,
        check=True,
    )
    blocks = done.stdout.split("Inspecting RAFS :> ")[1:]
    return blocks[len(commands) - len(names) - 1 : len(commands) - 1]


_FIELD = re.compile(r"^\s*([A-Za-z ]+):\s+(.*)$", re.MULTILINE)
CHUNK = re.compile(
    r"compressed size: (\d+), decompressed size: (\d+)\s+"
    r"compressed offset: (\d+), .*?\s+blob id: ([0-9a-f]{64})"
)


def chunk_sizes(stat_block: str) -> list[tuple[int, int]]:
    """(compressed, decompressed) size of each chunk of the file an `inspect` stat block describes."""
    return [(int(c), int(d)) for c, d, _, _ in CHUNK.findall(stat_block)]


def chunk_blobs(stat_block: str) -> list[str]:
    """The blob id (hex digest) each chunk of the file an `inspect` stat block describes is stored in."""
    return [blob_id for _, _, _, blob_id in CHUNK.findall(stat_block)]


def read_file_from_blobs(store: ContentStore, stat_block: str) -> bytes:
    data = bytearray()
    for compressed, decompressed, offset, blob_id in CHUNK.findall(stat_block):
        with store.open(f"sha256:{blob_id}") as blob:
            blob.seek(int(offset))
            raw = blob.read(int(compressed))
        # Chunks that do not shrink are stored as they are.
        data += (
            raw
            if compressed == decompressed
            else zstandard.ZstdDecompressor().decompress(raw, int(decompressed))
        )
    return bytes(data)


def merged_tree(
    store: ContentStore, bootstrap: Path, *, contents: bool = True
) -> dict[str, dict[str, object]]:
    """Every path of a merged bootstrap with type, mode, owner, mtime, size, content hash and link target.

    xattrs are not in it: 2.2.0's `inspect` does not show them, `check` reports has_xattr false even when
    a layer bootstrap holds them, and `unpack` cannot read a bootstrap spread over several blobs; they are
    compared per layer (`compare_layer`) and, for the directories accel fills in, in the patch tars.
    Without `contents` file data is not read (zran chunks sit inside gzip streams): sizes stay compared.
    """
    inodes = checked_inodes(bootstrap, blob_dir(store))
    by_dir: dict[str, list[str]] = {}
    for path in inodes:
        parent, _, name = path.rpartition("/")
        by_dir.setdefault(parent, []).append(name)
    tree: dict[str, dict[str, object]] = {}
    for directory, names in by_dir.items():
        for name, block in zip(names, inspect_dir(bootstrap, directory, names), strict=True):
            path = f"{directory}/{name}" if directory else name
            fields = dict(_FIELD.findall(block))
            kind, size, target = inodes[path]
            entry: dict[str, object] = {
                "kind": kind,
                "mode": int(fields["Permissions"], 8) & 0o7777,
                "uid": int(fields["UID"]),
                "gid": int(fields["GID"]),
                "mtime": int(fields["Mtime"]),
            }
            if kind in ("file", "hardlink"):
                entry["size"] = size
                if contents:
                    content = read_file_from_blobs(store, block)
                    assert len(content) == size, path
                    entry["sha256"] = dg.of_bytes(content)
            if kind == "symlink":
                entry["linkname"] = target
            tree[path] = entry
    return tree


def expected_merged_tree(source_tars: list[bytes], *, contents: bool = True) -> dict[str, dict[str, object]]:
    """The source layers applied in order, in the shape `merged_tree` reports."""
    applied = trees.apply_layers(source_tars)
    linked = {entry.linkname for entry in applied.values() if entry.type == "hardlink"}
    expected: dict[str, dict[str, object]] = {}
    for path, entry in applied.items():
        real = applied[entry.linkname] if entry.type == "hardlink" else entry
        kind = {"reg": "file", "dir": "dir", "symlink": "symlink"}.get(real.type, "")
        if entry.type == "hardlink" or path in linked:
            kind = "hardlink"
        # A directory no layer carries gets the builder's defaults (0755, root, mtime 0), as `Entry` does.
        item: dict[str, object] = {
            "kind": kind,
            "mode": real.mode,
            "uid": real.uid,
            "gid": real.gid,
            "mtime": real.mtime,
        }
        if real.type == "reg":
            item["size"] = real.size
            if contents:
                item["sha256"] = real.sha256
        if real.type == "symlink":
            item["linkname"] = real.linkname
        expected[path] = item
    return expected


def compare_layer(source_tar: bytes | Path, unpacked: Path) -> list[str]:
    """Differences between a source layer and its `unpack`ed Nydus layer (RAFS keeps numeric owners only;
    `unpack` writes whole seconds): what `check` compares of a layer (`readback.LAYER_VIEW_OMITS`)."""
    return trees.compare(
        trees.apply_layers([source_tar]),
        trees.apply_layers([unpacked]),
        ignore=readback.LAYER_VIEW_OMITS,
        labels=("source layer", "nydus layer"),
    )


_TABLE_FIELD = re.compile(r"^([A-Za-z ]+):\s+(.*?)\s*$", re.MULTILINE)


def blob_table(bootstrap: Path) -> list[dict[str, str]]:
    """The bootstrap's blob table as `inspect` shows it: Blob ID, Compressor, Chunk Size, ... per blob."""
    assert BUILDER is not None
    done = subprocess.run(
        [str(BUILDER), "inspect", "--log-level", "warn", str(bootstrap)],
        input="blobs\nexit\n",
        capture_output=True,
        text=True,
        check=True,
    )
    listing = done.stdout.split("Inspecting RAFS :> ")[1]
    blobs = [f"Blob Index:{part}" for part in listing.split("Blob Index:")[1:]]
    return [dict(_TABLE_FIELD.findall(block)) for block in blobs]


def prefetch_table(bootstrap: Path) -> list[str]:
    """Paths in the bootstrap's prefetch table."""
    done = run("inspect", "--log-level", "warn", "--request", "prefetch", str(bootstrap))
    return [path for entry in json.loads(done.stdout) for path in entry["path"]]
