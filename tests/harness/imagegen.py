"""Deterministic synthetic source images for conversion tests.

`TarBuilder` describes one layer entry by entry and renders it as a tar (PAX by default). Large file
contents are generated lazily from a seed, so a layer is streamed, never held in memory. `generate_image`
compresses layers into a ContentStore and writes a valid config and manifest; `build_index` wraps several
platforms. `standard_layers` is the 3-layer image with every hard case converters must survive.

Everything is a pure function of its inputs: fixed mtimes, fixed `created`, gzip header mtime 0, and
compression settings whose output does not depend on the machine.
"""

from __future__ import annotations

import io
import random
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Literal, Protocol

import zstandard
from isal import igzip_threaded

from accel import constants as mt
from accel import digest as dg
from accel.oci import Descriptor, Platform, canonical_json
from accel.store import BlobWriter, ContentStore

KiB = 1 << 10
MiB = 1 << 20
DEFAULT_MTIME = 1_700_000_000
CREATED = "2023-11-14T22:13:20Z"  # DEFAULT_MTIME as RFC 3339
# Both codecs below produce the same bytes for any thread count >= 1, so digests are machine-independent.
COMPRESS_THREADS = 2
GZIP_LEVEL = 2  # isal's default trade-off
ZSTD_LEVEL = 3

EntryKind = Literal["reg", "dir", "symlink", "hardlink", "char", "block", "fifo"]
Pattern = Literal["random", "text", "zeros"]
TarFormat = Literal["pax", "gnu"]
MediaFlavor = Literal["oci", "docker"]
Compression = Literal["gzip", "zstd", "none"]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"

# A v2 file capability (VFS_CAP_REVISION_2, effective) granting CAP_SETUID (bit 7) and CAP_NET_RAW
# (bit 13), as `setcap cap_setuid,cap_net_raw+ep` stores it. Byte 0x80 makes it invalid UTF-8: the case
# that breaks naive PAX handling.
CAPABILITY_XATTR = bytes.fromhex("0100000280200000000000000000000000000000")

_TAR_TYPES: dict[str, bytes] = {
    "reg": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}
_TAR_FORMATS = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT}

# --- deterministic content -------------------------------------------------------------------------

_BLOCK = MiB
# Maps every byte value onto 16 text characters: ~4 bits of entropy per byte, so "text" compresses
# roughly 2:1 like real files while costing one C-level translate per block.
_TEXT_TABLE = bytes(b"etaoinshrdlu \n.,"[i % 16] for i in range(256))


def _block(seed: int, index: int, pattern: Pattern, length: int = _BLOCK) -> bytes:
    """The first `length` bytes of block `index`; shorter requests are prefixes of longer ones."""
    if pattern == "zeros":
        return bytes(length)
    # One generator per block keeps the stream independent of how callers slice their reads.
    # randbytes of a multiple of 4 is a prefix of any longer call (whole 32-bit words, little-endian).
    data = random.Random(f"imagegen/{seed}/{index}").randbytes(-(-length // 4) * 4)[:length]
    return data.translate(_TEXT_TABLE) if pattern == "text" else data


def tar_info(name: str, kind: bytes = tarfile.REGTYPE, **attrs: Any) -> tarfile.TarInfo:
    """A bare TarInfo with a fixed mtime, for tests that write tar headers by hand."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime = 1_700_000_000
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def generated_bytes(size: int, seed: int, pattern: Pattern = "random") -> Iterator[bytes]:
    """The content of `file_from_generator(..., size, seed, pattern)` as chunks of at most 1 MiB.

    A shorter file with the same seed and pattern is a prefix of a longer one.
    """
    index = 0
    remaining = size
    while remaining > 0:
        chunk = _block(seed, index, pattern, min(remaining, _BLOCK))
        yield chunk
        remaining -= len(chunk)
        index += 1


class _GeneratedReader(io.RawIOBase):
    """File-like view of `generated_bytes`, what tarfile's copy loop reads from."""

    def __init__(self, size: int, seed: int, pattern: Pattern) -> None:
        self._chunks = generated_bytes(size, seed, pattern)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            self._pending = memoryview(next(self._chunks, b""))
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


# --- layer description -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedContent:
    size: int
    seed: int
    pattern: Pattern = "random"


@dataclass(frozen=True)
class EntrySpec:
    """One tar member as the test wrote it. Content is either `data` or `generated`."""

    name: str
    kind: EntryKind
    mode: int
    uid: int = 0
    gid: int = 0
    uname: str = "root"
    gname: str = "root"
    mtime: int = DEFAULT_MTIME
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    data: bytes = b""
    generated: GeneratedContent | None = None
    auto: bool = False  # a parent dir added by `auto_parents`, replaceable by an explicit `dir()`

    @property
    def size(self) -> int:
        if self.kind != "reg":
            return 0
        return self.generated.size if self.generated else len(self.data)

    def open_content(self) -> BinaryIO:
        if self.generated:
            g = self.generated
            return io.BufferedReader(_GeneratedReader(g.size, g.seed, g.pattern), buffer_size=_BLOCK)
        return io.BytesIO(self.data)

    def tarinfo(self, tar_format: TarFormat) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self.name)
        info.type = _TAR_TYPES[self.kind]
        info.mode = self.mode
        info.uid, info.gid = self.uid, self.gid
        info.uname, info.gname = self.uname, self.gname
        info.mtime = self.mtime
        info.size = self.size
        info.linkname = self.linkname
        info.devmajor, info.devminor = self.devmajor, self.devminor
        if tar_format == "pax" and self.xattrs:
            # tarfile carries PAX values as str; surrogateescape round-trips binary values byte-exactly
            # (tarfile then marks the header hdrcharset=BINARY).
            info.pax_headers = {
                f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape")
                for key, value in self.xattrs.items()
            }
        return info


def _clean_name(name: str) -> str:
    cleaned = name
    while cleaned.startswith(("/", "./")):
        cleaned = cleaned[1:] if cleaned.startswith("/") else cleaned[2:]
    cleaned = cleaned.rstrip("/")
    if not cleaned or cleaned == ".":
        raise ValueError(f"not a usable tar member name: {name!r}")
    return cleaned


def _parent(name: str) -> str:
    return name.rpartition("/")[0]


class TarBuilder:
    """An ordered list of tar members; methods return `self` so calls chain.

    Names are archive paths without a leading "/" or "./". With `auto_parents`, missing parent
    directories are emitted (0o755 root:root) before the first entry inside them; a later explicit
    `dir()` of such a parent replaces it in place, so parents still precede children.
    """

    def __init__(self, *, mtime: int = DEFAULT_MTIME, auto_parents: bool = False) -> None:
        self.mtime = mtime
        self.auto_parents = auto_parents
        self._entries: list[EntrySpec] = []
        self._auto_dirs: dict[str, int] = {}  # name -> index in _entries
        self._dirs: set[str] = set()
        self._latest: dict[str, EntrySpec] = {}  # name -> its last entry, for hardlink metadata

    @property
    def entries(self) -> tuple[EntrySpec, ...]:
        return tuple(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    # -- entry kinds ------------------------------------------------------------------------------

    def file(
        self,
        name: str,
        data: bytes = b"",
        *,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        uname: str = "root",
        gname: str = "root",
        xattrs: Mapping[str, bytes] | None = None,
        mtime: int | None = None,
    ) -> TarBuilder:
        return self._add(name, "reg", mode, uid, gid, uname, gname, xattrs, mtime, data=bytes(data))

    def file_from_generator(
        self,
        name: str,
        size: int,
        seed: int = 0,
        *,
        pattern: Pattern = "random",
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        uname: str = "root",
        gname: str = "root",
        xattrs: Mapping[str, bytes] | None = None,
        mtime: int | None = None,
    ) -> TarBuilder:
        """A regular file whose `size` bytes are generated as the tar is written (see `generated_bytes`)."""
        content = GeneratedContent(size=size, seed=seed, pattern=pattern)
        return self._add(name, "reg", mode, uid, gid, uname, gname, xattrs, mtime, generated=content)

    def dir(
        self,
        name: str,
        *,
        mode: int = 0o755,
        uid: int = 0,
        gid: int = 0,
        uname: str = "root",
        gname: str = "root",
        xattrs: Mapping[str, bytes] | None = None,
        mtime: int | None = None,
    ) -> TarBuilder:
        return self._add(name, "dir", mode, uid, gid, uname, gname, xattrs, mtime)

    def symlink(
        self,
        name: str,
        target: str,
        *,
        uid: int = 0,
        gid: int = 0,
        uname: str = "root",
        gname: str = "root",
        mtime: int | None = None,
    ) -> TarBuilder:
        return self._add(name, "symlink", 0o777, uid, gid, uname, gname, None, mtime, linkname=target)

    def hardlink(self, name: str, target: str) -> TarBuilder:
        """`target` is the archive path of an earlier member (same layer or a lower one).

        The header repeats the target's mode, owner and mtime as real writers do: extractors (tarfile,
        containerd) chmod/chown the shared inode with the link header's values.
        """
        target = _clean_name(target)
        t = self._latest.get(target) or EntrySpec(name=target, kind="reg", mode=0o644, mtime=self.mtime)
        return self._add(
            name, "hardlink", t.mode, t.uid, t.gid, t.uname, t.gname, None, t.mtime, linkname=target
        )

    def char_device(
        self,
        name: str,
        major: int,
        minor: int,
        *,
        mode: int = 0o666,
        uid: int = 0,
        gid: int = 0,
        uname: str = "root",
        gname: str = "root",
        mtime: int | None = None,
    ) -> TarBuilder:
        return self._add(
            name, "char", mode, uid, gid, uname, gname, None, mtime, devmajor=major, devminor=minor
        )

    def block_device(
        self,
        name: str,
        major: int,
        minor: int,
        *,
        mode: int = 0o660,
        uid: int = 0,
        gid: int = 0,
        uname: str = "root",
        gname: str = "root",
        mtime: int | None = None,
    ) -> TarBuilder:
        return self._add(
            name, "block", mode, uid, gid, uname, gname, None, mtime, devmajor=major, devminor=minor
        )

    def fifo(
        self,
        name: str,
        *,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        uname: str = "root",
        gname: str = "root",
        mtime: int | None = None,
    ) -> TarBuilder:
        return self._add(name, "fifo", mode, uid, gid, uname, gname, None, mtime)

    def whiteout(self, path: str) -> TarBuilder:
        """Delete `path` (and its subtree) of the lower layers: an empty `.wh.<name>` file beside it."""
        path = _clean_name(path)
        parent, _, base = path.rpartition("/")
        marker = f"{parent}/{WHITEOUT_PREFIX}{base}" if parent else f"{WHITEOUT_PREFIX}{base}"
        return self._add(marker, "reg", 0o644, 0, 0, "root", "root", None, None)

    def opaque(self, directory: str) -> TarBuilder:
        """Hide everything the lower layers had inside `directory`; add the dir itself first."""
        return self._add(
            f"{_clean_name(directory)}/{OPAQUE_MARKER}", "reg", 0o644, 0, 0, "root", "root", None, None
        )

    # -- rendering --------------------------------------------------------------------------------

    def write_tar(self, fileobj: Any, tar_format: TarFormat = "pax") -> None:
        """Stream the archive into anything with `write`. GNU format cannot carry xattrs: they are dropped."""
        with tarfile.open(
            fileobj=fileobj, mode="w|", format=_TAR_FORMATS[tar_format], encoding="utf-8"
        ) as tar:
            for entry in self._entries:
                info = entry.tarinfo(tar_format)
                if entry.kind == "reg":
                    with entry.open_content() as content:
                        tar.addfile(info, content)
                else:
                    tar.addfile(info)

    def to_tar(self, tar_format: TarFormat = "pax") -> bytes:
        buffer = io.BytesIO()
        self.write_tar(buffer, tar_format)
        return buffer.getvalue()

    def to_tar_file(self, path: Path | str, tar_format: TarFormat = "pax") -> Path:
        path = Path(path)
        with path.open("wb") as f:
            self.write_tar(f, tar_format)
        return path

    # -- internals --------------------------------------------------------------------------------

    def _add(
        self,
        name: str,
        kind: EntryKind,
        mode: int,
        uid: int,
        gid: int,
        uname: str,
        gname: str,
        xattrs: Mapping[str, bytes] | None,
        mtime: int | None,
        **content: Any,
    ) -> TarBuilder:
        name = _clean_name(name)
        spec = EntrySpec(
            name=name,
            kind=kind,
            mode=mode,
            uid=uid,
            gid=gid,
            uname=uname,
            gname=gname,
            mtime=self.mtime if mtime is None else mtime,
            xattrs=dict(xattrs or {}),
            **content,
        )
        self._latest[name] = spec
        if kind == "dir" and name in self._auto_dirs:
            self._entries[self._auto_dirs.pop(name)] = spec
            return self
        if self.auto_parents:
            self._add_parents(name)
        if kind == "dir":
            self._dirs.add(name)
        self._entries.append(spec)
        return self

    def _add_parents(self, name: str) -> None:
        missing: list[str] = []
        parent = _parent(name)
        while parent and parent not in self._dirs:
            missing.append(parent)
            parent = _parent(parent)
        for directory in reversed(missing):
            self._dirs.add(directory)
            self._auto_dirs[directory] = len(self._entries)
            self._entries.append(
                EntrySpec(name=directory, kind="dir", mode=0o755, mtime=self.mtime, auto=True)
            )


LayerSpec = TarBuilder  # the name the test plan uses for a layer description


# --- the standard hard-case image ------------------------------------------------------------------

LONG_DIR = "usr/share/doc/" + "/".join(f"level-{i:02d}-of-a-deeply-nested-tree" for i in range(4))
LONG_FILE = f"{LONG_DIR}/a-file-name-that-is-long-enough-on-its-own.txt"
UNICODE_FILE = "héllo/wörld-日本.txt"


def standard_layers(
    big_file_size: int = 5 * MiB, *, arch: str = "amd64", single_xattr_files: bool = False
) -> list[TarBuilder]:
    """Three layers covering the tar and overlay cases converters get wrong.

    Layer 0 (base): every entry type, special modes, owners, xattrs, long and non-ASCII names.
    Layer 1 (update): whiteouts, an opaque dir, a file replaced by a dir, a modified file, hardlinks.
    Layer 2 (app): differs per `arch`, so two platforms share layers 0-1 and differ in layer 2.
    """
    assert len(LONG_FILE) > 100 and len(LONG_DIR) > 100
    base = TarBuilder(auto_parents=True)
    base.dir("etc")
    base.file("etc/hosts", b"127.0.0.1\tlocalhost\n::1\tlocalhost\n", xattrs={"user.origin": b"imagegen"})
    base.file("etc/empty")
    base.file("etc/os-release", b'NAME="imagegen"\nVERSION_ID="1"\n')
    base.file("etc/remove-me", b"whited out by layer 1\n")
    base.file("etc/shadow", b"root:*:19000:0:99999:7:::\n", mode=0o640, gid=42, gname="shadow")
    base.symlink("etc/localtime", "/usr/share/zoneinfo/UTC")  # absolute
    base.symlink("etc/dangling", "../nowhere/at/all")  # dangling
    base.dir("root", mode=0o700)
    base.dir("tmp", mode=0o1777)
    base.dir("usr/bin")
    base.file("usr/bin/tool", b"\x7fELF" + bytes(range(256)) * 4, mode=0o755)
    base.symlink("usr/bin/tool-link", "tool")  # relative
    base.hardlink("usr/bin/tool-hard", "usr/bin/tool")
    base.file("usr/bin/su-like", b"\x7fELF setuid\n", mode=0o4755)
    base.file("usr/bin/wall-like", b"\x7fELF setgid\n", mode=0o2755, gid=5, gname="tty")
    base.file(
        "usr/bin/ping-like",
        b"\x7fELF needs raw sockets\n",
        mode=0o755,
        # Two xattrs on one file: nydus-image 2.2.0 writes them in hash-map order, so Nydus output for this
        # file is not byte-reproducible; `single_xattr_files=True` leaves the second one out.
        xattrs={"security.capability": CAPABILITY_XATTR}
        if single_xattr_files
        else {"security.capability": CAPABILITY_XATTR, "user.note": "ünïcode".encode()},
    )
    base.file_from_generator("usr/lib/big.bin", big_file_size, seed=1)
    base.file_from_generator("var/lib/zeros.img", MiB, pattern="zeros")
    base.file("usr/share/zoneinfo/UTC", b"TZif2" + bytes(40))
    base.file(LONG_FILE, b"PAX path record\n")
    base.symlink("usr/share/doc/latest", "/" + LONG_FILE)  # long link target
    base.hardlink("usr/share/doc/long-hardlink", LONG_FILE)  # long hardlink target
    base.char_device("dev/null", 1, 3)
    base.char_device("dev/zero", 1, 5)
    base.block_device("dev/loop0", 7, 0, gid=6, gname="disk")
    base.fifo("run/initctl", mode=0o600)
    base.dir("home/app", mode=0o750, uid=1000, gid=1000, uname="app", gname="app")
    base.file("home/app/.profile", b"export PS1='$ '\n", uid=1000, gid=1000, uname="app", gname="app")
    base.file(UNICODE_FILE, "こんにちは\n".encode())
    base.dir("opt/app")
    base.file("opt/app/config.yml", b"version: 1\n")
    base.file("opt/app/lib/libold.so", b"old library\n")
    base.file("opt/thing", b"a file that becomes a directory\n")
    base.file("var/cache/old/sub/file", b"whited out with its directory\n")

    update = TarBuilder(auto_parents=True)
    update.dir("etc")
    update.whiteout("etc/remove-me")
    update.file("etc/os-release", b'NAME="imagegen"\nVERSION_ID="2"\n')
    update.dir("opt")
    update.dir("opt/app")
    update.opaque("opt/app")
    update.file("opt/app/config.yml", b"version: 2\n")
    update.file("opt/app/new.txt", b"added after the opaque marker\n")
    update.dir("opt/thing")
    update.file("opt/thing/inner.txt", b"the file is now a directory\n")
    update.dir("var/cache")
    update.whiteout("var/cache/old")
    update.file("usr/local/bin/a", b"#!/bin/sh\necho a\n", mode=0o755)
    update.hardlink("usr/local/bin/b", "usr/local/bin/a")

    app = TarBuilder(auto_parents=True)
    app.dir("app", uid=1000, gid=1000, uname="app", gname="app")
    app.file("app/main.py", b"print('hello')\n", uid=1000, gid=1000, uname="app", gname="app")
    app.file("app/run.sh", b"#!/bin/sh\nexec python3 /app/main.py\n", mode=0o755)
    app.file("app/arch.txt", f"built for {arch}\n".encode())
    return [base, update, app]


# --- images in a content store ---------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltImage:
    manifest_raw: bytes
    manifest_media_type: str
    manifest: Descriptor  # no platform; `build_index` adds it
    config_raw: bytes
    config: Descriptor
    layers: list[Descriptor]
    diff_ids: list[str]
    blobs: list[str]  # config, layers, manifest: every digest this image put in the store
    platform: Platform

    @property
    def digest(self) -> str:
        return self.manifest.digest


@dataclass(frozen=True)
class BuiltIndex:
    raw: bytes
    media_type: str
    descriptor: Descriptor
    images: list[BuiltImage]
    blobs: list[str]  # every image's blobs (deduplicated, in order) plus the index itself

    @property
    def digest(self) -> str:
        return self.descriptor.digest


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class _DiffIdTee:
    """Hashes the uncompressed tar on its way into the compressor."""

    def __init__(self, inner: _Writable) -> None:
        self._inner = inner
        self.digester = dg.Digester()

    def write(self, data: bytes) -> int:
        self.digester.update(data)
        self._inner.write(data)
        return len(data)


def _layer_media_type(media: MediaFlavor, compression: Compression) -> str:
    if media == "oci":
        return {"gzip": mt.OCI_LAYER_GZIP, "zstd": mt.OCI_LAYER_ZSTD, "none": mt.OCI_LAYER_TAR}[compression]
    if compression != "gzip":
        raise ValueError("Docker schema2 images here are gzip only; use media='oci' for zstd or none")
    return mt.DOCKER_LAYER_GZIP


def _write_layer(
    builder: TarBuilder | RawLayer | ManyEntriesLayer,
    blob: BlobWriter,
    compression: Compression,
    tar_format: TarFormat,
) -> str:
    """Tar -> compressor -> blob in one pass; returns the DiffID."""
    if compression == "none":
        tee = _DiffIdTee(blob)
        builder.write_tar(tee, tar_format)
        return tee.digester.digest()
    if compression == "gzip":
        compressor: Any = igzip_threaded.open(
            blob, "wb", compresslevel=GZIP_LEVEL, threads=COMPRESS_THREADS, block_size=MiB
        )
    else:
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=COMPRESS_THREADS).stream_writer(
            blob, closefd=False
        )
    with compressor:
        tee = _DiffIdTee(compressor)
        builder.write_tar(tee, tar_format)
    return tee.digester.digest()


def _platform(platform: Sequence[str]) -> Platform:
    if len(platform) not in (2, 3):
        raise ValueError(f"platform is (os, arch) or (os, arch, variant), got {platform!r}")
    return Platform(
        os=platform[0], architecture=platform[1], variant=platform[2] if len(platform) == 3 else None
    )


def generate_image(
    layers: Sequence[TarBuilder | RawLayer | ManyEntriesLayer],
    store: ContentStore,
    *,
    platform: Sequence[str] = ("linux", "amd64"),
    media: MediaFlavor = "oci",
    compression: Compression = "gzip",
    tar_format: TarFormat = "pax",
) -> BuiltImage:
    """Write layers, config and manifest into `store`. Layers stream through the compressor."""
    plat = _platform(platform)
    layer_type = _layer_media_type(media, compression)
    layer_descriptors: list[Descriptor] = []
    diff_ids: list[str] = []
    for builder in layers:
        with store.writer() as blob:
            diff_ids.append(_write_layer(builder, blob, compression, tar_format))
        assert blob.digest is not None
        layer_descriptors.append(Descriptor(media_type=layer_type, digest=blob.digest, size=blob.size))
    return _image_of_layers(layer_descriptors, diff_ids, store, plat, media)


def tiny_layers_image(count: int, store: ContentStore) -> BuiltImage:
    """An image of `count` distinct layers of one small file each (the many-layers input of
    converter.limits.max_layers), written quickly: one gzip member per layer, no compressor threads."""
    import gzip

    layer_descriptors: list[Descriptor] = []
    diff_ids: list[str] = []
    for index in range(count):
        tar = tar_members((tar_info(f"layer-{index}.txt"), b"%d\n" % index), closed=True)
        blob = gzip.compress(tar, compresslevel=1, mtime=0)
        digest = dg.of_bytes(blob)
        store.path(digest).write_bytes(blob)  # not `put_bytes`: 10,000 fsyncs take minutes on a busy disk
        layer_descriptors.append(Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=digest, size=len(blob)))
        diff_ids.append(dg.of_bytes(tar))
    return _image_of_layers(layer_descriptors, diff_ids, store, _platform(("linux", "amd64")), "oci")


def _image_of_layers(
    layer_descriptors: list[Descriptor],
    diff_ids: list[str],
    store: ContentStore,
    plat: Platform,
    media: MediaFlavor,
) -> BuiltImage:
    """Config and manifest over layers already in `store`."""
    # The empty_layer entry sits after the base layer, as an ENV step would: consumers must not
    # pair history with layers by index.
    history: list[dict[str, Any]] = []
    for index in range(len(layer_descriptors)):
        history.append({"created": CREATED, "created_by": f"imagegen: layer {index}"})
        if index == 0:
            history.append({"created": CREATED, "created_by": "ENV LANG=C.UTF-8", "empty_layer": True})
    if not layer_descriptors:
        history.append({"created": CREATED, "created_by": "ENV LANG=C.UTF-8", "empty_layer": True})
    config_doc: dict[str, Any] = {"created": CREATED, "architecture": plat.architecture, "os": plat.os}
    if plat.variant:
        config_doc["variant"] = plat.variant
    config_doc["config"] = {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
        "Cmd": ["/bin/sh"],
        "WorkingDir": "/",
    }
    config_doc["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    config_doc["history"] = history
    config_raw = canonical_json(config_doc)
    config_type = mt.OCI_CONFIG if media == "oci" else mt.DOCKER_CONFIG
    config_descriptor = Descriptor.of(config_type, config_raw)
    store.put_bytes(config_raw, config_descriptor.digest)

    manifest_type = mt.OCI_MANIFEST if media == "oci" else mt.DOCKER_MANIFEST
    manifest_raw = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config_descriptor.to_dict(),
            "layers": [d.to_dict() for d in layer_descriptors],
        }
    )
    manifest_descriptor = Descriptor.of(manifest_type, manifest_raw)
    store.put_bytes(manifest_raw, manifest_descriptor.digest)
    return BuiltImage(
        manifest_raw=manifest_raw,
        manifest_media_type=manifest_type,
        manifest=manifest_descriptor,
        config_raw=config_raw,
        config=config_descriptor,
        layers=layer_descriptors,
        diff_ids=diff_ids,
        blobs=[config_descriptor.digest, *(d.digest for d in layer_descriptors), manifest_descriptor.digest],
        platform=plat,
    )


def build_index(images: Sequence[BuiltImage], store: ContentStore, media: MediaFlavor = "oci") -> BuiltIndex:
    """An OCI index or Docker manifest list over already-built images, each entry with its platform."""
    index_type = mt.OCI_INDEX if media == "oci" else mt.DOCKER_MANIFEST_LIST
    entries = [image.manifest.with_(platform=image.platform).to_dict() for image in images]
    raw = canonical_json({"schemaVersion": 2, "mediaType": index_type, "manifests": entries})
    descriptor = Descriptor.of(index_type, raw)
    store.put_bytes(raw, descriptor.digest)
    blobs = list(dict.fromkeys(d for image in images for d in image.blobs))
    return BuiltIndex(
        raw=raw,
        media_type=index_type,
        descriptor=descriptor,
        images=list(images),
        blobs=[*blobs, descriptor.digest],
    )


def standard_image(
    store: ContentStore,
    *,
    arch: str = "amd64",
    media: MediaFlavor = "oci",
    compression: Compression = "gzip",
    big_file_size: int = 5 * MiB,
    single_xattr_files: bool = False,
) -> BuiltImage:
    return generate_image(
        standard_layers(big_file_size, arch=arch, single_xattr_files=single_xattr_files),
        store,
        platform=("linux", arch),
        media=media,
        compression=compression,
    )


def standard_index(
    store: ContentStore,
    *,
    media: MediaFlavor = "oci",
    compression: Compression = "gzip",
    big_file_size: int = 5 * MiB,
) -> BuiltIndex:
    """linux/amd64 + linux/arm64: layers 0-1 are the same blobs, layer 2 differs."""
    images = [
        standard_image(store, arch=arch, media=media, compression=compression, big_file_size=big_file_size)
        for arch in ("amd64", "arm64")
    ]
    return build_index(images, store, media)


# --- the bench image -------------------------------------------------------------------------------


def big_layers(total_bytes: int = 200 * MiB, seed: int = 0, *, layer_count: int = 4) -> list[TarBuilder]:
    """Layers totalling about `total_bytes` of file content: ~30% many small text-like files
    (compressible), ~70% a few large random files. Only (size, seed) pairs are held in memory."""
    rng = random.Random(f"imagegen-big/{seed}")
    # Lower layers are bigger, as base images are.
    weights = [layer_count - i for i in range(layer_count)]
    layers: list[TarBuilder] = []
    content_seed = seed * 1_000_000
    for layer_index, weight in enumerate(weights):
        layer_budget = total_bytes * weight // sum(weights)
        builder = TarBuilder(auto_parents=True)
        small_budget = layer_budget * 3 // 10
        written = 0
        file_index = 0
        while written < small_budget:
            size = min(rng.randint(512, 64 * 1024), small_budget - written)
            name = f"data/layer{layer_index}/d{file_index // 100:03d}/f{file_index:05d}.txt"
            content_seed += 1
            builder.file_from_generator(name, size, content_seed, pattern="text")
            written += size
            file_index += 1
        large_count = 2 if layer_budget < 32 * MiB else 3
        large_budget = layer_budget - written
        for large_index in range(large_count):
            size = large_budget // large_count
            content_seed += 1
            builder.file_from_generator(f"opt/layer{layer_index}/blob{large_index}.bin", size, content_seed)
        layers.append(builder)
    return layers


def big_image(
    store: ContentStore,
    total_bytes: int = 200 * MiB,
    seed: int = 0,
    *,
    layer_count: int = 4,
    media: MediaFlavor = "oci",
    compression: Compression = "gzip",
    platform: Sequence[str] = ("linux", "amd64"),
) -> BuiltImage:
    """The bench image: every layer is generated, compressed and hashed in one streaming pass."""
    return generate_image(
        big_layers(total_bytes, seed, layer_count=layer_count),
        store,
        platform=platform,
        media=media,
        compression=compression,
    )


# --- sparse files ----------------------------------------------------------------------------------

SparseForm = Literal["pax-0.0", "pax-0.1", "pax-1.0", "gnu-old"]
SPARSE_FORMS: tuple[SparseForm, ...] = ("pax-0.0", "pax-0.1", "pax-1.0", "gnu-old")


@dataclass(frozen=True)
class SparseFile:
    """A sparse file: its logical size and its data regions (offset, bytes); the rest reads as zeros."""

    name: str
    size: int
    regions: tuple[tuple[int, bytes], ...]

    def content(self) -> bytes:
        data = bytearray(self.size)
        for offset, chunk in self.regions:
            data[offset : offset + len(chunk)] = chunk
        return bytes(data)


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def _ustar_block(name: str, typeflag: bytes, size: int, *, gnu: bool = False, extra: bytes = b"") -> bytes:
    """One header block written field by field (tarfile cannot write sparse headers)."""
    block = bytearray(512)
    block[0:100] = name.encode().ljust(100, b"\0")[:100]
    block[100:108] = b"0000644\0"
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"%011o\0" % DEFAULT_MTIME
    block[156:157] = typeflag
    block[257:265] = b"ustar  \0" if gnu else b"ustar\x0000"
    block[265:269] = b"root"
    block[297:301] = b"root"
    block[329:345] = b"0000000\x000000000\0"
    if extra:
        block[345 : 345 + len(extra)] = extra
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def sparse_tar(
    sparse: SparseFile, form: SparseForm, *, after: Mapping[str, bytes] | None = None, end: bool = True
) -> bytes:
    """A tar holding `sparse` in one of the four sparse encodings Go and GNU tar read, then `after` files.

    Written by hand, byte for byte as GNU tar lays them out: old GNU ('S' header, regions in the header
    and extension blocks), PAX 0.0 (repeated offset/numbytes records), 0.1 (one GNU.sparse.map record)
    and 1.0 (the map at the start of the data, the real name in GNU.sparse.name).
    """
    stored = b"".join(chunk for _, chunk in sparse.regions)
    numbers = [str(n) for offset, chunk in sparse.regions for n in (offset, len(chunk))]
    out = bytearray()
    if form == "gnu-old":
        entries = [b"%011o\0%011o\0" % (offset, len(chunk)) for offset, chunk in sparse.regions]
        head, rest = entries[:4], entries[4:]
        extended = b"\1" if rest else b"\0"
        extra = bytes(41) + b"".join(head).ljust(96, b"\0") + extended + b"%011o\0" % sparse.size
        out += _ustar_block(sparse.name, b"S", len(stored), gnu=True, extra=extra)
        while rest:
            chunk_entries, rest = rest[:21], rest[21:]
            out += b"".join(chunk_entries).ljust(504, b"\0") + (b"\1" if rest else b"\0") + bytes(7)
        out += _padded(stored)
    else:
        records = b""
        if form == "pax-1.0":
            records += _pax_record("GNU.sparse.major", "1") + _pax_record("GNU.sparse.minor", "0")
            records += _pax_record("GNU.sparse.name", sparse.name)
            records += _pax_record("GNU.sparse.realsize", str(sparse.size))
            sparse_map = _padded(("\n".join([str(len(sparse.regions)), *numbers]) + "\n").encode())
            payload = sparse_map + stored
            member_name = f"GNUSparseFile.0/{sparse.name.rsplit('/', 1)[-1]}"
        else:
            records += _pax_record("GNU.sparse.size", str(sparse.size))
            records += _pax_record("GNU.sparse.numblocks", str(len(sparse.regions)))
            if form == "pax-0.1":
                records += _pax_record("GNU.sparse.map", ",".join(numbers))
            else:
                for offset, chunk in sparse.regions:
                    records += _pax_record("GNU.sparse.offset", str(offset))
                    records += _pax_record("GNU.sparse.numbytes", str(len(chunk)))
            payload = stored
            member_name = sparse.name
        out += _ustar_block(f"PaxHeaders.0/{member_name.rsplit('/', 1)[-1]}", b"x", len(records))
        out += _padded(records)
        out += _ustar_block(member_name[:100], b"0", len(payload))
        out += _padded(payload)
    for name, data in (after or {}).items():
        out += _ustar_block(name, b"0", len(data)) + _padded(data)
    return bytes(out + bytes(1024 if end else 0))


# --- layers in orders TarBuilder never writes -------------------------------------------------------


@dataclass(frozen=True)
class RawLayer:
    """A layer given as finished tar bytes; `generate_image` takes it beside TarBuilders."""

    data: bytes

    def write_tar(self, fileobj: Any, tar_format: TarFormat = "pax") -> None:
        del tar_format  # the bytes are the layer
        fileobj.write(self.data)


@dataclass(frozen=True)
class ManyEntriesLayer:
    """A layer of `count` tar entries written as it streams, never held whole: a directory `dNNNN/` and
    then empty files in it, 1,000 entries per directory (the many-small-files input of
    converter.limits.max_entries; 1,000,000 entries are 512 MB of headers, about 7 MB gzipped)."""

    count: int
    per_directory: int = 1000

    WRITE_SIZE: ClassVar[int] = MiB

    def write_tar(self, fileobj: Any, tar_format: TarFormat = "pax") -> None:
        del tar_format  # plain ustar headers: the fewest bytes per entry
        file_block = _ustar_block("", b"0", 0)
        dir_block = _ustar_block("", b"5", 0)
        pending: list[bytes] = []
        for index in range(self.count):
            directory, position = divmod(index, self.per_directory)
            if position == 0:
                name, template = b"d%04d/" % directory, dir_block
            else:
                name, template = b"d%04d/f%04d" % (directory, position), file_block
            pending.append(_named_block(template, name))
            if len(pending) * 512 >= self.WRITE_SIZE:
                fileobj.write(b"".join(pending))
                pending = []
        pending.append(bytes(1024))
        fileobj.write(b"".join(pending))


def _named_block(template: bytes, name: bytes) -> bytes:
    """`template` (a header block with an empty name) named `name` (under 100 bytes), its checksum fixed:
    the checksum is the sum of the block's bytes, so the name's bytes add to the template's."""
    checksum = int(template[148:154], 8) + sum(name)
    return name + template[len(name) : 148] + b"%06o\0 " % checksum + template[156:]


def tar_members(*members: tuple[tarfile.TarInfo, bytes | None], closed: bool = False) -> bytes:
    """PAX entries exactly in this order; without the end-of-archive blocks (to concatenate with others)
    unless `closed`, which gives the whole archive as tarfile writes it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        end = tar.offset  # closing appends the end-of-archive blocks
    return buffer.getvalue() if closed else buffer.getvalue()[:end]


def pax_size_layer() -> bytes:
    """A layer whose `big` carries its size in a PAX record only (its header block says 0), as writers do
    for files over 8 GiB: `builder_compatible_tar` reads its payload as header blocks."""
    big = tar_info("big", pax_headers={"size": "1000"})
    raw = bytearray(
        tar_members((tar_info("a"), b"x\n"), (big, b"b" * 1000), (tar_info("c"), b"x\n"), closed=True)
    )
    main_block = 2 * 512 + 2 * 512  # after `a` (header, data) and big's PAX header (header, records)
    assert raw[main_block : main_block + 4] == b"big\0"
    raw[main_block + 124 : main_block + 136] = b"%011o\0" % 0  # the size field
    raw[main_block + 148 : main_block + 156] = b"        "  # the checksum, summed as spaces
    raw[main_block + 148 : main_block + 156] = b"%06o\0 " % sum(raw[main_block : main_block + 512])
    return bytes(raw)


ODD_SPARSE_SIZE = 5 * MiB + 77


def odd_layers() -> list[TarBuilder | RawLayer]:
    """Two layers with what nydus-image 2.2.0 gets wrong unaided (issue 11): over a base with private
    directories, an upper layer carrying files but not their directories (implicit parents), a directory
    after its own child, a repeated path, and sparse files in PAX 1.0 and old GNU form."""
    base = TarBuilder()
    base.dir("opt", mode=0o755)
    base.dir("opt/app", mode=0o750, uid=1001, gid=1001, mtime=1_600_000_000)
    base.file("opt/app/config", b"base\n", uid=1001, gid=1001)
    base.dir("etc", mode=0o755, mtime=1_650_000_000)
    base.dir("etc/apt", mode=0o755, mtime=1_650_000_001)
    regions = tuple((i * 400_000 + 3, bytes([65 + i]) * (3000 + i)) for i in range(12))
    upper = tar_members(
        (tar_info("opt/app/added", uid=1001), b"added to a private dir\n"),
        (tar_info("etc/apt/sources.list"), b"deb http://deb.example bookworm main\n"),
        (tar_info("late/file"), b"before its directory\n"),
        (tar_info("late", tarfile.DIRTYPE, mode=0o750, uid=3), None),
        (tar_info("again"), b"first copy\n"),
        (tar_info("z"), b"after the directory\n"),
        (tar_info("again", mode=0o600), b"second copy wins\n"),
    )
    upper += sparse_tar(SparseFile("sparse/pax10", ODD_SPARSE_SIZE, regions), "pax-1.0", end=False)
    upper += sparse_tar(SparseFile("sparse/gnu", ODD_SPARSE_SIZE, regions[::2]), "gnu-old", end=False)
    return [base, RawLayer(upper + bytes(1024))]


_UNUSUAL_NAMES = ["a", "a/b", "a/b/c", "d", "d/e", "f", "g", "d/.wh.a", "d/.wh.\udcff", "l" * 120 + "/x"]


def unusual_layer(rng: random.Random) -> bytes:
    """Legal entries past the plain ustar form (issue 20): owners and mtimes only PAX records hold, sub-second
    and pre-1970 mtimes, hardlink chains and links with attributes of their own, newlines in PAX records,
    and bytes after the end-of-archive blocks."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for _ in range(rng.randint(1, 8)):
        name = rng.choice(_UNUSUAL_NAMES)
        kind = rng.choice(
            [tarfile.REGTYPE, tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.LNKTYPE]
        )
        info = tar_info(
            name, kind, mode=0o755 if kind == tarfile.DIRTYPE else rng.choice([0o644, 0o644, 0o600])
        )
        if rng.random() < 0.15:
            info.uid = rng.choice([1 << 21, 70_000_000, 1 << 32])
        if rng.random() < 0.1:
            info.gid = 3_000_000
        if rng.random() < 0.2:
            info.mtime = rng.choice([1 << 33, 1_700_000_000.75, 5.5, 1.25, -86_400])
        if kind == tarfile.LNKTYPE:
            info.linkname = rng.choice([name for name in _UNUSUAL_NAMES if ".wh." not in name])
        if rng.random() < 0.1:
            info.pax_headers = {"SCHILY.xattr.user.k": rng.choice(["v", "two\nlines"])}
        members.append((info, b"z" * rng.choice([0, 1, 700]) if kind == tarfile.REGTYPE else None))
    raw = tar_members(*members, closed=True)
    return raw + rng.choice([b"", b"", b"not a tar", tar_members((tar_info("appended"), b"x"), closed=True)])
