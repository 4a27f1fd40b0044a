"""Adding, replacing and removing operators in the site home (``packdist operator …``).

Each change reads ``operator.json``, changes one operator and writes the file again
(atomically, mode 0600) while holding an exclusive lock on ``operator.lock`` beside it, so
two commands run at once never lose each other's change. A change that is refused (a bad
name, an unknown role, a name taken or unknown) raises before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from packdist.errors import AlreadyExists, NotFound, UserError
from packdist.site.authority import HomeLock
from packdist.site.operator import (
    OperatorCredential,
    Operators,
    Role,
    check_name,
    load,
    save,
)

LOCK_NAME = "operator.lock"


def _current(home: Path, damaged_ok: bool = False) -> Operators:
    try:
        return load(home) or Operators({})
    except UserError:
        if not damaged_ok:
            raise
        return Operators({})


def add_operator(home: Path, name: str, role: Role) -> str:
    """Add operator ``name`` with ``role``; returns its credential (shown once)."""
    return set_operator(home, name, role, replace=False)


def set_operator(home: Path, name: str, role: Role, replace: bool, damaged_ok: bool = False) -> str:
    """Add operator ``name`` (``replace``: or give it a new credential and ``role`` if it
    exists); returns the new credential. ``damaged_ok``: a damaged file is replaced."""
    check_name(name)
    with HomeLock(home, LOCK_NAME):
        operators = _current(home, damaged_ok)
        if not replace and name in operators.by_name:
            raise AlreadyExists(
                f"operator {name} already exists ('operator reset {name}' gives"
                " it a new credential)"
            )
        made, password = OperatorCredential.make(name, role)
        save(home, Operators({**operators.by_name, name: made}))
    return password


def reset_operator(home: Path, name: str) -> tuple[OperatorCredential, str]:
    """A new credential for operator ``name`` (its role kept); the old credential and every
    session of it stop working. Returns the operator and the credential (shown once)."""
    with HomeLock(home, LOCK_NAME):
        operators, found = _existing(home, name)
        made, password = OperatorCredential.make(name, found.role)
        save(home, Operators({**operators.by_name, name: made}))
    return made, password


def remove_operator(home: Path, name: str) -> OperatorCredential:
    """Remove operator ``name``: its credential and every session of it stop working."""
    with HomeLock(home, LOCK_NAME):
        operators, found = _existing(home, name)
        save(home, Operators({k: v for k, v in operators.by_name.items() if k != name}))
    return found


def list_operators(home: Path) -> list[OperatorCredential]:
    return sorted(_current(home).by_name.values(), key=lambda o: o.name)


def _existing(home: Path, name: str) -> tuple[Operators, OperatorCredential]:
    """The operators, and operator ``name`` among them (NotFound naming those there are);
    the caller holds the lock."""
    check_name(name)
    operators = _current(home)
    found = operators.get(name)
    if found is None:
        raise NotFound(f"no operator {name}{_known(operators)}")
    return operators, found


def _known(operators: Operators) -> str:
    names = sorted(operators.by_name)
    if not names:
        return " (the site has none: 'packdist site operator-password' makes admin)"
    shown = ", ".join(names[:10]) + (" …" if len(names) > 10 else "")
    return f" (operators: {shown})"
