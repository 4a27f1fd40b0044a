"""The one exception root of packdist.

Every error packdist raises on purpose derives from :class:`PackdistError`. Errors from
drivers, HTTP and the operating system are translated at the boundary, the original kept
as ``__cause__``::

    PackdistError
    ├── UserError                 a mistake in what the user asked (exit 2, one line)
    │   ├── InvalidName           bad package name, version or server name
    │   ├── TreeRefused           a source tree packdist will not import
    │   ├── NotFound              unknown package, server, job
    │   ├── AlreadyExists         site home taken, package version with other content, ...
    │   ├── NoTargets             a job with no target servers
    │   ├── Forbidden             the credential is good, its role may not do this
    │   └── RateLimited           too many attempts (password guesses) for now
    ├── IntegrityError            content does not match its digest or signature
    │   ├── HashMismatch          a chunk's bytes do not hash to its digest
    │   ├── DecodeError           a chunk's encoded bytes (zstd, delta) do not decode
    │   └── BadSignature          a manifest's signature does not verify
    ├── StoreError                the database refused or failed
    │   └── InvalidTransition     a state change the transition table forbids
    ├── TransferError             talking to another part failed
    │   ├── ConnectError          could not connect (refused, unreachable, timed out)
    │   ├── RemoteTimeout         connected, but no answer in time
    │   ├── AuthError             the credential was refused
    │   └── RemoteError           the other side answered with an error
    ├── Busy                      the other side is busy with the same thing: try again
    ├── DiskFull                  not enough space to hold a version
    └── InternalError             a bug in packdist, said in words rather than a crash

Every error also carries its :class:`ErrorKind`, which travels with a failed attempt (to
the agent's answer, the store's ``error_kind`` column and the views) so that the retry
policy and what operators see never guess from the words.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    TRANSIENT = "transient"  # the network, a timeout, a busy or restarting peer: try again
    INTEGRITY = "integrity"  # content that does not match its digest or signature
    AUTH = "auth"  # a credential was refused
    DISK = "disk"  # not enough space on the server
    REFUSED = "refused"  # the request itself is wrong (unknown, invalid): the same again fails
    HEALTH = "health"  # the version installed but failed its health check there
    INTERNAL = "internal"  # a bug in packdist


class PackdistError(Exception):
    """packdist failed."""

    kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class UserError(PackdistError):
    """The request cannot be carried out as given."""

    kind = ErrorKind.REFUSED


class InvalidName(UserError):
    """Invalid name."""


class TreeRefused(UserError):
    """The source tree cannot be imported."""


class NotFound(UserError):
    """Not found."""


class AlreadyExists(UserError):
    """Already exists."""


class NoTargets(UserError):
    """A job needs at least one target server."""


class Forbidden(UserError):
    """The credential is good, but its role may not do this."""


class RateLimited(UserError):
    """Too many attempts; try again later."""

    def __init__(self, message: str | None = None, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class IntegrityError(PackdistError):
    """Content does not match its digest or signature."""

    kind = ErrorKind.INTEGRITY


class HashMismatch(IntegrityError):
    """Hash mismatch."""

    def __init__(self, message: str | None = None, digest: str | None = None) -> None:
        super().__init__(message)
        self.digest = digest  # the hex digest the content should have had, when known


class DecodeError(IntegrityError):
    """A chunk's encoded bytes cannot be decoded."""

    def __init__(self, message: str | None = None, digest: str | None = None) -> None:
        super().__init__(message)
        self.digest = digest  # the hex digest of the chunk that would not decode, when known


class BadSignature(IntegrityError):
    """Manifest signature does not verify."""


class StoreError(PackdistError):
    """The database failed."""

    kind = ErrorKind.TRANSIENT


class InvalidTransition(StoreError):
    """State transition not allowed."""


class TransferError(PackdistError):
    """Transfer failed."""

    kind = ErrorKind.TRANSIENT


class ConnectError(TransferError):
    """Could not connect."""


class RemoteTimeout(TransferError):
    """No answer in time."""


class AuthError(TransferError):
    """Credential refused."""

    kind = ErrorKind.AUTH


class RemoteError(TransferError):
    """The remote side reported an error."""

    def __init__(
        self,
        message: str | None = None,
        status: int | None = None,
        kind: ErrorKind = ErrorKind.TRANSIENT,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind  # what the other side said its error was (transient if it did not)


class Overloaded(RemoteError):
    """The other side shed this call (503 with Retry-After): wait that long, then again."""

    def __init__(self, message: str | None = None, retry_after: float = 1.0) -> None:
        super().__init__(message, status=503)
        self.retry_after = retry_after


class Busy(PackdistError):
    """Busy: try again shortly."""

    kind = ErrorKind.TRANSIENT


class DiskFull(PackdistError):
    """Disk full."""

    kind = ErrorKind.DISK


class HealthCheckFailed(PackdistError):
    """The health check failed."""

    kind = ErrorKind.HEALTH


class InternalError(PackdistError):
    """Internal error."""


def kind_named(word: object) -> ErrorKind:
    """The kind a peer reported in words; an unknown or missing word reads as transient (an
    older agent that sends none is retried, as it always was)."""
    try:
        return ErrorKind(str(word))
    except ValueError:
        return ErrorKind.TRANSIENT
