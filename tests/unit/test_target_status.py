"""acceld lists each target of a task with its own status and reason (issue 9, per-driver results)."""

from __future__ import annotations

from flows.convert_image import ConversionResult, TargetFailure, TargetResult
from service.api.prefect_backend import _target_status


def _pushed(driver: str) -> TargetResult:
    return TargetResult(
        driver=driver,
        reference=f"h/r:v1-{driver}",
        digest="sha256:" + "a" * 64,
        media_type="application/vnd.oci.image.manifest.v1+json",
        source_size=1,
        target_size=2,
        layers=1,
    )


def test_a_partly_failed_run_lists_pushed_and_failed_targets_in_driver_order():
    result = ConversionResult(
        source="h/r:v1",
        source_digest="sha256:" + "b" * 64,
        targets=[_pushed("estargz"), _pushed("nydus")],
        failed=[TargetFailure(driver="zstdchunked", reference="h/r:v1-zstd", reason="DriverError: twice")],
        seconds={},
    )
    drivers = ["estargz", "zstdchunked", "nydus"]
    listed = _target_status("FAILED", result.failure_message(), drivers, {}, result)
    assert [(t.driver, t.status) for t in listed] == [
        ("estargz", "COMPLETED"),
        ("zstdchunked", "FAILED"),
        ("nydus", "COMPLETED"),
    ]
    assert listed[1].reason == "DriverError: twice" and listed[1].target == "h/r:v1-zstd"
    assert listed[0].digest and not listed[0].reason
    assert "zstdchunked" in result.failure_message() and "pushed: estargz, nydus" in result.failure_message()


def test_without_a_result_every_target_has_the_run_status():
    names = {"estargz": "h/r:v1-esgz", "nydus": "h/r:v1-nydus"}
    listed = _target_status("FAILED", "BlobSizeMismatch: got 3 bytes", list(names), names, None)
    assert [(t.target, t.status, t.reason) for t in listed] == [
        ("h/r:v1-esgz", "FAILED", "BlobSizeMismatch: got 3 bytes"),
        ("h/r:v1-nydus", "FAILED", "BlobSizeMismatch: got 3 bytes"),
    ]
    processing = _target_status("PROCESSING", "", list(names), names, None)
    assert {t.status for t in processing} == {"PROCESSING"} and not any(t.reason for t in processing)
