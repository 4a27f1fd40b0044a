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
    └── DiskFull                  not enough space to hold a version
"""

from __future__ import annotations


class PackdistError(Exception):
    """packdist failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class UserError(PackdistError):
    """The request cannot be carried out as given."""


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


class RateLimited(UserError):
    """Too many attempts; try again later."""

    def __init__(self, message: str | None = None, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class IntegrityError(PackdistError):
    """Content does not match its digest or signature."""


class HashMismatch(IntegrityError):
    """Hash mismatch."""


class DecodeError(IntegrityError):
    """A chunk's encoded bytes cannot be decoded."""


class BadSignature(IntegrityError):
    """Manifest signature does not verify."""


class StoreError(PackdistError):
    """The database failed."""


class InvalidTransition(StoreError):
    """State transition not allowed."""


class TransferError(PackdistError):
    """Transfer failed."""


class ConnectError(TransferError):
    """Could not connect."""


class RemoteTimeout(TransferError):
    """No answer in time."""


class AuthError(TransferError):
    """Credential refused."""


class RemoteError(TransferError):
    """The remote side reported an error."""

    def __init__(self, message: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DiskFull(PackdistError):
    """Disk full."""
