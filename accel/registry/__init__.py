"""Registry access: the only code in accel that speaks HTTP to registries.

client = RegistryClient({"127.0.0.1:5000": HostConfig()})
desc = client.resolve(Reference.parse("127.0.0.1:5000/app:v1"))

Consumers type their client with the protocols of `accel.registry.interfaces` (`Registry` has every
verb); `accel.registry.memory.MemoryRegistry` implements the same over dicts, for tests.
"""

from accel.registry.auth import Credential, DockerConfig
from accel.registry.client import HostConfig, RegistryClient, is_loopback_host, uses_plain_http
from accel.registry.errors import (
    AuthenticationError,
    BlobSizeMismatch,
    Forbidden,
    NotFound,
    RegistryError,
    RegistryUnreachable,
    TransientRegistryError,
    is_transient,
)
from accel.registry.interfaces import Registry

__all__ = [
    "AuthenticationError",
    "BlobSizeMismatch",
    "Credential",
    "DockerConfig",
    "Forbidden",
    "HostConfig",
    "NotFound",
    "Registry",
    "RegistryClient",
    "RegistryError",
    "RegistryUnreachable",
    "TransientRegistryError",
    "is_loopback_host",
    "is_transient",
    "uses_plain_http",
]
