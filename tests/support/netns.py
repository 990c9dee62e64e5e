"""Private networks for fault tests: each appliance in its own network namespace.

A ``Fabric`` takes one unused ``10.X.0.0/16`` (X chosen so no interface here uses it), puts the
hub's address ``10.X.255.1/32`` on the host's loopback, and gives each appliance a namespace
joined to the host by a veth pair on its own /30 (host ``.1``, appliance ``.2``). The only route
inside a namespace is to the hub's address, so nothing there can reach anything else.

Faults on a ``Link``:

- ``down()``/``up()``: the veth's host end goes down (carrier lost on both ends): the box is
  cut off from everything, its drones included;
- ``cut_hub()``/``restore_hub()``: nftables inside the namespace drops every packet to or
  from the hub's address (the cellular uplink is gone; the drones' local link still works);
- ``degrade(loss, jitter_ms, hub)``: nftables inside the namespace drops that share of packets
  in each direction, at random, and every packet is delayed by up to ``jitter_ms``: with netem
  where the kernel has it; where it does not (this kernel: ``tc qdisc add ... netem`` answers
  "Specified qdisc kind is unknown"), the box's TCP connections to the hub's ports are sent
  (nftables DNAT inside the namespace) through a userspace relay on the host that holds each
  chunk for a random 0..``jitter_ms`` (``tests.support.jitter``); connections open at that
  moment are reset (``ss -K``) so that they come back through it. ``degrade`` returns what it
  applied.

Everything is removed by ``Fabric.close()``; names carry the subnet octet, so a crash leaves
nothing that a later run can collide with (it picks another octet).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field

from tests.support.jitter import JitterRelay


class NetnsUnavailable(RuntimeError):
    """This machine cannot make namespaces (not root, no ``ip netns``, no veth)."""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc


@dataclass
class Link:
    """One appliance's network namespace and its veth to the host."""

    netns: str
    host_if: str
    host_addr: str
    addr: str
    applied: list[str] = field(default_factory=list)
    relay: JitterRelay | None = None

    def prefix(self) -> list[str]:
        """Run a command inside the namespace: ``[*link.prefix(), "python", ...]``."""
        return ["ip", "netns", "exec", self.netns]

    def down(self) -> None:
        sh("ip", "link", "set", self.host_if, "down")

    def up(self) -> None:
        sh("ip", "link", "set", self.host_if, "up")

    def cut_hub(self, hub_addr: str) -> None:
        self._nft("spokecut", f"ip daddr {hub_addr} drop", f"ip saddr {hub_addr} drop")

    def restore_hub(self) -> None:
        sh(*self.prefix(), "nft", "delete", "table", "inet", "spokecut", check=False)

    def _nft(self, table: str, output_rule: str, input_rule: str) -> None:
        rules = "\n".join([
            f"table inet {table} {{",
            "  chain input { type filter hook input priority 0; policy accept;",
            f"    {input_rule}",
            "  }",
            "  chain output { type filter hook output priority 0; policy accept;",
            f"    {output_rule}",
            "  }",
            "}",
        ])
        subprocess.run([*self.prefix(), "nft", "-f", "-"], input=rules, text=True, check=True,
                       capture_output=True, timeout=30)

    def degrade(self, loss: float = 0.3, jitter_ms: int = 500,
                hub: tuple[str, list[int]] | None = None) -> list[str]:
        """Random loss both ways and jitter; ``hub`` (address, TCP ports) is where the relay
        leads when the kernel has no netem. Returns what was applied."""
        self.heal()
        percent = round(loss * 100)
        drop = f"numgen random mod 100 < {percent} drop"
        self._nft("spokefault", drop, drop)
        self.applied = [f"loss {percent}% each way (nftables)"]
        if not jitter_ms:
            return self.applied
        veth = f"{self.netns}-v"
        netem = sh(*self.prefix(), "tc", "qdisc", "add", "dev", veth, "root", "netem", "delay",
                   f"{jitter_ms // 2}ms", f"{jitter_ms // 2}ms", check=False)
        if netem.returncode == 0:
            self.applied.append(f"delay {jitter_ms // 2}±{jitter_ms // 2} ms (netem)")
        elif hub is not None:
            self._relay_through(hub[0], hub[1], jitter_ms)
            self.applied.append(f"delay 0-{jitter_ms} ms per chunk to and from the hub "
                                "(userspace TCP relay: no netem on this kernel)")
        return self.applied

    def _relay_through(self, hub_addr: str, ports: list[int], jitter_ms: int) -> None:
        self.relay = JitterRelay(self.host_addr, hub_addr, ports, jitter_ms / 1000)
        rules = [f"    ip daddr {hub_addr} tcp dport {port} dnat to {self.host_addr}:{relay}"
                 for port, relay in self.relay.ports.items()]
        text = "\n".join(["table ip spokejitter {",
                          "  chain output { type nat hook output priority -100; policy accept;",
                          *rules, "  }", "}"])
        subprocess.run([*self.prefix(), "nft", "-f", "-"], input=text, text=True, check=True,
                       capture_output=True, timeout=30)
        # Connections already open would keep their direct path (NAT applies to new ones).
        sh(*self.prefix(), "ss", "-K", "dst", hub_addr, check=False)

    def heal(self) -> None:
        """Undo ``degrade`` (connections through the relay are reset and come back direct)."""
        sh(*self.prefix(), "nft", "delete", "table", "inet", "spokefault", check=False)
        sh(*self.prefix(), "nft", "delete", "table", "ip", "spokejitter", check=False)
        sh(*self.prefix(), "tc", "qdisc", "del", "dev", f"{self.netns}-v", "root", check=False)
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        self.applied = []


class Fabric:
    def __init__(self) -> None:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise NetnsUnavailable("network namespaces need root and iproute2")
        used = sh("ip", "-o", "-4", "addr", "show").stdout
        free = [x for x in range(16, 250) if f" 10.{x}." not in used]
        self.octet = random.choice(free)
        self.hub_addr = f"10.{self.octet}.255.1"
        self.links: list[Link] = []
        try:
            sh("ip", "addr", "add", f"{self.hub_addr}/32", "dev", "lo")
        except RuntimeError as exc:
            raise NetnsUnavailable(str(exc)) from exc

    def link(self) -> Link:
        """A new namespace whose only route leads to the hub's address."""
        i = len(self.links)
        base = f"10.{self.octet}.{i}"
        netns, host_if = f"spk{self.octet}n{i}", f"spk{self.octet}h{i}"
        link = Link(netns, host_if, f"{base}.1", f"{base}.2")
        self.links.append(link)
        try:
            sh("ip", "netns", "add", netns)
            sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", f"{netns}-v",
               "netns", netns)
            sh("ip", "addr", "add", f"{base}.1/30", "dev", host_if)
            sh("ip", "link", "set", host_if, "up")
            sh("ip", "-n", netns, "addr", "add", f"{base}.2/30", "dev", f"{netns}-v")
            sh("ip", "-n", netns, "link", "set", f"{netns}-v", "up")
            sh("ip", "-n", netns, "link", "set", "lo", "up")
            sh("ip", "-n", netns, "route", "add", f"{self.hub_addr}/32", "via", f"{base}.1")
        except RuntimeError as exc:
            raise NetnsUnavailable(str(exc)) from exc
        return link

    def close(self) -> None:
        for link in self.links:
            with contextlib.suppress(RuntimeError):
                sh("ip", "link", "del", link.host_if, check=False)
                sh("ip", "netns", "del", link.netns, check=False)
        sh("ip", "addr", "del", f"{self.hub_addr}/32", "dev", "lo", check=False)
        self.links = []
