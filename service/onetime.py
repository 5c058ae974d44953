"""What accelctl and the warm local runner share about a one-time conversion request: the input check that
runs before any Prefect work, the exit code of each class of failure, and the one line a failure prints.

Only the standard library at module level: accelctl imports this before it knows whether the engine is
needed (the runner, when up, checks the request itself).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from accel.overrides import Overrides


class ExitCode(IntEnum):
    """accelctl's exit codes, one per class of failure (README "Exit codes"); stable for scripts."""

    OK = 0
    FAILED = 1  # convert: a driver failed (others may be pushed); check: the images differ
    USAGE = 2  # the command line, the config or an image reference is wrong (as acceld's refusals)
    NOT_FOUND = 4  # the image, tag, repository or local path does not exist
    DENIED = 5  # the registry refused our credentials (401) or this operation (403)
    UNREACHABLE = 6  # no connection to the registry, or it keeps failing (5xx, timeouts)
    REFUSED = 7  # the image cannot be converted as it is: a limit, a malformed image, a format refusal
    LOCAL_SERVICE = 8  # the local Prefect server or runner could not be started or reached
    BUG = 70  # an unexpected error: a bug in accel (the traceback is printed or logged)
    INTERRUPTED = 130  # Ctrl-C


# No dataclasses: importing them (and `inspect`) is a tenth of accelctl's start when the runner is up.
class Failure(NamedTuple):
    """An expected failure: its exit code and the one line that says what failed and why."""

    code: ExitCode
    message: str


class Checked:
    """The outcome of `check_request`: a failure (None when the request may run) and the config's
    warnings, which the caller shows on its stderr."""

    def __init__(
        self,
        failure: Failure | None = None,
        warnings: list[str] | None = None,
        overrides: Overrides | None = None,
    ) -> None:
        self.failure = failure
        self.warnings: list[str] = warnings or []
        self.overrides = overrides  # the request's credentials, TLS and platform flags, per host

    def __repr__(self) -> str:
        return f"Checked(failure={self.failure!r}, warnings={self.warnings!r})"


def exit_code_for(exc: BaseException) -> ExitCode:
    """The class of an engine error; anything that is no AccelError (nor a cancellation) is a bug."""
    from accel.cancel import Cancelled
    from accel.errors import (
        AccelError,
        ConfigError,
        DigestMismatch,
        DriverError,
        InvalidImage,
        InvalidReference,
        LimitExceeded,
        UnsupportedMediaType,
    )
    from accel.registry.errors import (
        AuthenticationError,
        Forbidden,
        NotFound,
        RegistryError,
        RegistryUnreachable,
        TransientRegistryError,
    )

    classes: list[tuple[type[BaseException], ExitCode]] = [
        (Cancelled, ExitCode.INTERRUPTED),
        (ConfigError, ExitCode.USAGE),
        (InvalidReference, ExitCode.USAGE),
        (NotFound, ExitCode.NOT_FOUND),
        (AuthenticationError, ExitCode.DENIED),
        (Forbidden, ExitCode.DENIED),
        (RegistryUnreachable, ExitCode.UNREACHABLE),
        (TransientRegistryError, ExitCode.UNREACHABLE),
        (LimitExceeded, ExitCode.REFUSED),
        (InvalidImage, ExitCode.REFUSED),
        (UnsupportedMediaType, ExitCode.REFUSED),
        (DigestMismatch, ExitCode.REFUSED),
        (DriverError, ExitCode.FAILED),
        (RegistryError, ExitCode.UNREACHABLE),  # another answer the registry should not have given
    ]
    for cls, code in classes:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, AccelError):
        return ExitCode.FAILED  # a conversion failure (e.g. some drivers failed, a timed-out run)
    return ExitCode.BUG


def is_expected(exc: BaseException) -> bool:
    return exit_code_for(exc) is not ExitCode.BUG


def one_line(text: str) -> str:
    """A message's lines joined: a failure is one line on stderr and in a run's state."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def describe_failure(exc: BaseException) -> Failure:
    """The exit code and one-line cause accelctl prints: an accel error as it is, anything else named as a
    bug (with its type: its traceback is printed or logged where it happened)."""
    code = exit_code_for(exc)
    if code is ExitCode.BUG:
        return Failure(code, f"{type(exc).__name__}: {one_line(str(exc))} (this is a bug in accel)")
    return Failure(code, one_line(str(exc)))


def check_request(
    source: str,
    config: str,
    drivers: list[str] | None,
    target: str | None,
    access: Mapping[str, Any] | None = None,
) -> Checked:
    """Config, reference, drivers, local paths and the work dir checked before anything Prefect runs: a bad
    call fails in a fraction of a second with its cause, and starts no server. `access`: the command line's
    credentials, TLS and platform flags (`request_overrides`)."""
    from accel.config import check_file
    from accel.errors import AccelError
    from accel.plan import plan_conversion, with_target
    from accel.transports import parse_location

    checked = Checked()
    try:
        config_checked = check_file(config)
        checked.warnings = list(config_checked.warnings)
        settings = config_checked.settings
        source_location = parse_location(source)
        if (missing := _missing_source(source_location.path, source)) is not None:
            checked.failure = missing
            return checked
        target_location = parse_location(target) if target else None
        reference = source_location.reference
        named = reference if reference.tag or reference.digest else reference.with_tag("latest")
        plan = plan_conversion(settings, named, drivers or None)
        with_target(plan, target_location.reference if target_location else None)
        checked.overrides = request_overrides(source, target, access)
    except AccelError as exc:
        checked.failure = describe_failure(exc)
        return checked
    checked.failure = _unwritable_target(
        target_location.path if target_location else None, target or ""
    ) or _unwritable_work_dir(settings.provider.work_dir, config)
    return checked


# accelctl's flags in a request's `access` (values as given; a password already asked for on a terminal).
ACCESS_KEYS = ("src_creds", "dest_creds", "src_tls_verify", "dest_tls_verify", "platform")


def request_overrides(source: str, target: str | None, access: Mapping[str, Any] | None) -> Overrides | None:
    """The credentials and TLS flags bound to the registry hosts they are for (the source's; the target's,
    which is the source's host without `--target`), and the platform. One host has one account: the source
    and target on one host take the one given, and refuse two different ones."""
    from accel.errors import ConfigError
    from accel.overrides import HostAccess, Overrides
    from accel.transports import is_local, parse_location

    access = {k: v for k, v in (access or {}).items() if v is not None}
    if not access:
        return None
    source_ref = parse_location(source).reference
    target_ref = parse_location(target).reference if target else source_ref
    hosts: dict[str, HostAccess] = {}
    for side, ref, text in (("src", source_ref, source), ("dest", target_ref, target or source)):
        creds, verify = access.get(f"{side}_creds"), access.get(f"{side}_tls_verify")
        if creds is None and verify is None:
            continue
        if is_local(ref):
            flag = f"--{side}-creds" if creds is not None else f"--{side}-tls-verify"
            raise ConfigError(f"{flag}: {text} is not in a registry")
        try:
            given = HostAccess.of_credentials(creds, verify)
        except ConfigError as exc:
            raise ConfigError(f"--{side}-creds: {exc}") from None
        earlier = hosts.get(ref.registry)
        if earlier is not None:
            if None not in (earlier.auth, given.auth) and earlier.auth != given.auth:
                raise ConfigError(
                    f"--src-creds and --dest-creds name two accounts for {ref.registry}; accel uses one "
                    "account per registry host: give one of them"
                )
            if None not in (earlier.tls_verify, given.tls_verify) and earlier.tls_verify != given.tls_verify:
                raise ConfigError(f"--src-tls-verify and --dest-tls-verify disagree for {ref.registry}")
            given = HostAccess(
                earlier.auth or given.auth,
                earlier.tls_verify if earlier.tls_verify is not None else given.tls_verify,
            )
        hosts[ref.registry] = given
    return Overrides(hosts=hosts, platform=access.get("platform"))


def _missing_source(path: Path | None, source: str) -> Failure | None:
    if path is None or path.exists():
        return None
    return Failure(ExitCode.NOT_FOUND, f"{source}: no such file or directory: {path}")


def _unwritable_target(path: Path | None, target: str) -> Failure | None:
    """A layout or archive target's missing directories are created: the nearest existing one must be a
    writable directory."""
    if path is None:
        return None
    existing = _nearest_existing(path.absolute().parent)
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return None
    return Failure(ExitCode.USAGE, f"target {target}: cannot create it: {existing} {_why_unusable(existing)}")


def _unwritable_work_dir(work_dir: Path, config: str) -> Failure | None:
    """provider.work_dir holds the content store: it must exist or be creatable, and be writable."""
    existing = _nearest_existing(work_dir)
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return None
    return Failure(
        ExitCode.USAGE,
        f"{config}: provider.work_dir {work_dir} cannot be used: {existing} {_why_unusable(existing)} "
        "(set provider.work_dir to a writable directory)",
    )


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _why_unusable(path: Path) -> str:
    return "is not a directory" if not path.is_dir() else "is not writable"
