"""zstd:chunked layers, in the format containers/storage (go.podman.io/storage, pkg/chunked) writes and reads.

Blob layout, identical in structure to the reference compressor:

    [frame: padding + tar headers] [frames: one per payload chunk] ... [frame: last padding, end blocks,
    trailing bytes] [skippable frame: zstd(TOC JSON)] [skippable frame: zstd(tar-split JSON lines)]
    [skippable frame: 64-byte footer ending in "GNUlInUx"]

Decompressing the whole blob yields the source tar byte for byte, so the DiffID does not change.

Chunking follows the reference rule exactly (so chunk digests match layers produced by podman/buildah
and chunk-level dedup works across tools): runs of >= 1024 zero bytes become "zeros" chunks, and the rest
is cut where the bup-style rolling sum over a 64-byte window has its low 16 bits all set. The rolling sum
is evaluated for a whole block at once, in C (built by scripts/setup; 16 lanes side by side with AVX2) or
with numpy prefix sums when the library is absent (see `rollsum`); a per-byte Python loop would be two
orders of magnitude slower. A payload read in one piece without zero runs (most files) is cut in one call
and its chunks go to the frame pool directly; other payloads go through `rollsum.FileChunker`.

Modules: `crc64` (tar-split payload checksums), `rollsum` (content-defined chunking), `frames` (ordered
parallel zstd frames), `toc`, `tarsplit`, `footer`, `writer` (one layer), `driver`, and `reader` (a blob
read back: footer, manifest checksum, every chunk and file digest, the layer's entries; what
`accel.verify` asks).
"""

from accel.drivers.zstdchunked import crc64, footer, frames, reader, rollsum, tarsplit, toc, writer
from accel.drivers.zstdchunked.crc64 import Crc64
from accel.drivers.zstdchunked.driver import ZstdChunkedDriver, ZstdChunkedOptions
from accel.drivers.zstdchunked.footer import (
    FOOTER_MAGIC,
    FOOTER_SIZE,
    SKIPPABLE_FRAME_MAGIC,
    ZstdChunkedFooter,
)
from accel.drivers.zstdchunked.rollsum import DataPiece, FileChunker, ZeroRun
from accel.drivers.zstdchunked.tarsplit import TARSPLIT_FILE, TARSPLIT_SEGMENT
from accel.drivers.zstdchunked.toc import TocEntry
from accel.drivers.zstdchunked.writer import ZstdChunkedResult, write_zstd_chunked

# What `accel.drivers` looks up under this package's name.
DRIVER = ZstdChunkedDriver

__all__ = [
    "DRIVER",
    "FOOTER_MAGIC",
    "FOOTER_SIZE",
    "SKIPPABLE_FRAME_MAGIC",
    "TARSPLIT_FILE",
    "TARSPLIT_SEGMENT",
    "Crc64",
    "DataPiece",
    "FileChunker",
    "TocEntry",
    "ZeroRun",
    "ZstdChunkedDriver",
    "ZstdChunkedFooter",
    "ZstdChunkedOptions",
    "ZstdChunkedResult",
    "crc64",
    "footer",
    "frames",
    "reader",
    "rollsum",
    "tarsplit",
    "toc",
    "write_zstd_chunked",
    "writer",
]
