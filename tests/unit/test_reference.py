import pytest

from accel.errors import InvalidReference
from accel.reference import Reference

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("nginx", "docker.io", "library/nginx", "latest", None),
        ("nginx:1.25", "docker.io", "library/nginx", "1.25", None),
        ("user/app", "docker.io", "user/app", "latest", None),
        ("index.docker.io/library/nginx", "docker.io", "library/nginx", "latest", None),
        ("host:5000/team/app:v1", "host:5000", "team/app", "v1", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000", "a/b/c", "t", None),
        (f"repo@{DIGEST}", "docker.io", "library/repo", None, DIGEST),
        (f"h.io/repo:tag@{DIGEST}", "h.io", "repo", "tag", DIGEST),
        ("[::1]:5000/x:y", "[::1]:5000", "x", "y", None),
    ],
)
def test_parse_normalises_like_docker(text, registry, repository, tag, digest):
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert Reference.parse(str(ref)) == ref  # str() round-trips


def test_identifier_prefers_digest():
    assert Reference.parse(f"h.io/r:t@{DIGEST}").identifier == DIGEST
    assert Reference.parse("h.io/r:t").identifier == "t"


@pytest.mark.parametrize(
    "text",
    ["", "UPPER/x:y/", "h.io/Repo", "h.io/r:bad tag", "h.io/r@sha256:short", "h.io/r:" + "t" * 200, "a b"],
)
def test_rejects_invalid(text):
    with pytest.raises(InvalidReference):
        Reference.parse(text)
