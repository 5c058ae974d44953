"""Property tests: random legal layers (and the unusual ones of issue 20), converted by each driver, then
proven by `check` (`accel.verify.verify_image`). For every input and driver, exactly one holds:

- the conversion succeeds and `check` finds the converted image equal to the source layers applied (every
  attribute the format holds, per layer and merged), or
- the driver refuses the layer with an error that names the entry.

A conversion that succeeds while `check` rejects it is either a wrong conversion or a false reject of
`check`; neither may pass. Cases the Nydus driver still converts wrongly (issue 20's A–F, being fixed in
the tar normalisation) are marked `xfail(strict=True)` with their letter, so they flip to failures the day
they are fixed and the mark must go.
"""

from __future__ import annotations

import io
import random
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest

from accel import publish, trees
from accel.errors import AccelError
from accel.reference import Reference
from accel.store import ContentStore
from accel.transports import OCILayout
from accel.verify import verify_image
from tests.harness import imagegen
from tests.harness import nydus as nh
from tests.harness.localconvert import convert
from tests.harness.pushing import as_built

REF = Reference("oci", "image", tag="v1")
SEEDS = range(16)
DRIVERS = ["estargz", "zstdchunked", "nydus"]
MTIME = 1_700_000_000
SURROGATE = "surrogateescape"


def member(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = None, **attrs: Any
) -> tuple[Any, ...]:
    return name, kind, data, attrs


def tar_bytes(
    members: list[tuple[Any, ...]], *, fmt: int = tarfile.PAX_FORMAT, trailer: bytes = b""
) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt, encoding="utf-8", errors=SURROGATE) as tar:
        for name, kind, data, attrs in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mtime = MTIME
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            for key, value in attrs.items():
                setattr(info, key, value)
            if kind == tarfile.REGTYPE:
                info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data or b"") if kind == tarfile.REGTYPE else None)
    return buffer.getvalue() + trailer


# --- random legal layers ---------------------------------------------------------------------------


def random_layers(seed: int, driver: str) -> list[bytes]:
    """1–3 layers of dirs, files, symlinks, same-layer hardlinks, devices, FIFOs, xattrs, whiteouts and
    opaque markers over lower paths, odd modes and owners; names from a small alphabet so paths repeat."""
    rng = random.Random(f"{seed}-{driver}")
    names = ["a", "b", "c", "d", "e f"]
    if driver != "zstdchunked":  # zstd:chunked refuses names that are not UTF-8, by name
        names.append(b"n\xff".decode("utf-8", SURROGATE))
    layers: list[bytes] = []
    lower: list[str] = []
    for _ in range(rng.randint(1, 3)):
        members: list[tuple[Any, ...]] = []
        files: list[str] = []
        written: dict[str, dict[str, Any]] = {}
        whited_out = False
        for _ in range(rng.randint(1, 8)):
            path = "/".join(rng.choice(names) for _ in range(rng.randint(1, 3)))
            attrs: dict[str, Any] = {
                "uid": rng.choice([0, 1, 1000, 65534, 70000]),
                "gid": rng.choice([0, 5, 1000, 70000]),
                "mtime": rng.choice([0, 1, MTIME, 2**33 - 1]),
            }
            parent = path.rpartition("/")[0]
            if parent:
                members.append(member(parent, tarfile.DIRTYPE, mode=rng.choice([0o755, 0o750, 0o1777])))
            # A file replaced (or its parent turned into a directory, or itself into anything else) is
            # no longer there to link to.
            files = [
                f
                for f in files
                if f != path and not path.startswith(f + "/") and not f.startswith(path + "/")
            ]
            roll = rng.random()
            if roll < 0.4:
                data = rng.randbytes(rng.choice([0, 1, 700, 70_000]))
                attrs["mode"] = rng.choice([0o644, 0o600, 0o755, 0o4755, 0o2711])
                if rng.random() < 0.3:
                    attrs["pax_headers"] = {"SCHILY.xattr.user.k": rng.choice(["v", "\x00\x01bin", ""])}
                members.append(member(path, tarfile.REGTYPE, data, **attrs))
                files.append(path)
                written[path] = attrs
            elif roll < 0.55:
                members.append(member(path, tarfile.DIRTYPE, mode=rng.choice([0o755, 0o700]), **attrs))
            elif roll < 0.65:
                members.append(
                    member(path, tarfile.SYMTYPE, linkname=rng.choice(["a", "../b", "/etc"]), **attrs)
                )
            elif roll < 0.72 and files:
                target = rng.choice(files)
                if target != path:
                    # The link header repeats its target's metadata, as real writers do (extractors apply
                    # a link header's owner, mode and mtime to the shared inode; `check` keeps the target's).
                    kept = {k: v for k, v in written[target].items() if k in ("mode", "uid", "gid", "mtime")}
                    members.append(member(path, tarfile.LNKTYPE, linkname=target, **kept))
            elif roll < 0.78:
                members.append(member(path, tarfile.CHRTYPE, devmajor=1, devminor=rng.randint(0, 9), **attrs))
            elif roll < 0.82:
                members.append(member(path, tarfile.FIFOTYPE, **attrs))
            elif roll < 0.92 and lower and not whited_out:
                # One whiteout or opaque marker per layer: two that nest (a whiteout inside a directory
                # the same layer whites out) describe no consistent change set.
                victim = rng.choice(lower)
                whited_out = True
                head, _, base = victim.rpartition("/")
                members.append(member(f"{head}/.wh.{base}" if head else f".wh.{base}"))
            elif lower and not whited_out:
                directory = rng.choice(lower).rpartition("/")[0]
                whited_out = True
                if directory:
                    members.append(member(f"{directory}/.wh..wh..opq"))
        layers.append(tar_bytes(members))
        lower += [m[0] for m in members if not m[0].rpartition("/")[2].startswith(".wh.")]
    return layers


# --- the issue's cases -----------------------------------------------------------------------------


def _garbage_after_end() -> bytes:
    return tar_bytes([member("e/file", data=b"before the end\n")], trailer=b"\x01not a tar at all" * 40)


def _appended_archive() -> bytes:
    first = tar_bytes([member("f/first", data=b"first archive\n")])
    return first + tar_bytes([member("f/second", data=b"after the end blocks\n")])


ISSUE_CASES: dict[str, list[bytes]] = {
    "A-pax-numbers": [
        tar_bytes(
            [
                member("n", tarfile.DIRTYPE),
                member("n/big-uid", data=b"x\n", uid=2**21 + 5, gid=2**22),
                member("n/old", data=b"y\n", mtime=-86_400),
                member("n/future", data=b"z\n", mtime=2**33 + 7),
            ]
        )
    ],
    "A-nanoseconds": [tar_bytes([member("ns", data=b"x\n", pax_headers={"mtime": "1700000000.123456789"})])],
    "A-gnu-base-256": [
        tar_bytes([member("g/big-uid", data=b"x\n", uid=2**21 + 5, mtime=2**33 + 7)], fmt=tarfile.GNU_FORMAT)
    ],
    "B-non-utf8-whiteout": [
        tar_bytes([member("d", tarfile.DIRTYPE), member("d/raw-\udcff\udcfe", data=b"lower\n")]),
        tar_bytes([member("d/.wh.raw-\udcff\udcfe")]),
    ],
    "C-hardlink-chain": [
        tar_bytes(
            [
                member("h", tarfile.DIRTYPE),
                member("h/a", data=b"chain\n"),
                member("h/b", tarfile.LNKTYPE, linkname="h/a"),
                member("h/c", tarfile.LNKTYPE, linkname="h/b"),
            ]
        )
    ],
    "D-xattr-newline": [
        tar_bytes([member("x", data=b"x\n", pax_headers={"SCHILY.xattr.user.nl": "line\nbreak"})])
    ],
    "E-garbage-after-end": [_garbage_after_end()],
    "F-appended-archive": [_appended_archive()],
    "GNU-non-utf8-dirs": [
        tar_bytes(
            [member("edge/dir-\udc80", tarfile.DIRTYPE), member("edge/dir-\udc80/f", data=b"in\n")],
            fmt=tarfile.GNU_FORMAT,
        )
    ],
    # Found by the random layers: a directory replaced by a non-directory, then by a directory again, in
    # one layer. Applied as containerd does (and `check`), the first directory's children are gone.
    "G-dir-replaced-in-layer": [
        tar_bytes(
            [
                member("d", tarfile.DIRTYPE),
                member("d/child", data=b"gone when d is replaced\n"),
                member("d", tarfile.FIFOTYPE),
                member("d", tarfile.DIRTYPE),
            ]
        )
    ],
    # Found by the random layers: a directory over a symlink over a directory (three layers) brings the
    # lowest directory's children back (overlayfs, like `check`, stops merging at the symlink).
    "H-dir-over-symlink-over-dir": [
        tar_bytes([member("d", tarfile.DIRTYPE), member("d/x", data=b"hidden by the symlink\n")]),
        tar_bytes([member("d", tarfile.SYMTYPE, linkname="a")]),
        tar_bytes([member("d/b", tarfile.DIRTYPE), member("d/b/f", data=b"new\n")]),
    ],
    # containerd creates the directory a whiteout lives in, as it creates every entry's parents.
    "whiteout-in-a-missing-dir": [
        tar_bytes([member("base", data=b"base\n")]),
        tar_bytes([member("ghost/.wh.x")]),
    ],
    "empty-layer": [tar_bytes([member("base", data=b"base\n")]), tar_bytes([]), tar_bytes([member("top")])],
    "lower-hardlink": [
        tar_bytes([member("x", tarfile.DIRTYPE), member("x/base", data=b"base\n")]),
        tar_bytes([member("x/link", tarfile.LNKTYPE, linkname="x/base")]),
    ],
}

# What the Nydus driver still gets wrong, until it is fixed: a strict xfail fails once the case passes, and
# the mark must go. A–G (issue 20's, and G found by the random layers) pass since the fidelity merge.
NYDUS_PENDING = {
    "H-dir-over-symlink-over-dir": "H (found by the random layers)",
}


def _cases() -> list[Any]:
    params = []
    for case in ISSUE_CASES:
        for driver in DRIVERS:
            marks: list[Any] = []
            if driver == "nydus":
                marks += [nh.needs_builder, pytest.mark.nydus]
                if case in NYDUS_PENDING:
                    letter = NYDUS_PENDING[case]
                    marks.append(pytest.mark.xfail(strict=True, reason=f"Nydus case {letter}"))
            params.append(pytest.param(case, driver, id=f"{case}-{driver}", marks=marks))
    return params


def test_the_tar_listing_stops_at_the_end_blocks() -> None:
    """As Go's archive/tar, GNU tar and Python: what follows the end-of-archive blocks (another archive,
    bytes that are not a tar) is not listed, and does not fail the listing."""
    assert [e.path for e in trees.iter_tar(_appended_archive())] == ["f/first"]
    assert [e.path for e in trees.iter_tar(_garbage_after_end())] == ["e/file"]


# --- the property ----------------------------------------------------------------------------------


def _entry_names(layers: list[bytes]) -> set[str]:
    names: set[str] = set()
    for layer in layers:
        try:
            for entry in trees.iter_tar(layer):
                names.add(entry.path)
        except (tarfile.TarError, ValueError):
            pass
    return names


def _names(name: str, message: str) -> bool:
    """Whether `message` names the entry: as written, or as the bytes of a name that is not UTF-8."""
    spellings = {name, name.encode("utf-8", SURROGATE).decode("ascii", "backslashreplace")}
    return any(
        re.search(rf"(^|[\s'\"/]){re.escape(spelling)}($|[\s'\":,)/])", message) for spelling in spellings
    )


def holds(layers: list[bytes], driver: str, root: Path) -> None:
    store = ContentStore(root / "store")
    source = OCILayout(root / "source")
    image = imagegen.generate_image([imagegen.RawLayer(layer) for layer in layers], store)
    publish.push_image(source, REF, as_built(image), store)
    target = OCILayout(root / "target")
    try:
        convert(source, REF, target, REF, driver, store)
    except AccelError as exc:
        message = str(exc)
        assert any(_names(name, message) for name in _entry_names(layers)), (
            f"{driver} refused without naming an entry: {message}"
        )
        return
    verdict = verify_image(source, REF, target, REF, work_dir=root / "verify")
    assert verdict.ok, f"{driver}: converted, but check rejects it\n{verdict.table()}"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "driver",
    [
        pytest.param("estargz"),
        pytest.param("zstdchunked"),
        pytest.param("nydus", marks=[nh.needs_builder, pytest.mark.nydus]),
    ],
)
def test_random_layers_convert_equal_or_are_refused_by_name(driver: str, seed: int, tmp_path: Path) -> None:
    layers = random_layers(seed, driver)
    pending = nydus_pending_case(layers) if driver == "nydus" else None
    try:
        holds(layers, driver, tmp_path)
    except AssertionError:
        if pending:  # a known Nydus defect (strict cases above): not a defect of `check`
            pytest.xfail(f"Nydus case {pending}")
        raise


def nydus_pending_case(layers: list[bytes]) -> str | None:
    """Which Nydus case still being fixed (`NYDUS_PENDING`) the layers contain, if any: H, a directory with
    children replaced by a non-directory in one layer that becomes a directory again in a later one."""
    state: dict[str, str] = {}
    emptied: dict[str, int] = {}  # directories a non-directory replaced while they had children → layer
    for index, layer in enumerate(layers):
        for entry in trees.iter_tar(layer):
            if entry.path.rpartition("/")[2].startswith(trees.WHITEOUT_PREFIX):
                continue
            parts = entry.path.split("/")
            parents = ["/".join(parts[:n]) for n in range(1, len(parts))]
            for path in [*parents, *([entry.path] if entry.type == "dir" else [])]:
                if state.get(path) != "dir":
                    if emptied.get(path, index) < index:
                        return "H"
                    state[path] = "dir"
            if entry.type != "dir":
                children = [p for p in state if p.startswith(entry.path + "/")]
                if state.get(entry.path) == "dir" and children:
                    emptied[entry.path] = index
                for child in children:
                    del state[child]
                state[entry.path] = entry.type
    return None


@pytest.mark.parametrize(("case", "driver"), _cases())
def test_issue_cases_convert_equal_or_are_refused_by_name(case: str, driver: str, tmp_path: Path) -> None:
    holds(ISSUE_CASES[case], driver, tmp_path)
