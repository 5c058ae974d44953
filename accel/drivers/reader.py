"""Reading converted layers back, trusting nothing about how they were written: the shape every format's
reader has, so `accel.verify` asks a layer for its format's reader (`accel.drivers.reader_for`, through the
driver class's `reader`) and never parses a format itself.

Most formats are read layer by layer (`LayerReader`: the blob's own structure checked — footer, TOC,
chunks — then its file entries listed from the decompressed stream, whose digest is checked against the
layer's DiffID). `LayerReader` itself reads a plain layer (gzip, zstd or uncompressed tar). A format whose
layers only make sense together (Nydus: the merged bootstrap is the last layer) reads a whole platform
(`PlatformReader`) and reports into its verdict rows.
"""

from __future__ import annotations

import dataclasses
import json
import tarfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import zstandard
from isal import isal_zlib
from zlib_ng import zlib_ng

from accel import trees
from accel.compression import open_uncompressed
from accel.errors import AccelError
from accel.model import SourceLayer
from accel.oci import Descriptor
from accel.store import ContentStore
from accel.verdict import LayerVerdict, Verdict


class LayerReadError(AccelError):
    """A layer does not decode through its format's structure; the message names the part or entry."""


# What decoding a damaged blob raises besides our own errors: every codec's error class (isal, zlib-ng,
# zlib, zstandard), tarfile's, short reads and bad values (ValueError covers JSON, UnicodeDecodeError and
# binascii), a TOC of the wrong shape (KeyError, TypeError, IndexError). Caught at the reader boundary
# and turned into a FAIL row naming the layer: `check` never shows a traceback for a damaged blob.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    isal_zlib.IsalError,
    zlib_ng.error,
    zlib.error,
    zstandard.ZstdError,
    tarfile.TarError,
    json.JSONDecodeError,
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    AttributeError,
    OSError,
    EOFError,
    OverflowError,
)


def decode_problem(exc: BaseException) -> str:
    """A decoding error as a verdict names it (the class says which codec refused)."""
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, AccelError) else text


class Reader(ABC):
    """What every format's reader answers about a layer descriptor."""

    @abstractmethod
    def claims(self, desc: Descriptor) -> bool:
        """Whether the layer is in this reader's format (judged by its annotations and media type)."""

    @abstractmethod
    def label(self, desc: Descriptor) -> str:
        """The layer's format as a verdict names it."""

    def referenced_blobs(self, desc: Descriptor) -> tuple[str, ...]:
        """Digests of blobs the layer reads its data from although no manifest lists them (a Nydus zran
        layer's source gzip blob): the target repository must hold them too."""
        return ()


class LayerReader(Reader):
    """Reads one layer on its own. This base reads a plain layer; each format overrides what differs."""

    # The decompressed layer is the source layer's tar byte for byte (its DiffID is the source's).
    keeps_source_tar: bool = False
    # Entry fields (`trees.COMPARED_FIELDS`) the format cannot hold, so not compared; README's table in
    # "Proving a conversion" lists them per format. Plain layers, eStargz and zstd:chunked are read from
    # their whole tar stream, which keeps everything the source tar had.
    omits: frozenset[str] = frozenset()

    def claims(self, desc: Descriptor) -> bool:
        return False  # the fallback for layers no format claims

    def label(self, desc: Descriptor) -> str:
        return desc.media_type.rsplit(".", 1)[-1]

    def check(self, blob: Path, desc: Descriptor) -> list[str]:
        """Check the blob's own structure; the checks done, in order. Raises naming the first problem."""
        return []

    def entries(self, blob: Path, layer: SourceLayer) -> list[trees.Entry]:
        """The layer's file entries as its source tar lists them; the stream's digest must be the DiffID."""
        with open_uncompressed(blob, layer.descriptor.media_type, layer.diff_id) as stream:
            return list(trees.iter_tar(stream))

    def comparable_source(self, entries: Sequence[trees.Entry]) -> list[trees.Entry]:
        """A source layer's entries as this format can keep them (to compare with what `entries` reads)."""
        return list(entries)

    def read(self, blob: Path, layer: SourceLayer, checks: list[str]) -> list[trees.Entry]:
        """`check`, then `entries` (their DiffID checked); each check passed is appended to `checks` as it
        passes. Raises an AccelError (LayerReadError for a blob that does not decode) at the first problem."""
        try:
            checks.extend(self.check(blob, layer.descriptor))
            entries = self.entries(blob, layer)
        except DECODE_ERRORS as exc:
            raise LayerReadError(decode_problem(exc)) from exc
        checks.append("diff_id")
        return entries


PLAIN_LAYERS = LayerReader()


def source_entries(store: ContentStore, layer: SourceLayer) -> list[trees.Entry]:
    """A source layer's file entries (its stream's digest checked against its DiffID)."""
    try:
        return PLAIN_LAYERS.entries(store.path(layer.descriptor.digest), layer)
    except DECODE_ERRORS as exc:
        raise LayerReadError(decode_problem(exc)) from exc


@dataclasses.dataclass(frozen=True)
class PlatformUnderTest:
    """One platform of a target image, its blobs fetched and digest-verified, and its source's file trees."""

    key: str  # the platform as the verdict names it
    source_layers: Sequence[SourceLayer]
    source_trees: Sequence[Sequence[trees.Entry]]  # per source layer, as its tar lists them
    target_layers: Sequence[SourceLayer]
    rows: Sequence[LayerVerdict]  # one per target layer, in the verdict already
    store: ContentStore  # the target's blobs
    verdict: Verdict
    scratch: Path  # a private directory for files the reader writes
    mounted_view: bool = False  # also read the image as a runtime would (Nydus: a nydusd FUSE mount)


class PlatformReader(Reader):
    """Reads a format whose layers are read together; reports checks, pairings and problems into the rows."""

    @abstractmethod
    def verify_platform(self, platform: PlatformUnderTest) -> None: ...


FormatReader = LayerReader | PlatformReader
