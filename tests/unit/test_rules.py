from accel.plan import target_reference
from accel.reference import Reference

DIGEST = "sha256:" + "c" * 64


def test_tag_gets_suffix_in_same_repository():
    assert str(target_reference(Reference.parse("h:5000/lib/app:v1"), "-nydus")) == "h:5000/lib/app:v1-nydus"


def test_digest_only_source_is_named_from_digest_not_latest():
    t = target_reference(Reference.parse(f"h:5000/lib/app@{DIGEST}"), "-esgz")
    assert t.tag == f"sha256-{'c' * 64}-esgz"
    assert t.digest is None


def test_target_repository_override():
    t = target_reference(Reference.parse("h:5000/lib/app:v1"), "-z", repository="mirror/app")
    assert str(t) == "h:5000/mirror/app:v1-z"
