"""Network facts (interfaces, InfiniBand/RoCE ports, GPU topology) and the live probes the checks
use (name resolution, port bind/connect, NCCL-style interface lists).

Linux only, read from /sys and /proc with the standard library: no `ip`/`ibstat` binaries or
psutil, which slim containers often lack.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import shutil
import socket
import struct
import subprocess

from dist_llm.log import get_logger

log = get_logger(__name__)

_SIOCGIFADDR = 0x8915  # linux/sockios.h: an interface's (primary) IPv4 address
_SYS_NET = "/sys/class/net"
_SYS_IB = "/sys/class/infiniband"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def _ipv4(name: str) -> list[str]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
        except OSError:  # EADDRNOTAVAIL: the interface has no IPv4 address
            return []
    return [socket.inet_ntoa(packed[20:24])]


def _ipv6_by_interface() -> dict[str, list[str]]:
    """/proc/net/if_inet6 lines: address (32 hex digits), index, prefix, scope, flags, name."""
    out: dict[str, list[str]] = {}
    for line in (_read("/proc/net/if_inet6") or "").splitlines():
        fields = line.split()
        if len(fields) == 6:
            out.setdefault(fields[5], []).append(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(fields[0])))
    return out


def interfaces() -> list[dict]:
    """Every network interface: name, state, MTU, link speed (Mb/s, None when the driver does not
    say) and its IPv4/IPv6 addresses."""
    ipv6 = _ipv6_by_interface()
    out = []
    for _, name in sorted(socket.if_nameindex()):
        speed = _read(f"{_SYS_NET}/{name}/speed")
        mtu = _read(f"{_SYS_NET}/{name}/mtu")
        out.append(
            {
                "name": name,
                "state": _read(f"{_SYS_NET}/{name}/operstate"),
                "mtu": int(mtu) if mtu else None,
                "speed_mbps": int(speed) if speed and int(speed) > 0 else None,
                "ipv4": _ipv4(name),
                "ipv6": ipv6.get(name, []),
            }
        )
    return out


def infiniband() -> list[dict]:
    """One entry per InfiniBand/RoCE/EFA port: device, port, state (ACTIVE/DOWN...), rate,
    link layer (InfiniBand, or Ethernet for RoCE) and the network interface it backs, if any."""
    if not os.path.isdir(_SYS_IB):
        return []
    out = []
    for dev in sorted(os.listdir(_SYS_IB)):
        netdevs = (
            sorted(os.listdir(f"{_SYS_IB}/{dev}/device/net"))
            if os.path.isdir(f"{_SYS_IB}/{dev}/device/net")
            else []
        )
        ports = f"{_SYS_IB}/{dev}/ports"
        for port in sorted(os.listdir(ports)) if os.path.isdir(ports) else []:
            path = f"{ports}/{port}"
            state = _read(f"{path}/state") or ""  # e.g. "4: ACTIVE"
            out.append(
                {
                    "device": dev,
                    "port": int(port),
                    "state": state.split(":")[-1].strip(),
                    "rate": _read(f"{path}/rate"),
                    "link_layer": _read(f"{path}/link_layer"),
                    "netdev": ",".join(netdevs) or None,
                }
            )
    return out


def gpudirect_rdma() -> bool:
    """Whether the kernel module that lets the NIC read GPU memory directly is loaded (without it,
    or DMA-BUF, NCCL stages inter-node traffic through host memory)."""
    return any(os.path.isdir(f"/sys/module/{m}") for m in ("nvidia_peermem", "nv_peer_mem"))


def gpu_topology() -> str | None:
    """`nvidia-smi topo -m`: which GPU pairs talk over NVLink (NV#) vs PCIe/SMP, and NIC affinity."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        proc = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("nvidia-smi topo -m failed: %s", e)
        return None
    return proc.stdout.rstrip() if proc.returncode == 0 else None


def resolve(host: str) -> list[str]:
    """The addresses `host` resolves to (raises OSError when it does not)."""
    return sorted({info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)})


def is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address.split("%")[0]).is_loopback


def is_local(addresses: list[str], ifaces: list[dict]) -> bool:
    """True when any of `addresses` belongs to this host (loopback counts)."""
    mine = {a for i in ifaces for a in i["ipv4"] + i["ipv6"]}
    return any(is_loopback(a) or a.split("%")[0] in mine for a in addresses)


def bind_error(port: int) -> str | None:
    """None when a server could listen on `port` on all interfaces here (as torchrun's store does),
    else why not. SO_REUSEADDR like the store, so a recently closed port in TIME_WAIT counts as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            s.listen(1)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return "in use"
            return e.strerror or str(e)
    return None


def connect_result(host: str, port: int, timeout_s: float = 2.0) -> str:
    """'open', 'refused' (the host answered, nothing listens), 'timeout' (nothing answered: a
    firewall that drops, or a wrong address) or the socket error."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except (socket.timeout, TimeoutError):
        return "timeout"
    except OSError as e:
        return e.strerror or str(e)


def match_interface_list(spec: str, names: list[str], prefix: bool) -> list[str]:
    """The names an NCCL-style list selects: comma-separated entries, `^` in front excludes the
    entries, `=` in front means exact names; otherwise entries are prefixes (NCCL_SOCKET_IFNAME,
    NCCL_IB_HCA) or exact names (`prefix=False`, GLOO_SOCKET_IFNAME). `:port` suffixes are ignored."""
    spec = spec.strip()
    exclude = spec.startswith("^")
    spec = spec.lstrip("^")
    exact = not prefix or spec.startswith("=")
    entries = [e.split(":")[0].strip() for e in spec.lstrip("=").split(",") if e.strip()]

    def hit(name: str) -> bool:
        return any(name == e if exact else name.startswith(e) for e in entries)

    return [n for n in names if hit(n) != exclude]
