"""Property tests: random legal layers (and the unusual ones of issue 20), converted by each driver, then
proven by `check` (`accel.verify.verify_image`). For every input and driver, exactly one holds:

- the conversion succeeds and `check` finds the converted image equal to the source layers applied (every
  attribute the format holds, per layer and merged), or
- the driver refuses the layer with an error that names the entry.

A conversion that succeeds while `check` rejects it is either a wrong conversion or a false reject of
`check`; neither may pass. Cases the Nydus driver still converts wrongly go in `NYDUS_PENDING` (none
today: issue 20's A–H are fixed), marked `xfail(strict=True)` with their letter, so they flip to failures
the day they are fixed and the mark must go.
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


def _layer(*members: tuple[Any, ...]) -> bytes:
    return tar_bytes(list(members))


def _lower_d() -> bytes:
    return _layer(member("d", tarfile.DIRTYPE), member("d/x", data=b"hidden once d is replaced\n"))


def _upper_d() -> bytes:
    return _layer(member("d/b", tarfile.DIRTYPE), member("d/b/f", data=b"new\n"))


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
    # Found by the random layers: a directory over a symlink over a directory (three layers) brought the
    # lowest directory's children back in Nydus (overlayfs, like `check`, stops merging at the symlink).
    "H-dir-over-symlink-over-dir": [
        _lower_d(),
        _layer(member("d", tarfile.SYMTYPE, linkname="a")),
        _upper_d(),
    ],
    # The same with every other non-directory in the middle, the directory again explicit or implied.
    "H-dir-over-file-over-dir": [
        _lower_d(),
        _layer(member("d", data=b"a file now\n")),
        _layer(member("d", tarfile.DIRTYPE, mode=0o700, uid=5), member("d/f", data=b"new\n")),
    ],
    "H-dir-over-hardlink-over-dir": [
        _lower_d(),
        _layer(member("t", data=b"linked\n"), member("d", tarfile.LNKTYPE, linkname="t")),
        _upper_d(),
    ],
    "H-dir-over-device-over-dir": [
        _lower_d(),
        _layer(member("d", tarfile.CHRTYPE, devmajor=1, devminor=3)),
        _upper_d(),
    ],
    "H-dir-over-fifo-over-dir": [_lower_d(), _layer(member("d", tarfile.FIFOTYPE)), _upper_d()],
    # Deeper: the replaced directory inside a kept one (its siblings stay), or below the one replaced.
    "H-nested-siblings-stay": [
        _layer(
            member("p", tarfile.DIRTYPE),
            member("p/s", data=b"sibling\n"),
            member("p/d", tarfile.DIRTYPE),
            member("p/d/x", data=b"hidden\n"),
        ),
        _layer(member("p/d", tarfile.SYMTYPE, linkname="../a")),
        _layer(member("p/d/b/f", data=b"new\n")),
    ],
    "H-ancestor-replaced": [
        _layer(
            member("d", tarfile.DIRTYPE), member("d/e", tarfile.DIRTYPE), member("d/e/x", data=b"hidden\n")
        ),
        _layer(member("d/e", tarfile.SYMTYPE, linkname="a")),
        _layer(member("d", tarfile.FIFOTYPE)),
        _layer(member("d/e/y", data=b"new\n")),
    ],
    # Four and five layers: replaced twice before the directory returns; replaced and returning twice.
    "H-replaced-twice": [
        _lower_d(),
        _layer(member("d", tarfile.SYMTYPE, linkname="a")),
        _layer(member("d", data=b"then a file\n")),
        _upper_d(),
    ],
    "H-returning-twice": [
        _lower_d(),
        _layer(member("d", tarfile.SYMTYPE, linkname="a")),
        _upper_d(),
        _layer(member("d", tarfile.SYMTYPE, linkname="a")),
        _layer(member("d/c", data=b"last\n")),
    ],
    # With whiteouts: of the non-directory (before, or in, the layer the directory returns in), of a hidden
    # child, and an opaque marker in the returning directory.
    "H-whiteout-then-dir": [
        _lower_d(),
        _layer(member("d", tarfile.SYMTYPE, linkname="a")),
        _layer(member(".wh.d")),
        _upper_d(),
    ],
    "H-whiteout-with-dir": [
        _lower_d(),
        _layer(member("d", tarfile.SYMTYPE, linkname="a")),
        _layer(member(".wh.d"), member("d", tarfile.DIRTYPE), member("d/b", data=b"new\n")),
    ],
    "H-whiteout-of-a-hidden-child": [
        _layer(member("d", tarfile.DIRTYPE), member("d/x", data=b"x\n"), member("d/y", data=b"y\n")),
        _layer(member("d", tarfile.SYMTYPE, linkname="a")),
        _layer(member("d/.wh.x"), member("d/b", data=b"new\n")),
    ],
    "H-opaque-returning-dir": [
        _lower_d(),
        _layer(member("d", data=b"a file now\n")),
        _layer(member("d", tarfile.DIRTYPE), member("d/.wh..wh..opq"), member("d/b", data=b"new\n")),
    ],
    "H-non-utf8-name": [
        _layer(member("d\udcff", tarfile.DIRTYPE), member("d\udcff/x", data=b"hidden\n")),
        _layer(member("d\udcff", tarfile.SYMTYPE, linkname="a")),
        _layer(member("d\udcff/b", data=b"new\n")),
    ],
    # Whiteouts and opaque markers in the first layer remove nothing and are no files of the image (Nydus
    # merge kept the lowest layer's as files).
    "whiteout-in-the-first-layer": [
        _layer(member(".wh.q"), member("d/.wh..wh..opq"), member("d/f", data=b"f\n")),
        _layer(member("g", data=b"g\n")),
    ],
    "whiteout-in-the-only-layer": [_layer(member("e/.wh.q"), member("f", data=b"f\n"))],
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
# the mark must go. A–G (issue 20's, and G found by the random layers) pass since the fidelity merge, H
# (and its variants) since the emptying patches (`accel.drivers.nydus.directories.stale_subtrees`).
NYDUS_PENDING: dict[str, str] = {}


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
    holds(random_layers(seed, driver), driver, tmp_path)


@pytest.mark.parametrize(("case", "driver"), _cases())
def test_issue_cases_convert_equal_or_are_refused_by_name(case: str, driver: str, tmp_path: Path) -> None:
    holds(ISSUE_CASES[case], driver, tmp_path)
