"""Reading Nydus images back with the real `nydus-image` (for `reader`, so `accel.verify`, and the tests).

nydus-image 2.2.0's `unpack` reads every file of a bootstrap from one data blob, so full-fidelity trees
come per layer (`unpack_layer`: the layer's own bootstrap, pulled from its blob trailer, and its blob); a
merged image bootstrap is validated by `check` and read by `merged_view`: `check --verbose` (names, kinds,
sizes, symlink targets, mtime seconds and nanoseconds, every chunk), `inspect` (`stat` by name through the
tree, `icheck` by inode where a name cannot be typed: mode, uid, gid; `blobs`: each blob's compressor), and
file data read from the blobs chunk by chunk and hashed. What 2.2.0 shows of a merged bootstrap leaves out
xattrs and device numbers (`MERGED_VIEW_OMITS`): those are compared per layer only. Blobs are looked up in a
ContentStore directory, whose file names are the hex digests, which are the blob ids.

nydus-image prints paths in Rust's Debug form (`"/a/dir-\x80"`): `rust_debug_string` turns them back into
the exact bytes, decoded like tar names (UTF-8 with surrogateescape), so names compare byte for byte.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import re
import stat
import subprocess
import tarfile
from pathlib import Path

import zstandard

from accel import digest as dg
from accel import trees
from accel.drivers.nydus import tools
from accel.drivers.nydus.trailer import BOOTSTRAP_TAR_NAME, ENTRY_BOOTSTRAP, extract_trailer_entry
from accel.errors import AccelError
from accel.store import ContentStore

# `check --verbose` lists inodes like: inode: file "/etc/hosts": ... i_size 36 ... link None ...
# The kind is file, dir, symlink, hardlink (any inode with several names) or empty (devices, FIFOs).
# Strings are in Rust's Debug form: a quote inside is escaped, so a quoted string ends at the first `"`
# not preceded by a backslash.
_QUOTED = r'"((?:[^"\\]|\\.)*)"'
_INODE_LINE = re.compile(
    rf"^inode: (\w*) {_QUOTED}: .* ino (\d+) .* i_nlink (\d+) i_size (\d+) .* has_xattr (\w+) "
    rf"link (None|Some\({_QUOTED}\)) i_mtime (-?\d+) i_mtime_nsec (\d+)"
)
_CHUNK_LINE = re.compile(
    r"^\s+chunk: id \w+, index \d+, blob_index (\d+), file_offset (\d+), "
    r"compressed (\d+)/(\d+), uncompressed \d+/(\d+)"
)
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]+\}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "0": "\0", "\\": "\\", '"': '"', "'": "'"}

# What `merged_view` cannot read back from a merged bootstrap with nydus-image 2.2.0 (compared per layer,
# through `unpack`, instead); plus owner names, which RAFS does not keep at all.
MERGED_VIEW_OMITS = frozenset({"uname", "gname", "xattrs", "devmajor", "devminor"})
# What a layer `unpack`ed by 2.2.0 cannot show (its tar headers carry whole seconds only).
LAYER_VIEW_OMITS = frozenset({"uname", "gname", "mtime_ns"})


def rust_debug_string(text: str) -> str:
    """A string as Rust's `{:?}` printed it, back to the name it stands for (bytes that are not UTF-8 as
    surrogate escapes, as `tarfile` decodes tar names)."""
    out = bytearray()
    position = 0
    for match in _ESCAPE.finditer(text):
        out += text[position : match.start()].encode("utf-8", "surrogateescape")
        code = match.group(1)
        if code.startswith("x") and len(code) == 3:
            out.append(int(code[1:], 16))
        elif code.startswith("u{"):
            out += chr(int(code[2:-1], 16)).encode("utf-8", "surrogatepass")
        else:
            out += _SIMPLE_ESCAPES.get(code, code).encode("utf-8", "surrogateescape")
        position = match.end()
    out += text[position:].encode("utf-8", "surrogateescape")
    return bytes(out).decode("utf-8", "surrogateescape")


class NydusReadError(AccelError):
    """nydus-image refused a bootstrap or blob, or a layer holds no bootstrap."""


def builder(explicit: Path | None = None) -> Path:
    """The nydus-image binary (ConfigError when there is none)."""
    return explicit or tools.nydus_builder()


def run(binary: Path, *args: str, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(
            [str(binary), *args],
            capture_output=True,
            input=stdin.encode() if stdin is not None else None,
            check=False,
        )
    except OSError as exc:
        raise NydusReadError(f"nydus-image {args[0]} could not run: {exc}") from exc
    stdout = done.stdout.decode("utf-8", "surrogateescape")
    if done.returncode != 0:
        output = (done.stderr.decode("utf-8", "replace") or stdout).strip()
        raise NydusReadError(f"nydus-image {args[0]} failed: {_one_line(output)[:600]}")
    return stdout


def _one_line(output: str) -> str:
    """nydus-image's error output in one line: no colours, log prefixes, source locations or backtrace."""
    text = _ANSI.sub("", output).split("\nstack backtrace:")[0]
    parts = []
    for line in text.splitlines():
        line = _LOG_PREFIX.sub("", line).strip().strip('"')
        if (line and not line.startswith(("at /", "note:", "Error:"))) or line.startswith("Error: "):
            parts.append(line)
    return " | ".join(parts)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LOG_PREFIX = re.compile(r"^\[[^\]]*\] \w+ \[[^\]]*\] ")


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
            kind, path, _ino, _nlink, size, _, _link, target = match.groups()[:8]
            path = trees.normalize_path(rust_debug_string(path))
            if path:  # the root is not compared
                inodes[path] = (kind, int(size), rust_debug_string(target or ""))
    return inodes


@dataclasses.dataclass
class _Inode:
    path: str
    ino: int
    size: int
    link: str
    mtime: int
    mtime_ns: int
    chunks: list[tuple[int, int, int, int]] = dataclasses.field(default_factory=list)
    # (blob index, compressed offset, compressed size, uncompressed size) per chunk, in file order


_TYPES = {
    stat.S_IFREG: "reg",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
}
_INSPECT_FIELD = re.compile(r"^(Inode Number|Mode|UID|GID|Blob ID|Compressor|Features):\s+(.*?)\s*$")


def _listed_inodes(binary: Path, bootstrap: Path, blobs: Path) -> list[_Inode]:
    listing = run(
        binary, "check", "--log-level", "warn", "--verbose", "--blob-dir", str(blobs), str(bootstrap)
    )
    inodes: list[_Inode] = []
    for line in listing.splitlines():
        if match := _INODE_LINE.match(line):
            _kind, path, ino, _nlink, size, _, _link, target, mtime, nsec = match.groups()
            inodes.append(
                _Inode(
                    trees.normalize_path(rust_debug_string(path)),
                    int(ino),
                    int(size),
                    rust_debug_string(target or ""),
                    int(mtime),
                    int(nsec),
                )
            )
        elif (chunk := _CHUNK_LINE.match(line)) and inodes:
            blob, _file_offset, offset, compressed, uncompressed = map(int, chunk.groups())
            inodes[-1].chunks.append((blob, offset, compressed, uncompressed))
        elif line.startswith("inode:"):
            raise NydusReadError(f"nydus-image check listed an inode accel cannot parse: {line[:200]}")
    return inodes


def _addressable(name: str) -> bool:
    """Whether `inspect` can be given the name: its commands are split on ASCII whitespace and are UTF-8."""
    return name not in ("", ".", "..") and name.isprintable() and not any(c.isspace() for c in name)


def _stat_commands(listed: list[_Inode]) -> list[str]:
    """`inspect` commands reaching every inode of the listing: `cd`/`stat` by name through the tree (one
    pass), `icheck INODE` for what names cannot address (it walks the whole tree per inode, so only those)."""
    children: dict[str, list[_Inode]] = {}
    for inode in listed:
        if inode.path:
            children.setdefault(inode.path.rpartition("/")[0], []).append(inode)
    commands: list[str] = []
    unreached: list[int] = []

    def below(directory: str) -> None:
        for child in children.get(directory, []):
            name = child.path.rpartition("/")[2]
            if not _addressable(name):
                unreached.append(child.ino)
                unreached.extend(i.ino for i in listed if i.path.startswith(child.path + "/"))
                continue
            commands.append(f"stat {name}")
            if child.path in children:
                commands.append(f"cd {name}")
                below(child.path)
                commands.append("cd ..")

    below("")
    return commands + [f"icheck {ino}" for ino in sorted(set(unreached))]


def _inspected(
    binary: Path, bootstrap: Path, listed: list[_Inode]
) -> tuple[dict[int, tuple[int, int, int]], list[dict[str, str]]]:
    """(ino → (st_mode, uid, gid), the blob table), from one `inspect` session."""
    commands = ["blobs", *_stat_commands(listed), "exit"]
    output = run(binary, "inspect", "--log-level", "warn", str(bootstrap), stdin="\n".join(commands) + "\n")
    attributes: dict[int, tuple[int, int, int]] = {}
    blobs: list[dict[str, str]] = []
    fields: dict[str, str] = {}

    def flush() -> None:
        if "Blob ID" in fields:
            blobs.append(dict(fields))
        elif {"Inode Number", "Mode", "UID", "GID"} <= fields.keys():
            attributes[int(fields["Inode Number"])] = (
                int(fields["Mode"], 16),
                int(fields["UID"]),
                int(fields["GID"]),
            )
        fields.clear()

    for line in output.splitlines():
        if match := _INSPECT_FIELD.match(line):
            name, value = match.groups()
            if name in ("Inode Number", "Blob ID") and fields:
                flush()
            fields[name] = value.removeprefix("0x")
    flush()
    return attributes, blobs


def _file_digest(inode: _Inode, blobs: Path, table: list[dict[str, str]]) -> str:
    """The sha256 of a file's data as the runtime reads it: each chunk from its blob, decompressed."""
    h = hashlib.sha256()
    for blob_index, offset, compressed, uncompressed in inode.chunks:
        if not 0 <= blob_index < len(table):
            raise NydusReadError(f"{inode.path}: a chunk in blob {blob_index}, which the bootstrap lacks")
        blob = table[blob_index]
        try:
            with (blobs / blob["Blob ID"]).open("rb") as f:
                f.seek(offset)
                raw = f.read(compressed)
        except OSError as exc:
            raise NydusReadError(f"{inode.path}: blob {blob['Blob ID']}: {exc}") from exc
        if len(raw) != compressed:
            raise NydusReadError(f"{inode.path}: a chunk past the end of blob {blob['Blob ID']}")
        if compressed == uncompressed:  # chunks that do not shrink are stored as they are
            data = raw
        elif blob.get("Compressor", "").lower() == "zstd":
            try:
                data = zstandard.ZstdDecompressor().decompress(raw, max_output_size=uncompressed)
            except zstandard.ZstdError as exc:
                raise NydusReadError(f"{inode.path}: a chunk does not decompress: {exc}") from exc
        elif blob.get("Compressor", "").lower() == "lz4block":
            try:
                data = lz4_block_decompress(raw, uncompressed)
            except ValueError as exc:
                raise NydusReadError(f"{inode.path}: a chunk does not decompress: {exc}") from exc
        else:
            raise NydusReadError(
                f"{inode.path}: chunks compressed with {blob.get('Compressor')} cannot be read back"
            )
        if len(data) != uncompressed:
            raise NydusReadError(
                f"{inode.path}: a chunk of {len(data)} bytes, the bootstrap says {uncompressed}"
            )
        h.update(data)
    return "sha256:" + h.hexdigest()


def _lz4_length(data: bytes, position: int, nibble: int) -> tuple[int, int]:
    """An LZ4 length: the token's 4-bit `nibble`, and when it is 15 the bytes after `position` added until
    one is not 255. Returns the length and the position after it."""
    length = nibble
    if nibble == 15:
        while True:
            extra = data[position]
            position += 1
            length += extra
            if extra != 255:
                break
    return length, position


def lz4_block_decompress(data: bytes, size: int) -> bytes:
    """An LZ4 block (no frame), as nydus-image's `lz4_block` compressor writes each chunk; `size` is the
    decompressed size. Plain Python: no LZ4 binding is installed, and chunks are small."""
    out = bytearray()
    position = 0
    while position < len(data):
        token = data[position]
        position += 1
        literals, position = _lz4_length(data, position, token >> 4)
        out += data[position : position + literals]
        position += literals
        if position >= len(data):
            break  # the last sequence has literals only
        if position + 2 > len(data):
            raise ValueError("an LZ4 block ends inside a match offset")
        offset = data[position] | data[position + 1] << 8
        position += 2
        length, position = _lz4_length(data, position, token & 15)
        length += 4  # the minimum match
        if not 0 < offset <= len(out):
            raise ValueError(f"an LZ4 match offset {offset} outside the {len(out)} bytes written")
        start = len(out) - offset
        for i in range(length):  # a match may overlap what it copies
            out.append(out[start + i])
        if len(out) > size:
            raise ValueError(f"an LZ4 block holds more than {size} bytes")
    if len(out) != size:
        raise ValueError(f"an LZ4 block of {len(out)} bytes, {size} expected")
    return bytes(out)


def merged_view(
    binary: Path, bootstrap: Path, blobs: Path, *, contents: bool = True
) -> dict[str, trees.Entry]:
    """A merged bootstrap's tree as `trees.apply_entries` shapes one (fields in `MERGED_VIEW_OMITS` left at
    their defaults). Without `contents` file data is not read (zran chunks sit inside gzip streams)."""
    listed = _listed_inodes(binary, bootstrap, blobs)
    attributes, table = _inspected(binary, bootstrap, listed)
    if contents and any("ZRAN" in blob.get("Features", "") for blob in table):
        contents = False
    nodes: dict[str, tuple[trees.Entry, object]] = {}
    for inode in listed:
        if not inode.path:
            continue
        if inode.ino not in attributes:
            raise NydusReadError(f"{inode.path}: nydus-image inspect shows no inode {inode.ino}")
        mode, uid, gid = attributes[inode.ino]
        kind = _TYPES.get(stat.S_IFMT(mode))
        if kind is None:
            raise NydusReadError(f"{inode.path}: inode of type {oct(stat.S_IFMT(mode))}")
        if kind == "reg" and inode.size != sum(c[3] for c in inode.chunks):
            raise NydusReadError(
                f"{inode.path}: {inode.size} bytes, its chunks hold {sum(c[3] for c in inode.chunks)}"
            )
        entry = trees.Entry(
            path=inode.path,
            type=kind,
            mode=mode & 0o7777,
            uid=uid,
            gid=gid,
            size=inode.size if kind == "reg" else 0,
            sha256=(_file_digest(inode, blobs, table) if contents else None) if kind == "reg" else None,
            linkname=inode.link if kind == "symlink" else "",
            mtime=inode.mtime,
            mtime_ns=inode.mtime_ns,
        )
        # Directories never share inodes; every other path with the same inode is one file.
        nodes[inode.path] = (entry, inode.ino if kind != "dir" else ("dir", inode.path))
    return trees.normalise_hardlinks(nodes)


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
