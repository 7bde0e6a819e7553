"""The machine's listening TCP sockets, read from the kernel's socket table (/proc/net/tcp*), with
the processes that hold them: the security tests look, they never connect to another address."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

LISTEN = "0A"


@dataclass(frozen=True)
class Listener:
    address: str
    port: int
    pid: int | None
    command: str

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback


def _address(hex_ip: str) -> str:
    raw = bytes.fromhex(hex_ip)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))  # four host-order 32-bit words
    ip = ipaddress.IPv6Address(words)
    return str(ip.ipv4_mapped or ip)


def _owners() -> dict[int, tuple[int, str]]:
    owners: dict[int, tuple[int, str]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owners[int(target[8:-1])] = (int(proc.name), command[:200])
        except OSError:
            continue
    return owners


def listeners(pids: set[int] | None = None) -> list[Listener]:
    """Every listening TCP socket (of ``pids`` when given)."""
    owners = _owners()
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != LISTEN:
                continue
            ip, port = fields[1].split(":")
            pid, command = owners.get(int(fields[9]), (None, ""))
            if pids is None or pid in pids:
                found.append(Listener(_address(ip), int(port, 16), pid, command))
    return found
