"""Precise exceptions for everything the engine can refuse or fail at."""


class AccelError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigError(AccelError):
    """The configuration is invalid; the message says which field and why."""


class InvalidReference(AccelError):
    """An image reference cannot be parsed."""


class DigestMismatch(AccelError):
    """Content read from somewhere does not hash to the digest that named it."""

    def __init__(self, expected: str, actual: str, what: str = "content") -> None:
        super().__init__(f"{what}: digest mismatch, expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class UnsupportedMediaType(AccelError):
    """A manifest, index or layer has a media type we cannot handle."""


class InvalidImage(AccelError):
    """The source image is malformed (bad JSON, inconsistent config, broken tar)."""


class DriverError(AccelError):
    """A driver failed to convert a layer or finish an image."""


class LimitExceeded(AccelError):
    """A configured limit (`converter.limits.*`, named in the message) stopped the work."""
