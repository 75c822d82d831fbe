"""Test aids for processes on the loopback: `ray start` that keeps 127.0.0.1, and what a set of pids listens on.

Run as ``python tests/loopback.py start ...``: Ray's own CLI, except that it does not replace a node address of
127.0.0.1 by the machine's address. Ray does that for every node that joins a cluster (it assumes other machines
must reach it); a test cluster of several nodes on one machine must stay on the loopback, and Ray's nodes listen
on 127.0.0.1 only when their node address is exactly that.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path


def listening_hosts(pids: set[int]) -> dict[str, set[int]]:
    """The addresses the TCP sockets of ``pids`` listen on -> the pids listening there (read from /proc)."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = pid
        except OSError:
            continue
    out: dict[str, set[int]] = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A" or f[9] not in inodes:  # 0A: LISTEN
                continue
            out.setdefault(_host(f[1].split(":")[0], v6), set()).add(inodes[f[9]])
    return out


def _host(hex_addr: str, v6: bool) -> str:
    """A /proc/net address in hex (little-endian 32-bit words) as text; an IPv4-mapped IPv6 one as IPv4."""
    raw = bytes.fromhex(hex_addr)
    b = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if not v6:
        return str(ipaddress.IPv4Address(b))
    addr = ipaddress.IPv6Address(b)
    return str(addr.ipv4_mapped or addr)


def on_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


if __name__ == "__main__":
    import ray._private.services as services

    services.resolve_ip_for_localhost = lambda host: host  # keep 127.0.0.1 as given
    from ray.scripts.scripts import main

    sys.exit(main())
