"""Which version of each package is active on this server: ``packages/NAME/current``, a
symbolic link to ``VERSION`` (relative, so the home can move), switched atomically.

The switch makes the new link under a temporary name beside it and renames it over
``current``: a reader (a service started from ``packages/app/current/bin``) sees the old
version or the new one, never neither. The folder is synced after the rename, so an
activation the site was told of survives a power cut. Only a version installed here (in
``installed.json`` with its tree in place) can be made active, and the active version is
not removed from under its users (:func:`refuse_removal_of_active`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass, replace

from packdist.agent.health_check import run_health_check
from packdist.agent.home import AgentHome
from packdist.core.fsutil import fsync_dir
from packdist.core.names import CURRENT, check_version
from packdist.errors import InvalidName, PackdistError, UserError
from packdist.protocol.messages import ActivateRequest

TEMPORARY_PREFIX = ".current-"  # packages/NAME/.current-<hex>: a link on its way in


@dataclass(frozen=True)
class Activated:
    package: str  # NAME@VERSION, now active
    previous: str | None  # the version active before (None: none was)
    checked: bool = False  # a health check was asked for, and passed (or was active already)


def active_version(home: AgentHome, name: str) -> str | None:
    """The version ``packages/NAME/current`` points to, if it is an installed version's."""
    link = home.packages / name / CURRENT
    try:
        target = os.readlink(link)
    except OSError:  # no link (or not a link)
        return None
    try:
        version = check_version(target)
    except InvalidName:
        return None  # not a link this agent made
    return version if (link.parent / version).is_dir() else None


def active_packages(home: AgentHome, held: dict[str, str]) -> dict[str, str]:
    """Of ``held`` (NAME@VERSION -> package id, as ``installed()`` says), the active
    versions (for the heartbeat): one look at each package's link."""
    names = {ref.partition("@")[0] for ref in held}
    active = {f"{name}@{v}" for name in names if (v := active_version(home, name)) is not None}
    return {ref: pid for ref, pid in held.items() if ref in active}


def activate(home: AgentHome, ref: str, package_id: str) -> Activated:
    """Make ``ref`` the active version of its package. Refused (the request is wrong, the
    same again fails) unless this agent holds that version with that package id."""
    name, _, version = ref.partition("@")
    if home.installed().get(ref) != package_id:
        raise UserError(f"{ref} is not installed on this agent: install it before activating")
    folder = home.packages / name
    previous = active_version(home, name)
    if previous == version:
        return Activated(ref, previous)
    temporary = folder / f"{TEMPORARY_PREFIX}{secrets.token_hex(8)}"
    try:
        os.symlink(version, temporary)
        os.rename(temporary, folder / CURRENT)
        fsync_dir(folder)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise PackdistError(f"cannot activate {ref}: {exc.strerror or exc}") from exc
    return Activated(ref, previous)


async def activate_checked(home: AgentHome, asked: ActivateRequest) -> Activated:
    """:func:`activate`, once the request's health check passed in the installed tree (a
    failure keeps the version active until now: the switch never happens). A version
    already active is not checked again: it is the one in use."""
    ref, name, version = asked.package, *asked.package.partition("@")[::2]
    if asked.check and active_version(home, name) != version:
        if home.installed().get(ref) != asked.package_id:
            raise UserError(f"{ref} is not installed on this agent: install it before activating")
        await run_health_check(
            home.packages / name / version, ref, list(asked.check), asked.check_timeout
        )
    done = await asyncio.to_thread(activate, home, ref, asked.package_id)
    return replace(done, checked=bool(asked.check))


def refuse_removal_of_active(home: AgentHome, ref: str) -> None:
    """The active version stays until another is activated: its users run from it."""
    name, _, version = ref.partition("@")
    if active_version(home, name) == version:
        raise UserError(
            f"{ref} is the active version of {name} on this agent: activate another version"
            " before removing it"
        )


def clear_leftovers(home: AgentHome) -> None:
    """Temporary links a crash left between making and renaming them."""
    for link in home.packages.glob(f"*/{TEMPORARY_PREFIX}*"):
        link.unlink(missing_ok=True)
