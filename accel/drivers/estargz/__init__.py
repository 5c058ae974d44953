"""eStargz driver: a gzip tar whose file chunks are separately seekable gzip members, plus a TOC.

Layout (stargz-snapshotter docs/estargz.md, mirroring `estargz.Build` with its default options):

    member: .no.prefetch.landmark header            (or: prioritized entries, then .prefetch.landmark)
    member: chunk payload [+ tar padding + the headers of the entries that follow, until the next payload]
    ...
    member: stargz.index.json tar entry + end-of-archive blocks
    footer: an empty 51-byte gzip member whose extra field holds the TOC member's offset

Each regular-file chunk starts a new gzip member, so a reader can fetch and inflate one chunk on its own;
its TOC entry records that member's compressed `offset`. Decompressing the whole blob gives one valid tar
(TOC entry included); its sha256 is the layer's DiffID.

Members are compressed on a small thread pool (zlib-ng releases the GIL) and written in order; because
a member's compressed offset is only known once everything before it is written, TOC entries refer to
their member by index until the TOC is serialised.

Modules: `entries` (the source tar entries in output order), `members` (gzip members on a thread pool),
`toc`, `footer`, `builder` (one blob), `driver`, and `reader` (a blob read back: footer, TOC, every chunk
and file digest, the layer's entries; what `accel.verify` asks).
"""

from accel.drivers.estargz import builder, entries, footer, members, reader, toc
from accel.drivers.estargz.driver import (
    DEFAULT_CHUNK_SIZE,
    IMPLEMENTATION_VERSION,
    EStargzDriver,
    EStargzOptions,
)
from accel.drivers.estargz.footer import FOOTER_SIZE, footer_bytes

# What `accel.drivers` looks up under this package's name.
DRIVER = EStargzDriver

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DRIVER",
    "FOOTER_SIZE",
    "IMPLEMENTATION_VERSION",
    "EStargzDriver",
    "EStargzOptions",
    "builder",
    "entries",
    "footer",
    "footer_bytes",
    "members",
    "reader",
    "toc",
]
