"""Re-encoding tar entries into eStargz members: headers, chunked payloads, the TOC entry and the footer."""

from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import json
import logging
import tarfile
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from accel import constants as mt
from accel.drivers.estargz.entries import READ_SIZE, TAR_ENCODING, TAR_ERRORS, MemberToWrite
from accel.drivers.estargz.footer import footer_bytes
from accel.drivers.estargz.members import GzipMembers
from accel.drivers.estargz.toc import TOC_VERSION, TocEntry, modtime, toc_text
from accel.drivers.toctypes import TOC_TYPE_CHUNK, TOC_TYPE_REG, TOC_TYPES
from accel.errors import DriverError, InvalidImage
from accel.store import BlobWriter
from accel.trees import normalize_path

log = logging.getLogger(__name__)

_TAR_BLOCK = 512
_XATTR_PAX_PREFIX = "SCHILY.xattr."
_EMPTY_DIGEST = "sha256:" + hashlib.sha256().hexdigest()


@dataclasses.dataclass(frozen=True)
class BuildResult:
    toc_digest: str
    diff_id: str
    uncompressed_size: int


class _PayloadDigests:
    """The sha256 of every chunk and of every file of several chunks, hashed in order on the digest thread;
    `resolve` waits for them and writes them into their TOC entries.

    On the main thread the hashing cost more than itself: hashlib lets go of the GIL for each piece, and
    the main thread then waited to take it back from the threads that compress (debian-base.tar: 2.6 s
    of main-thread time in `update` for 0.15 s of hashing).
    """

    BATCH_BYTES = 1 << 20  # bytes queued before a batch goes to the thread
    MAX_BATCHES = 4  # batches in flight before `update` waits: bounds the memory held

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool  # one worker: each hash sees its pieces in order
        self._batch: list[tuple[bytes, tuple[Any, ...]]] = []
        self._batch_bytes = 0
        self._in_flight: collections.deque[Future[None]] = collections.deque()
        self._fields: list[tuple[TocEntry, str, Any]] = []

    def update(self, piece: bytes, hashes: tuple[Any, ...]) -> None:
        self._batch.append((piece, hashes))
        self._batch_bytes += len(piece)
        if self._batch_bytes >= self.BATCH_BYTES:
            self._submit()

    def assign(self, entry: TocEntry, field: str, digest: Any) -> None:
        """Set `entry.field` to the hex digest of `digest` once everything queued is hashed."""
        self._fields.append((entry, field, digest))

    def resolve(self) -> None:
        self._submit()
        while self._in_flight:
            self._in_flight.popleft().result()
        for entry, field, digest in self._fields:
            setattr(entry, field, "sha256:" + digest.hexdigest())
        self._fields = []

    def _submit(self) -> None:
        if not self._batch:
            return
        self._in_flight.append(self._pool.submit(_hash_pieces, self._batch))
        self._batch, self._batch_bytes = [], 0
        while len(self._in_flight) > self.MAX_BATCHES:
            self._in_flight.popleft().result()


def _hash_pieces(batch: list[tuple[bytes, tuple[Any, ...]]]) -> None:
    for piece, hashes in batch:
        for digest in hashes:
            digest.update(piece)


class BlobBuilder:
    """Re-encodes tar entries into eStargz members and collects the TOC."""

    def __init__(self, out: BlobWriter, level: int, chunk_size: int) -> None:
        self._out = out
        self._chunk_size = chunk_size
        # One thread hashes the uncompressed stream and the payloads, beside this one.
        self._digest_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="estargz-digest")
        self._digests = _PayloadDigests(self._digest_pool)
        self._members = GzipMembers(out, level, self._digest_pool)
        self._toc: list[TocEntry] = []
        # The reference writes userName/groupName only when they change for a uid/gid.
        self._last_user: dict[int, str] = {}
        self._last_group: dict[int, str] = {}

    def close(self) -> None:
        self._members.close()
        self._digest_pool.shutdown(wait=True, cancel_futures=True)

    def add(self, entry: MemberToWrite) -> None:
        header = _output_header(entry.info)
        toc_entry = self._toc_entry(header)
        self._members.write(header.tobuf(tarfile.PAX_FORMAT, TAR_ENCODING, TAR_ERRORS))
        if toc_entry.type != TOC_TYPE_REG:
            self._toc.append(toc_entry)
            return
        if entry.payload is None:
            raise DriverError(f"no payload for regular file {entry.info.name!r}")
        if header.size == 0:
            toc_entry.digest = _EMPTY_DIGEST
            self._toc.append(toc_entry)
            return
        # A file of one chunk (most files) has one digest for both: hash it once.
        file_digest = hashlib.sha256() if header.size > self._chunk_size else None
        chunk_entry = toc_entry  # the first chunk is described by the file's own entry
        for chunk_offset in range(0, header.size, self._chunk_size):
            chunk = min(self._chunk_size, header.size - chunk_offset)
            if chunk == self._chunk_size:
                chunk_entry.chunk_size = chunk  # the reference leaves it out on a short last chunk
            # Each chunk starts a gzip member; the tar padding and the headers that follow share it.
            chunk_entry.member = self._members.new_member()
            chunk_entry.chunk_offset = chunk_offset
            chunk_digest = self._copy(entry, chunk, file_digest)
            self._digests.assign(chunk_entry, "chunk_digest", chunk_digest)
            self._toc.append(chunk_entry)
            chunk_entry = TocEntry(name=toc_entry.name, type=TOC_TYPE_CHUNK)
        self._members.write(b"\0" * (-header.size % _TAR_BLOCK))
        self._digests.assign(toc_entry, "digest", file_digest or chunk_digest)

    def _refuse_unresolvable_hardlinks(self) -> None:
        """The reference reader (stargz-snapshotter's estargz) resolves a hardlink within the TOC and cannot
        open a layer with a hardlink to a file of a lower layer, although the reference writer writes one:
        refuse it by name rather than push a layer the lazy-pulling runtime cannot mount."""
        names = {normalize_path(entry.name) for entry in self._toc if entry.type != TOC_TYPE_CHUNK}
        for entry in self._toc:
            if entry.type == "hardlink" and normalize_path(entry.link_name) not in names:
                raise DriverError(
                    f"tar entry {entry.name!r} is a hardlink to {entry.link_name!r}, which is not in this "
                    "layer: the eStargz reference reader cannot open such a layer (a hardlink to a file of a "
                    "lower layer); refused"
                )

    def _copy(self, entry: MemberToWrite, size: int, file_digest: Any) -> Any:
        """Copy a chunk of `size` bytes into the current member; return its sha256 (still being hashed)."""
        assert entry.payload is not None
        chunk_digest = hashlib.sha256()
        hashes = (chunk_digest,) if file_digest is None else (chunk_digest, file_digest)
        while size > 0:
            piece = entry.payload.read(min(size, READ_SIZE))
            if not piece:
                raise InvalidImage(f"tar entry {entry.info.name!r} is truncated")
            self._digests.update(piece, hashes)
            self._members.write(piece)
            size -= len(piece)
        return chunk_digest

    def _toc_entry(self, header: tarfile.TarInfo) -> TocEntry:
        kind = TOC_TYPES[header.type]  # `_output_header` wrote every regular file as REGTYPE
        xattrs = {
            toc_text(key[len(_XATTR_PAX_PREFIX) :]): base64.b64encode(
                value.encode(TAR_ENCODING, TAR_ERRORS)
            ).decode("ascii")
            for key, value in sorted(header.pax_headers.items())
            if key.startswith(_XATTR_PAX_PREFIX)
        }
        # tarfile strips a directory's trailing slash and writes it back; name it as written.
        name = header.name + "/" if header.isdir() and not header.name.endswith("/") else header.name
        if toc_text(name) != name:
            # Lossy like the reference writer: say which entry, so the run's log shows it.
            log.warning(
                "eStargz TOC names tar entry %r as %r: the name is not UTF-8 (the tar keeps its bytes)",
                name.encode(TAR_ENCODING, TAR_ERRORS),
                toc_text(name),
            )
        entry = TocEntry(
            name=toc_text(name),
            type=kind,
            size=header.size if kind == TOC_TYPE_REG else 0,
            modtime=modtime(header.mtime),
            link_name=toc_text(header.linkname) if kind in ("hardlink", "symlink") else "",
            mode=header.mode,
            uid=header.uid,
            gid=header.gid,
            user_name=_name_if_changed(self._last_user, header.uid, toc_text(header.uname)),
            group_name=_name_if_changed(self._last_group, header.gid, toc_text(header.gname)),
            xattrs=xattrs or None,
        )
        if kind in ("char", "block"):
            entry.dev_major, entry.dev_minor = header.devmajor, header.devminor
        return entry

    def finish(self) -> BuildResult:
        self._refuse_unresolvable_hardlinks()
        self._members.drain()
        self._digests.resolve()
        offsets = self._members.offsets
        toc = {"version": TOC_VERSION, "entries": [entry.to_json(offsets) for entry in self._toc]}
        toc_json = json.dumps(toc, indent="\t", ensure_ascii=False).encode()

        toc_header = tarfile.TarInfo(mt.ESTARGZ_TOC_TAR_NAME)
        toc_header.size = len(toc_json)
        toc_header.mode = 0
        toc_member = self._members.new_member()
        self._members.write(toc_header.tobuf(tarfile.PAX_FORMAT, TAR_ENCODING, TAR_ERRORS))
        self._members.write(toc_json)
        self._members.write(b"\0" * (-len(toc_json) % _TAR_BLOCK) + b"\0" * (2 * _TAR_BLOCK))
        self._members.drain()
        self._out.write(footer_bytes(self._members.offsets[toc_member]))
        return BuildResult(
            toc_digest="sha256:" + hashlib.sha256(toc_json).hexdigest(),
            diff_id=self._members.uncompressed.digest(),
            uncompressed_size=self._members.uncompressed.size,
        )


def _name_if_changed(last: dict[int, str], ident: int, name: str) -> str:
    if not name or last.get(ident) == name:
        return ""
    last[ident] = name
    return name


def _output_header(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """The header we write for a source entry: same metadata, PAX-encodable, regular types normalised."""
    if info.type not in TOC_TYPES and not info.isreg():
        raise DriverError(f"unsupported tar entry type {info.type!r} for {info.name!r}")
    out = tarfile.TarInfo(info.name)
    out.type = tarfile.REGTYPE if info.isreg() else info.type  # also '\0', contiguous and sparse files
    out.size = info.size if info.isreg() else 0
    out.mode = info.mode & 0o7777  # what tarfile writes anyway; the TOC must agree with the header
    out.uid, out.gid = info.uid, info.gid
    out.uname, out.gname = info.uname, info.gname
    out.mtime = info.mtime
    out.linkname = info.linkname
    out.devmajor, out.devminor = info.devmajor, info.devminor
    # Sparse maps describe the source's on-disk layout, not ours (we write the payload expanded).
    out.pax_headers = {
        key: value
        for key, value in info.pax_headers.items()
        if not key.startswith("GNU.sparse.") and not (info.sparse is not None and key == "size")
    }
    return out
