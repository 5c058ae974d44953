"""`accelctl check`'s mounted view (`verify_image(..., mounted_view=True)`): a Nydus target is also mounted
with nydusd over the blobs the check fetched, and the mounted tree is compared with the source's layers
applied, in a row of its own; one flipped byte of one file's data makes that row fail and name the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from accel import publish
from accel.drivers.nydus.reader import MOUNT_LABEL
from accel.oci import Descriptor
from accel.reference import Reference
from accel.store import ContentStore
from accel.transports import OCILayout
from accel.verify import Verdict, verify_image
from tests.harness import imagegen
from tests.harness import nydus as nh
from tests.harness.localconvert import convert
from tests.harness.pushing import as_built

pytestmark = [nh.needs_builder, pytest.mark.nydus]

REF = Reference("oci", "image", tag="v1")
BIG_FILE = "usr/lib/big.bin"  # random, so stored as it is: a flipped byte reads back flipped
BIG_FILE_SIZE = 300 * 1024 + 7


def layouts(tmp_path: Path) -> tuple[OCILayout, OCILayout]:
    store = ContentStore(tmp_path / "store")
    image = imagegen.generate_image(imagegen.standard_layers(big_file_size=BIG_FILE_SIZE), store)
    source = OCILayout(tmp_path / "source")
    publish.push_image(source, REF, as_built(image), store)
    target = OCILayout(tmp_path / "target")
    convert(source, REF, target, REF, "nydus", store)
    return source, target


def mount_row(verdict: Verdict) -> Any:
    rows = [row for row in verdict.layers if row.format == MOUNT_LABEL]
    assert len(rows) == 1, verdict.table()
    return rows[0]


def test_the_mounted_view_is_a_row_of_the_check(runtime_machine: None, tmp_path: Path) -> None:
    source, target = layouts(tmp_path)
    verdict = verify_image(source, REF, target, REF, work_dir=tmp_path / "verify", mounted_view=True)
    assert verdict.ok, verdict.table()
    assert mount_row(verdict).checks == ["mounted tree"], verdict.table()
    assert MOUNT_LABEL in verdict.table()
    # Without it (the conversion flow's own check) there is no mount.
    plain = verify_image(source, REF, target, REF, work_dir=tmp_path / "plain")
    assert not [row for row in plain.layers if row.format == MOUNT_LABEL]


class FlippingLayout:
    """A layout whose blob `digest` has one byte flipped at `offset` once fetched (after its digest was
    checked), as if the blob changed under the check."""

    def __init__(self, layout: OCILayout, digest: str, offset: int) -> None:
        self.layout, self.digest, self.offset = layout, digest, offset

    def __getattr__(self, name: str) -> Any:
        return getattr(self.layout, name)

    def fetch_blob(self, ref: Reference, desc: Descriptor, store: ContentStore) -> Path:
        path = self.layout.fetch_blob(ref, desc, store)
        if desc.digest == self.digest:
            os.chmod(path, 0o644)
            with path.open("r+b") as blob:
                blob.seek(self.offset)
                byte = blob.read(1)
                blob.seek(self.offset)
                blob.write(bytes([byte[0] ^ 0xFF]))
        return path


def test_a_flipped_byte_of_file_data_fails_the_mounted_row_naming_the_file(
    runtime_machine: None, tmp_path: Path
) -> None:
    source, target = layouts(tmp_path)
    start_of_big = next(imagegen.generated_bytes(BIG_FILE_SIZE, seed=1))[:64]
    blobs = sorted((tmp_path / "target" / "blobs" / "sha256").iterdir())
    holding = [(blob, blob.read_bytes().find(start_of_big)) for blob in blobs]
    blob, offset = next((blob, at) for blob, at in holding if at >= 0)
    flipping = FlippingLayout(target, f"sha256:{blob.name}", offset + 1000)
    verdict = verify_image(source, REF, flipping, REF, work_dir=tmp_path / "verify", mounted_view=True)
    row = mount_row(verdict)
    assert not row.ok, verdict.table()
    assert BIG_FILE in row.problem, row.problem
    assert "FAIL" in verdict.table()
