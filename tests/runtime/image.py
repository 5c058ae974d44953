"""The image the runtime tier runs: busybox (static) as its shell, several layers with a whiteout, a symlink,
a hardlink and xattrs, a small file the command reads and a large random file it never reads."""

from __future__ import annotations

from pathlib import Path

from tests.harness import imagegen

BIG_FILE = "data/big.bin"  # 16 MiB, random: incompressible, never read by the command
BIG_FILE_SIZE = 16 * imagegen.MiB
SMALL_FILE = "data/small.txt"
SMALL_TEXT = b"hello from a lazily pulled image\n"
WHITED_OUT = "data/old.txt"
# Reads the small file through a hardlink and a symlink, proves the whiteout hid a lower file, and reads
# a file of the lowest layer; prints what the test expects verbatim.
COMMAND = [
    "/bin/sh",
    "-c",
    f"cat /data/small-hard /data/latest && test ! -e /{WHITED_OUT} && echo whiteout-ok && cat /etc/motd",
]
EXPECTED_OUTPUT = SMALL_TEXT.decode() * 2 + "whiteout-ok\nbase layer\n"
READ_BY_COMMAND = [SMALL_FILE, "data/small-hard", "data/latest", "etc/motd", "bin/busybox"]


def runtime_layers(busybox: Path) -> list[imagegen.TarBuilder]:
    base = imagegen.TarBuilder(auto_parents=True)
    base.file("bin/busybox", busybox.read_bytes(), mode=0o755)
    for applet in ("sh", "cat", "test", "echo", "ls"):
        base.symlink(f"bin/{applet}", "busybox")
    base.file("etc/motd", b"base layer\n", xattrs={"user.origin": b"accel-runtime-test"})
    base.file(WHITED_OUT, b"deleted by the top layer\n")
    base.dir("tmp", mode=0o1777)

    data = imagegen.TarBuilder(auto_parents=True)
    data.file_from_generator(BIG_FILE, BIG_FILE_SIZE, seed=21)
    data.file(SMALL_FILE, SMALL_TEXT, mode=0o640, uid=1000, gid=1000)
    data.hardlink("data/small-hard", SMALL_FILE)  # hardlinks stay within a layer

    top = imagegen.TarBuilder(auto_parents=True)
    top.whiteout(WHITED_OUT)
    top.symlink("data/latest", "small.txt")
    top.file("data/top.txt", b"top layer\n")
    return [base, data, top]
