"""`accel.verify` as a test assertion: converted images the flow tests push, proven against their source."""

from __future__ import annotations

from typing import Any

from accel.reference import Reference
from accel.verify import verify_image


def assert_proven(client: Any, source: str | Reference, target: str | Reference) -> None:
    """The target decodes through its format and its file trees equal the source's (see accel.verify)."""
    source_ref = source if isinstance(source, Reference) else Reference.parse(source)
    target_ref = target if isinstance(target, Reference) else Reference.parse(target)
    verdict = verify_image(client, source_ref, client, target_ref)
    assert verdict.ok, verdict.table()
