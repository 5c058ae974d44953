"""The raw tar scanner: every byte accounted for, fields read the way Go's archive/tar reads them."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from accel.tarstream import TarError, TarFormat, TarScanner, Timestamp, parse_header_block
from tests.harness.imagegen import tar_info as _info


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _rich_tar(fmt: int) -> bytes:
    long_name = "deep/" + "ü" * 40 + "/" + "n" * 120 + ".txt"
    return _tar(
        [
            (_info("dir", tarfile.DIRTYPE, mode=0o755), None),
            (_info("dir/empty"), b""),
            (_info("dir/small", uid=1000, gid=1001, uname="alice", gname="staff"), b"hello\n"),
            (_info("dir/large"), os.urandom(70_000)),
            (_info("dir/zeros"), bytes(5000)),
            (_info("dir/link", tarfile.SYMTYPE, linkname="small"), None),
            (_info("dir/hard", tarfile.LNKTYPE, linkname="dir/small"), None),
            (_info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3), None),
            (_info("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0), None),
            (_info("fifo", tarfile.FIFOTYPE), None),
            (_info("setuid", mode=0o4755), b"#!/bin/sh\n"),
            (_info(long_name, linkname=""), b"long"),
            (_info("l" * 150, tarfile.SYMTYPE, linkname="t" * 130), None),
        ],
        fmt,
    )


def _reassemble(raw: bytes) -> bytes:
    scanner = TarScanner(io.BytesIO(raw))
    out = []
    for member in scanner:
        out.append(member.header_bytes)
        out.extend(member.iter_data(333))
        out.append(member.finish())
    out.append(scanner.end_bytes)
    out.extend(scanner.iter_trailing(100))
    return b"".join(out)


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_every_byte_round_trips(fmt: int) -> None:
    if fmt == tarfile.USTAR_FORMAT:
        raw = _tar([(_info("a/b", uid=5), b"x" * 1000), (_info("c", tarfile.DIRTYPE), None)], fmt)
    else:
        raw = _rich_tar(fmt)
    assert len(raw) % tarfile.RECORDSIZE == 0  # tarfile pads to a record: trailing zeros after the end
    assert _reassemble(raw) == raw


def test_end_blocks_and_trailing_bytes_are_separated() -> None:
    raw = _tar([(_info("f"), b"abc")])
    scanner = TarScanner(io.BytesIO(raw))
    (member,) = list(scanner)
    assert member.padding == bytes(509)
    assert scanner.end_bytes == bytes(1024)
    trailing = b"".join(scanner.iter_trailing())
    assert trailing == bytes(len(raw) - 512 - 512 - 1024)
    assert member.offset == 0 and member.data_offset == 512 and member.data_size == 3


def test_trailing_garbage_and_missing_end_marker() -> None:
    raw = _tar([(_info("f"), b"abc")])
    cut = raw[:1024]  # header + data block, no end-of-archive marker at all
    assert _reassemble(cut) == cut
    scanner = TarScanner(io.BytesIO(cut))
    assert [m.header.name for m in scanner] == [b"f"]
    assert scanner.end_bytes == b""
    garbage = raw[:2048] + b"not a tar"
    assert _reassemble(garbage) == garbage


def test_fields_follow_go_semantics() -> None:
    long_name = "deep/" + "ü" * 40 + "/" + "n" * 120 + ".txt"
    raw = _rich_tar(tarfile.PAX_FORMAT)
    headers = {m.header.name: m for m in TarScanner(io.BytesIO(raw))}
    assert headers[b"dir/"].header.typeflag == b"5"  # tarfile writes directory names with a slash
    small = headers[b"dir/small"].header
    assert (small.uid, small.gid, small.uname, small.gname, small.size) == (1000, 1001, b"alice", b"staff", 6)
    assert small.mtime == Timestamp(1_700_000_000) and small.atime is None
    assert headers[b"dev/null"].header.devmajor == 1 and headers[b"dev/null"].header.devminor == 3
    assert headers[b"dev/sda"].header.typeflag == b"4"
    assert headers[b"fifo"].header.typeflag == b"6"
    assert headers[b"setuid"].header.mode == 0o4755
    assert headers[long_name.encode()].header.format is TarFormat.USTAR
    assert headers[long_name.encode()].header.pax_records[b"path"] == long_name.encode()
    assert headers[b"l" * 150].header.linkname == b"t" * 130
    hard = headers[b"dir/hard"]
    assert hard.header.typeflag == b"1" and hard.data_size == 0 and hard.header.linkname == b"dir/small"


def test_gnu_long_names_and_numeric_extensions() -> None:
    big_uid = 8**8  # does not fit the octal field: GNU writes base-256
    raw = _tar(
        [
            (_info("g" * 200, uid=big_uid, gid=7), b"data"),
            (_info("s" * 120, tarfile.SYMTYPE, linkname="k" * 140), None),
        ],
        tarfile.GNU_FORMAT,
    )
    members = list(TarScanner(io.BytesIO(raw)))
    assert members[0].header.name == b"g" * 200
    assert members[0].header.uid == big_uid and members[0].header.format is TarFormat.GNU
    assert members[0].header_bytes.count(b"././@LongLink") == 1  # the 'L' header is part of the entry
    assert members[1].header.linkname == b"k" * 140
    assert _reassemble(raw) == raw


def test_pax_xattrs_and_subsecond_times() -> None:
    info = _info("x")
    info.pax_headers = {
        "SCHILY.xattr.user.comment": "hé",
        "SCHILY.xattr.security.capability": "\x01\x00",
        "mtime": "1700000000.123456789123",
        "atime": "-1.5",
    }
    raw = _tar([(info, b"1")])
    (member,) = list(TarScanner(io.BytesIO(raw)))
    header = member.header
    assert header.xattrs == {b"user.comment": "hé".encode(), b"security.capability": b"\x01\x00"}
    assert header.mtime == Timestamp(1_700_000_000, 123_456_789)  # truncated to nanoseconds
    assert header.atime == Timestamp(-2, 500_000_000)


def test_old_style_regular_file_type_is_normalised() -> None:
    raw = bytearray(_tar([(_info("olddir/", tarfile.REGTYPE), b""), (_info("oldfile"), b"ab")]))
    for offset in (0, 1024):  # rewrite typeflag '0' to '\0' (AREGTYPE) and fix the checksum
        block = raw[offset : offset + 512]
        block[156] = 0
        block[148:156] = b" " * 8
        block[148:155] = b"%06o\x00" % sum(block)
        raw[offset : offset + 512] = block
    members = list(TarScanner(io.BytesIO(bytes(raw))))
    assert [m.header.typeflag for m in members] == [b"5", b"0"]


def test_corrupt_input_is_rejected() -> None:
    raw = bytearray(_tar([(_info("f"), b"abc")]))
    raw[0] ^= 0xFF  # checksum no longer matches
    with pytest.raises(TarError, match="checksum"):
        list(TarScanner(io.BytesIO(bytes(raw))))
    good = _tar([(_info("f"), b"abc" * 400)])
    with pytest.raises(TarError, match="truncated"):
        scanner = TarScanner(io.BytesIO(good[:700]))
        for member in scanner:
            member.read()
    with pytest.raises(TarError, match="zero block followed"):
        list(TarScanner(io.BytesIO(bytes(512) + good[:512])))


def test_padding_short_at_end_of_stream_ends_the_archive() -> None:
    raw = _tar([(_info("f"), b"abc")])[: 512 + 100]  # data present, padding cut short
    assert _reassemble(raw) == raw
    scanner = TarScanner(io.BytesIO(raw))
    (member,) = list(scanner)
    assert member.padding == bytes(97) and scanner.end_bytes == b""


def test_a_single_header_block_parses_on_its_own() -> None:
    raw = _tar(
        [
            (_info("dir/small", uid=7), b"hello\n"),
            (_info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3), None),
        ],
        tarfile.USTAR_FORMAT,
    )
    header, data_size = parse_header_block(raw[:512])
    assert (header.name, header.typeflag, header.uid, header.size, data_size) == (b"dir/small", b"0", 7, 6, 6)
    header, data_size = parse_header_block(raw[1024:1536])
    assert (header.name, header.typeflag, header.devmajor, header.devminor) == (b"dev/null", b"3", 1, 3)
    assert data_size == 0  # header-only type
    with pytest.raises(TarError):
        parse_header_block(bytes(512))  # an end-of-archive block is no header
    with pytest.raises(TarError):
        parse_header_block(raw[:100])
    corrupt = bytearray(raw[:512])
    corrupt[0] ^= 0xFF
    with pytest.raises(TarError, match="checksum"):
        parse_header_block(bytes(corrupt))


@pytest.mark.parametrize("after", [b"not a tar " * 200, "appended archive"], ids=["not-a-tar", "appended"])
def test_the_archive_ends_at_its_end_of_archive_blocks(after: bytes | str) -> None:
    """What follows the two zero blocks is no entry (Go's archive/tar, GNU tar and tarfile stop there too):
    `TarScanner.members` ends at them, `iter_trailing` gives the rest as bytes."""
    first = _tar([(_info("f"), b"abc")])
    trailing = _tar([(_info("appended"), b"x")]) if isinstance(after, str) else after
    raw = first + trailing
    scanner = TarScanner(io.BytesIO(raw))
    assert [m.header.name for m in scanner] == [b"f"]
    assert scanner.end_bytes == bytes(1024)
    rest = b"".join(scanner.iter_trailing())
    assert raw.endswith(rest) and rest.endswith(trailing)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        assert tar.getnames() == ["f"]
