"""Which servers an operator aims at, by one of: names, a group, every server, a child
site's servers. The command line (``--to``, ``--group``, ``--all``, ``--site``) and the
dashboard's forms both name targets so; the words of what is wrong are said once, here."""

from __future__ import annotations

from packdist.core.names import check_reported_name  # CHILD/SERVER too
from packdist.errors import NoTargets, NotFound
from packdist.store.base import Store


def resolve_targets(
    store: Store,
    names: list[str] | None = None,
    group: str | None = None,
    every: bool = False,
    child: str | None = None,
) -> list[str]:
    """The servers named by exactly one of the ways (the caller checked it is one);
    NoTargets or NotFound, in words, when what is named has no servers."""
    if names is not None:
        targets = [check_reported_name(s.strip()) for s in names if s.strip()]
        if not targets:
            raise NoTargets("the list names no server")
        return targets
    if group:
        found = store.servers_in_group(group)
        if not found:
            raise NoTargets(f"group {group} has no servers")
        return found
    if child:
        if store.child_site(child) is None:
            raise NotFound(f"no child site named {child} (see 'packdist site children')")
        found = [n for n in store.server_names() if n.startswith(f"{child}/")]
        if not found:
            raise NoTargets(f"child site {child} has reported no servers yet")
        return found
    assert every
    found = store.server_names()
    if not found:
        raise NoTargets("there are no servers (add one with 'packdist server add')")
    return found
