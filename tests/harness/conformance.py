"""Python side of the Go conformance checker (tests/conformance/checker).

The checker runs the formats' reference readers on our blobs (eStargz: stargz-snapshotter's
`estargz` package; zstd:chunked: the containers/storage partial-pull differ) and the reference
writers to make golden blobs. `tar_tree` computes, from a plain tar, the same file-tree format the
checker prints, so a converted layer can be compared with its source layer:

- name: archive path cleaned like `path.Clean("/" + name)` without the leading "/" ("./etc/" ->
  "etc"); the layer root ("./", "/") is "." and appears only if the archive has an entry for it;
- type: reg, dir, symlink, hardlink, char, block, fifo;
- hardlink entries have only name, type and linkname (cleaned like a name): a link shares its
  target's inode, so its own header metadata is not observable; symlink linknames stay verbatim;
- mode: permission bits with setuid/setgid/sticky (`mode & 0o7777`); uid, gid, uname, gname;
- size and sha256 (hex of the content) for reg only; devmajor/devminor for char/block only;
- xattrs: PAX `SCHILY.xattr.*` records, values base64 (standard, padded); always present
  (possibly empty) on non-hardlink entries;
- sorted by name (UTF-8 byte order); a repeated name keeps the later entry.

eStargz cannot express "no user name" for a uid that had a name on an earlier entry (writers drop
unchanged names, readers fill them back in); pass `estargz_owner_names=True` to apply that rule when
comparing with an eStargz verdict. Trees of the two readers are also checked against the tar stream
inside each blob by the checker itself, so `ok` already implies a lossless layer.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import posixpath
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

CHECKER_SOURCE_DIR = Path(__file__).resolve().parents[1] / "conformance" / "checker"
CHECKER_BINARY_NAME = "accel-conformance"
DEFAULT_TOOLS_CACHE = Path.home() / ".cache" / "accel" / "tools"
FALLBACK_GO = Path("/usr/local/go/bin/go")

_XATTR_PAX_PREFIX = "SCHILY.xattr."
_READ_SIZE = 1 << 20
_PERMISSION_BITS = 0o7777
_TYPE_NAMES = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


class CheckerUnavailable(RuntimeError):
    """No Go toolchain to build the checker with."""


class CheckerError(RuntimeError):
    """The checker could not run (usage error, crash) or a generator failed."""


@dataclass(frozen=True)
class Verdict:
    ok: bool
    error: str
    tree: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)


def tools_cache_root() -> Path:
    return Path(os.environ.get("ACCEL_TOOLS_CACHE") or DEFAULT_TOOLS_CACHE)


def go_executable() -> Path:
    found = os.environ.get("ACCEL_GO") or shutil.which("go")
    if found:
        return Path(found)
    if FALLBACK_GO.exists():
        return FALLBACK_GO
    raise CheckerUnavailable("no Go toolchain: install Go or set ACCEL_GO")


def _checker_sources() -> list[Path]:
    sources = [p for p in CHECKER_SOURCE_DIR.glob("*.go") if not p.name.endswith("_test.go")]
    sources += [CHECKER_SOURCE_DIR / "go.mod", CHECKER_SOURCE_DIR / "go.sum"]
    return sorted(sources)


def checker_source_hash() -> str:
    digest = hashlib.sha256()
    for source in _checker_sources():
        digest.update(source.name.encode() + b"\0")
        digest.update(source.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.cache
def checker_binary() -> Path:
    """Build the checker once per source version and return its path.

    Concurrent builders each build to a private temporary name and rename it into place, so a
    reader never sees a partial binary; the last rename wins and all results are equivalent.
    """
    target = tools_cache_root() / f"conformance-{checker_source_hash()}" / CHECKER_BINARY_NAME
    if target.is_file() and os.access(target, os.X_OK):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{CHECKER_BINARY_NAME}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    environment = {
        **os.environ,
        # -mod=mod lets the build fetch missing modules through the module cache/proxy.
        "GOFLAGS": "-mod=mod -buildvcs=false",
        # No cgo: containers/storage's btrfs driver would need C headers, and a static binary
        # keeps working when the cache outlives the machine's libraries.
        "CGO_ENABLED": "0",
    }
    command = [str(go_executable()), "build", "-trimpath", "-o", str(temporary), "."]
    try:
        completed = subprocess.run(
            command, cwd=CHECKER_SOURCE_DIR, env=environment, capture_output=True, text=True, check=False
        )
        if completed.returncode != 0:
            raise CheckerError(f"building the conformance checker failed:\n{completed.stderr}")
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def run_checker(arguments: Iterable[str]) -> dict[str, Any]:
    """Run one checker subcommand and return its JSON object."""
    command = [str(checker_binary()), *arguments]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise CheckerError(f"{' '.join(command)} exited {completed.returncode}: {completed.stderr.strip()}")
    try:
        result = json.loads(completed.stdout)
    except json.JSONDecodeError as error:
        raise CheckerError(f"checker printed no JSON: {completed.stdout!r}") from error
    if not isinstance(result, dict):
        raise CheckerError(f"checker printed {type(result).__name__}, not an object")
    return result


def _verdict(result: dict[str, Any]) -> Verdict:
    return Verdict(
        ok=bool(result.get("ok")),
        error=str(result.get("error") or ""),
        tree=list(result.get("tree") or []),
        raw=result,
    )


def check_estargz(blob: Path, toc_digest: str, uncompressed_size: int | None) -> Verdict:
    arguments = ["estargz", "--blob", str(blob), "--toc-digest", toc_digest]
    if uncompressed_size is not None:
        arguments += ["--uncompressed-size", str(uncompressed_size)]
    return _verdict(run_checker(arguments))


def check_zstd_chunked(
    blob: Path, annotations: dict[str, str], diff_id: str | None, lazy_file: str | None = None
) -> Verdict:
    """containers/storage's differ reads the layer (either variant); for the stargz variant,
    stargz-snapshotter's reader also opens it and reads `lazy_file` (default: the first file with
    content) by range. The verdict's raw["lazy_reads"] holds the bytes each reader fetched."""
    with tempfile.TemporaryDirectory(prefix="accel-conformance-") as scratch:
        annotations_file = Path(scratch) / "annotations.json"
        annotations_file.write_text(json.dumps(annotations))
        arguments = ["zstdchunked", "--blob", str(blob), "--annotations", str(annotations_file)]
        if diff_id is not None:
            arguments += ["--diff-id", diff_id]
        if lazy_file is not None:
            arguments += ["--lazy-file", lazy_file]
        return _verdict(run_checker(arguments))


def _generate(subcommand: str, tar: Path, out: Path) -> dict[str, str]:
    result = run_checker([subcommand, "--tar", str(tar), "--out", str(out)])
    if not result.get("ok"):
        raise CheckerError(f"{subcommand} failed: {result.get('error')}")
    return dict(result["annotations"])


def gen_estargz(tar: Path, out: Path) -> dict[str, str]:
    """Reference eStargz blob (estargz.Build, 4 MiB chunks, one worker) and its annotations."""
    return _generate("gen-estargz", tar, out)


def gen_zstd_chunked(tar: Path, out: Path) -> dict[str, str]:
    """Reference zstd:chunked blob (containers/storage compressor, level 3) and its annotations."""
    return _generate("gen-zstdchunked", tar, out)


def go_tar_tree(tar: Path, *, estargz_owner_names: bool = False) -> list[dict[str, Any]]:
    """The tree of a plain tar as Go's archive/tar reads it (to cross-check `tar_tree`)."""
    arguments = ["tar-tree", "--tar", str(tar)]
    if estargz_owner_names:
        arguments.append("--estargz-owner-names")
    result = run_checker(arguments)
    if not result.get("ok"):
        raise CheckerError(f"tar-tree failed: {result.get('error')}")
    return list(result.get("tree") or [])


def clean_name(name: str) -> str:
    """Archive path normalisation shared with the checker (see module docstring)."""
    cleaned = posixpath.normpath("/" + name).lstrip("/")
    return cleaned or "."


def _raw_bytes(text: str) -> bytes:
    # tarfile decodes PAX values as UTF-8 with surrogateescape; this restores the original bytes.
    return text.encode("utf-8", "surrogateescape")


def _sort_key(name: str) -> bytes:
    return _raw_bytes(name)


def tar_tree(tar_stream: BinaryIO | Path, *, estargz_owner_names: bool = False) -> list[dict[str, Any]]:
    """The checker's tree format computed from a plain (uncompressed) tar, read as a stream."""
    if isinstance(tar_stream, Path):
        with tar_stream.open("rb") as stream:
            return tar_tree(stream, estargz_owner_names=estargz_owner_names)
    by_name: dict[str, dict[str, Any]] = {}
    last_uname: dict[int, str] = {}
    last_gname: dict[int, str] = {}
    with tarfile.open(fileobj=tar_stream, mode="r|", encoding="utf-8", errors="surrogateescape") as archive:
        for member in archive:
            uname, gname = member.uname, member.gname
            if estargz_owner_names:
                uname = _inherit_name(last_uname, member.uid, uname)
                gname = _inherit_name(last_gname, member.gid, gname)
            type_name = _TYPE_NAMES.get(member.type)
            if type_name is None:
                raise ValueError(f"tar entry {member.name!r} has unsupported type {member.type!r}")
            name = clean_name(member.name)
            if type_name == "hardlink":
                by_name[name] = {"name": name, "type": "hardlink", "linkname": clean_name(member.linkname)}
                continue
            entry: dict[str, Any] = {
                "name": name,
                "type": type_name,
                "mode": member.mode & _PERMISSION_BITS,
                "uid": member.uid,
                "gid": member.gid,
                "uname": uname,
                "gname": gname,
                "xattrs": {
                    key.removeprefix(_XATTR_PAX_PREFIX): base64.b64encode(_raw_bytes(value)).decode("ascii")
                    for key, value in member.pax_headers.items()
                    if key.startswith(_XATTR_PAX_PREFIX)
                },
            }
            if type_name == "reg":
                entry["size"], entry["sha256"] = _hash_member(archive, member)
            elif type_name == "symlink":
                entry["linkname"] = member.linkname
            elif type_name in ("char", "block"):
                entry["devmajor"], entry["devminor"] = member.devmajor, member.devminor
            by_name[name] = entry
    return [by_name[name] for name in sorted(by_name, key=_sort_key)]


def _inherit_name(last: dict[int, str], owner_id: int, name: str) -> str:
    if not name:
        return last.get(owner_id, "")
    last[owner_id] = name
    return name


def _hash_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[int, str]:
    content = archive.extractfile(member)
    if content is None:  # pragma: no cover - regular members always have a file object
        raise ValueError(f"cannot read {member.name!r}")
    digest = hashlib.sha256()
    size = 0
    while chunk := content.read(_READ_SIZE):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()
