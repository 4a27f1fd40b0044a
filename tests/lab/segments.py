"""A lab of several network segments: one bridge per segment, and hosts with a leg on one or
more of them. A host with legs on two segments forwards nothing between them (its
``ip_forward`` is 0, set so at build), so a host on one segment reaches a host on another
only if that host has a leg on its segment too: a branch site's servers truly cannot reach
headquarters.

::

    pdlab-hq                 pdlab-br                      pdlab-dp1 ...
      pdh-hq-wan       pdh-br-wan   pdh-br-lan               pdh-dp1-lan
         |                 |            |                        |
      pdb-hq-wan       pdb-br-wan   pdb-br-lan               pdb-dp1-lan
         +-- pdbr-wan -----+            +------ pdbr-lan --------+       (in pdlab-sw)

Every segment has its own /24 in 10.77.0.0/16; names keep the ``pdlab-``/``pd`` prefixes
:func:`tests.lab.netns.clean_leftovers` looks for, and fit Linux's 15 characters.
"""

from __future__ import annotations

import ipaddress

from tests.lab.netns import PREFIX, SWITCH_NS, Lab, ip

LAB_NET = ipaddress.ip_network("10.77.0.0/16")
IFNAMSIZ = 15  # the longest interface name Linux takes

#: host: [(segment, address), ...]
Legs = dict[str, list[tuple[str, str]]]


class SegmentedLab(Lab):
    """Hosts with legs on named segments; the cable methods (``unplug``, ``shape``,
    ``link_bytes`` …) name the leg's segment for a host with more than one."""

    def __init__(self, legs: Legs, prefixlen: int = 24) -> None:
        self.legs = {host: dict(pairs) for host, pairs in legs.items()}
        self.prefixlen = prefixlen
        for host, pairs in self.legs.items():
            if not pairs:
                raise ValueError(f"{host}: no leg on any segment")
            for segment, addr in pairs.items():
                if ipaddress.ip_address(addr) not in LAB_NET:
                    raise ValueError(f"{host}: {addr} is outside the lab network {LAB_NET}")
                if len(self.leg_veth(host, segment)) > IFNAMSIZ:
                    raise ValueError(f"{host} on {segment}: names too long for an interface")
                if len(self.segment_bridge(segment)) > IFNAMSIZ:
                    raise ValueError(f"segment name {segment!r} too long for a bridge name")
        # Lab.__init__ checks one /24: set its state here instead. Lab.hosts, the one-segment
        # view, is each host's first leg.
        self.hosts = {host: next(iter(pairs.values())) for host, pairs in self.legs.items()}
        self._lock: int | None = None
        self.up = False

    # Names.
    @staticmethod
    def leg_veth(host: str, segment: str) -> str:
        return f"pdh-{host}-{segment}"

    @staticmethod
    def leg_port(host: str, segment: str) -> str:
        return f"pdb-{host}-{segment}"

    @staticmethod
    def segment_bridge(segment: str) -> str:
        return f"pdbr-{segment}"

    def segments(self) -> list[str]:
        return list(dict.fromkeys(s for pairs in self.legs.values() for s in pairs))

    def _leg(self, host: str, segment: str | None) -> str:
        legs = self.legs[host]
        if segment is None:
            if len(legs) > 1:
                raise ValueError(f"{host} has legs on {', '.join(legs)}: name the segment")
            return next(iter(legs))
        if segment not in legs:
            raise ValueError(f"{host} has no leg on segment {segment}")
        return segment

    def addr(self, host: str, segment: str | None = None) -> str:
        return self.legs[host][self._leg(host, segment)]

    def cable_addr(self, host: str, segment: str) -> str:
        return self.addr(host, segment)

    def url(self, host: str, port: int, segment: str | None = None) -> str:
        return f"https://{self.addr(host, segment)}:{port}"

    def cable(self, host: str, segment: str | None = None) -> tuple[str, str, str]:
        leg = self._leg(host, segment)
        return self.ns(host), self.leg_veth(host, leg), self.leg_port(host, leg)

    def forwarding(self, host: str) -> bool:
        """Whether ``host`` routes packets between its legs (never, in this lab)."""
        out = self.exec(host, "cat", "/proc/sys/net/ipv4/ip_forward").stdout
        return out.strip() != "0"

    # Life cycle.
    def _build(self) -> None:
        sw = SWITCH_NS
        ip("netns", "add", sw)
        ip("-n", sw, "link", "set", "lo", "up")
        for segment in self.segments():
            ip("-n", sw, "link", "add", self.segment_bridge(segment), "type", "bridge")
            ip("-n", sw, "link", "set", self.segment_bridge(segment), "up")
        for host, legs in self.legs.items():
            ns = self.ns(host)
            assert ns.startswith(PREFIX)
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            # A new namespace does not forward; say so, rather than trust a default.
            self.exec(host, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
            for segment, addr in legs.items():
                inside, port = self.leg_veth(host, segment), self.leg_port(host, segment)
                # Both ends made in their namespaces, as in Lab: none in the root one.
                ip("link", "add", inside, "netns", ns, "type", "veth",
                   "peer", "name", port, "netns", sw)  # fmt: skip
                ip("-n", sw, "link", "set", port, "master", self.segment_bridge(segment))
                ip("-n", sw, "link", "set", port, "up")
                ip("-n", ns, "addr", "add", f"{addr}/{self.prefixlen}", "dev", inside)
                ip("-n", ns, "link", "set", inside, "up")
