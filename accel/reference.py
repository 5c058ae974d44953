"""Image references, normalised the way Docker does.

nginx                      -> docker.io/library/nginx:latest
host:5000/team/app:v1      -> host:5000/team/app:v1
repo@sha256:...            -> digest reference (no tag)
repo:tag@sha256:...        -> both; the digest wins when resolving
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from accel.errors import InvalidReference

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
# The distribution reference grammar, ASCII only (Python's \w would admit any Unicode letter).
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# Only the registered algorithms, lower-case hex of their exact length: `@md5:…`, upper-case or
# wrong-length sha256 are refused here rather than sent to a registry.
_DIGEST_RE = re.compile(r"^(?:sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
MAX_NAME_LENGTH = 255  # registry host + "/" + repository, as distribution's NameTotalLengthMax
_HOST_RE = re.compile(r"^(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$")


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        original = text
        text = text.strip()
        if not text or len(text) > 4096 or any(c.isspace() for c in text):
            raise InvalidReference(f"invalid image reference {original!r}")
        for scheme in ("https://", "http://"):
            if text.startswith(scheme):
                text = text[len(scheme) :]
        name, digest = text, None
        if "@" in text:
            name, digest = text.split("@", 1)
            if not _DIGEST_RE.match(digest):
                raise InvalidReference(f"invalid digest in reference {original!r}")
        tag = None
        slash = name.rfind("/")
        colon = name.rfind(":")
        if colon > slash:
            name, tag = name[:colon], name[colon + 1 :]
            if not _TAG_RE.match(tag):
                raise InvalidReference(f"invalid tag {tag!r} in reference {original!r}")
        first, _, rest = name.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
            registry, path = first, rest
        else:
            registry, path = DEFAULT_REGISTRY, name
        if registry == "index.docker.io":
            registry = DEFAULT_REGISTRY
        if registry == DEFAULT_REGISTRY and "/" not in path:
            path = f"library/{path}"
        if not _HOST_RE.match(registry):
            raise InvalidReference(f"invalid registry host {registry!r} in reference {original!r}")
        if not _PATH_RE.match(path):
            raise InvalidReference(f"invalid repository {path!r} in reference {original!r}")
        if len(registry) + 1 + len(path) > MAX_NAME_LENGTH:
            raise InvalidReference(
                f"repository name {registry}/{path[:40]}… is longer than {MAX_NAME_LENGTH} characters"
            )
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        return cls(registry=registry, repository=path, tag=tag, digest=digest)

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def identifier(self) -> str:
        """What goes after /manifests/: the digest if there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_tag(self, tag: str) -> Reference:
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        return replace(self, digest=digest)

    def with_repository(self, repository: str, registry: str | None = None) -> Reference:
        return replace(self, repository=repository, registry=registry or self.registry)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out
