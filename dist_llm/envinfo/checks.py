"""Checks for one host: each says OK/WARN/FAIL, what it saw and the fix. They read the facts and,
where only a live probe can tell (a name resolves, a port is free or reachable), probe.

A check that does not apply here (GPU checks on a CPU host, interconnect on one node, an unset
variable) returns nothing rather than a filler line, so the report stays short.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from dist_llm.envinfo import network

OK, WARN, FAIL = "OK", "WARN", "FAIL"
SEVERITY = {OK: 0, WARN: 1, FAIL: 2}
TORCHRUN_DEFAULT_PORT = 29500
SHM_MIN_GIB = 1.0  # Docker's default is 64 MB; NCCL needs several MB per GPU pair and channel
NOFILE_MIN = 4096  # 1024, the usual default, runs out with DataLoader workers + NCCL sockets


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    message: str
    fix: str = ""
    ranks: tuple[int, ...] = field(default=())  # filled when merged across ranks

    def to_dict(self) -> dict:
        return asdict(self)


def worst(checks: list[Check]) -> str:
    return max((c.status for c in checks), key=SEVERITY.__getitem__, default=OK)


def _multi_node(f: dict) -> bool:
    return f["launch"]["nnodes"] > 1


def _gpus_present(f: dict) -> int:
    """NVIDIA GPUs on this host whether or not torch can use them."""
    return max(f["devices"]["nvidia_device_nodes"], len(f["devices"]["gpus"]))


def check_torch_cuda(f: dict) -> list[Check]:
    sw, present, usable = f["software"], _gpus_present(f), len(f["devices"]["gpus"])
    if not present:
        return [Check("torch_cuda", OK, f"no NVIDIA GPU on this host: torch {sw['torch']} on CPU (gloo)")]
    if not sw["torch_cuda"] and not sw["torch_hip"]:
        return [
            Check(
                "torch_cuda",
                FAIL,
                f"torch {sw['torch']} is a CPU-only build but this host has {present} NVIDIA GPU(s)",
                f"install a CUDA build of torch for this driver (CUDA {sw['driver_cuda'] or '?'}), "
                "e.g. pip install torch --index-url https://download.pytorch.org/whl/cu124",
            )
        ]
    if not usable:
        why = f": {sw['cuda_init_warning']}" if sw["cuda_init_warning"] else ""
        return [
            Check(
                "torch_cuda",
                FAIL,
                f"torch (CUDA {sw['torch_cuda']}) sees no GPU though {present} /dev/nvidia* exist{why}",
                "check CUDA_VISIBLE_DEVICES, `nvidia-smi`, and for containers --gpus all / the NVIDIA "
                "container runtime",
            )
        ]
    return [Check("torch_cuda", OK, f"torch {sw['torch']} sees {usable} GPU(s) (CUDA {sw['torch_cuda']})")]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def check_cuda_driver(f: dict) -> list[Check]:
    built, driver = f["software"]["torch_cuda"], f["software"]["driver_cuda"]
    if not built or not driver or not _gpus_present(f):
        return []
    b, d = _version(built)[:2], _version(driver)[:2]
    if d >= b:
        return [
            Check(
                "cuda_driver",
                OK,
                f"driver {f['software']['nvidia_driver']} supports CUDA {driver} >= torch's CUDA {built}",
            )
        ]
    fix = f"upgrade the NVIDIA driver to one for CUDA {built}, or install torch built for CUDA <= {driver}"
    if d[0] < b[0]:
        return [Check("cuda_driver", FAIL, f"driver supports CUDA {driver}, torch needs CUDA {built}", fix)]
    return [
        Check(
            "cuda_driver",
            WARN,
            f"driver supports CUDA {driver} < torch's {built}: runs on minor "
            "version compatibility, but PTX JIT (e.g. Triton kernels) can fail",
            fix,
        )
    ]


def check_gpu_arch(f: dict) -> list[Check]:
    """A GPU whose compute capability torch has no kernels (sm_XY) or PTX (compute_XY <= it) for
    fails at the first kernel with "no kernel image is available for execution on the device"."""
    arch = f["devices"]["torch_arch_list"]
    if not arch or not f["devices"]["gpus"]:
        return []
    out = []
    for cap in sorted({g["capability"] for g in f["devices"]["gpus"]}):
        sm = cap.replace(".", "")
        ptx = [a for a in arch if a.startswith("compute_") and int(a[8:]) <= int(sm)]
        if f"sm_{sm}" not in arch and not ptx:
            out.append(
                Check(
                    "gpu_arch",
                    FAIL,
                    f"torch has no kernels for compute capability {cap} (built for {' '.join(arch)})",
                    f"install a torch build that includes sm_{sm}",
                )
            )
    return out or [
        Check(
            "gpu_arch",
            OK,
            f"torch has kernels for compute capability "
            f"{', '.join(sorted({g['capability'] for g in f['devices']['gpus']}))}",
        )
    ]


def check_visible_devices(f: dict) -> list[Check]:
    value, present = f["env"].get("CUDA_VISIBLE_DEVICES"), f["devices"]["nvidia_device_nodes"]
    usable, local_world = len(f["devices"]["gpus"]), f["launch"]["local_world_size"]
    out = []
    if value is not None and present:
        tokens = [t.strip() for t in value.split(",") if t.strip()]
        indices = [int(t) for t in tokens if t.isdigit()]
        if not tokens or tokens[0] in ("-1", "NoDevFiles"):
            out.append(
                Check(
                    "visible_devices",
                    WARN,
                    f"CUDA_VISIBLE_DEVICES={value!r} hides all {present} GPUs",
                    "unset it or name the GPUs this job should use",
                )
            )
        elif any(i >= present for i in indices):
            out.append(
                Check(
                    "visible_devices",
                    FAIL,
                    f"CUDA_VISIBLE_DEVICES={value} names device "
                    f"{max(indices)} but this host has {present} GPU(s) (0-{present - 1}); CUDA "
                    "ignores everything from the first invalid entry",
                    "name only existing GPUs",
                )
            )
        elif len(set(indices)) < len(indices):
            out.append(
                Check(
                    "visible_devices",
                    FAIL,
                    f"CUDA_VISIBLE_DEVICES={value} repeats a device",
                    "name each GPU once",
                )
            )
    if usable and local_world > usable:
        out.append(
            Check(
                "visible_devices",
                FAIL,
                f"{local_world} ranks per node but {usable} visible "
                "GPU(s): ranks would share a GPU (NCCL: 'Duplicate GPU detected')",
                f"start at most {usable} ranks per node (--nproc-per-node)",
            )
        )
    if not out and value is not None and present:
        out.append(Check("visible_devices", OK, f"CUDA_VISIBLE_DEVICES={value}: {usable} GPU(s) visible"))
    return out


def check_nccl(f: dict) -> list[Check]:
    if not f["devices"]["gpus"]:
        return []
    version = f["software"]["nccl"]
    if not version:
        return [
            Check(
                "nccl",
                FAIL,
                "torch has no NCCL: GPU ranks cannot communicate",
                "install a torch wheel built with NCCL (the PyPI CUDA wheels are)",
            )
        ]
    return [Check("nccl", OK, f"NCCL {version}")]


def check_master_addr(f: dict) -> list[Check]:
    launch = f["launch"]
    addr, multi = launch["master_addr"], launch["world_size"] > 1 or _multi_node(f)
    if not addr:
        if multi:
            return [
                Check(
                    "master_addr",
                    FAIL,
                    "MASTER_ADDR is not set for a multi-rank job",
                    "export MASTER_ADDR=<node 0's address> (or torchrun --rdzv_endpoint host:port)",
                )
            ]
        return [Check("master_addr", OK, "not set: single node (torchrun --standalone picks its own)")]
    try:
        addresses = network.resolve(addr)
    except OSError as e:
        return [
            Check(
                "master_addr",
                FAIL,
                f"MASTER_ADDR={addr} does not resolve ({e})",
                "use an IP address, or a name every node resolves (DNS or /etc/hosts)",
            )
        ]
    where = "this host" if network.is_local(addresses, f["interconnect"]["interfaces"]) else "a remote host"
    if _multi_node(f) and all(network.is_loopback(a) for a in addresses):
        return [
            Check(
                "master_addr",
                WARN,
                f"MASTER_ADDR={addr} is loopback ({', '.join(addresses)}): other "
                "nodes reach it only if they are this host",
                "use node 0's address on the cluster network",
            )
        ]
    return [Check("master_addr", OK, f"MASTER_ADDR={addr} -> {', '.join(addresses)} ({where})")]


def check_master_port(f: dict) -> list[Check]:
    """Before a launch: on the master host the port must be free to bind, from other hosts the
    master must answer. Inside torchrun the store listens there once the ranks have joined; if
    they could not, a remote master that does not answer says why (the master's own store is
    already gone then, so the master host says nothing)."""
    launch = f["launch"]
    addr, raw = launch["master_addr"], launch["master_port"]
    if not addr or (launch["in_torchrun"] and launch["world_size"] == 1):
        return []
    raw = raw or str(TORCHRUN_DEFAULT_PORT)
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        return [Check("master_port", FAIL, f"MASTER_PORT={raw!r} is not a port number", "use 1024-65535")]
    port = int(raw)
    try:
        local = network.is_local(network.resolve(addr), f["interconnect"]["interfaces"])
    except OSError:
        return []  # check_master_addr reports the name
    if launch["in_torchrun"]:
        result = network.connect_result(addr, port)
        if result == "open":
            return [Check("master_port", OK, f"{addr}:{port} answers")]
        return (
            []
            if local
            else [
                Check(
                    "master_port",
                    FAIL,
                    f"{addr}:{port} does not answer from this node ({result})",
                    f"open TCP {port} from every node to the master",
                )
            ]
        )
    if local:
        error = network.bind_error(port)
        if error:
            return [
                Check(
                    "master_port",
                    FAIL,
                    f"MASTER_PORT={port} cannot be bound on this host ({error})",
                    f"pick another port, or stop what holds it (`ss -ltnp 'sport = :{port}'`)",
                )
            ]
        return [Check("master_port", OK, f"MASTER_PORT={port} is free on this host (the master)")]
    result = network.connect_result(addr, port)
    if result in ("open", "refused"):  # refused: the host answered, the master is just not up yet
        state = "something listens" if result == "open" else "reachable, nothing listens yet"
        return [Check("master_port", OK, f"{addr}:{port}: {state}")]
    status = WARN if result == "timeout" else FAIL
    return [
        Check(
            "master_port",
            status,
            f"{addr}:{port} does not answer from this host ({result})",
            f"check the address and that a firewall lets TCP {port} (and NCCL's own ports) through",
        )
    ]


def check_hostname(f: dict) -> list[Check]:
    """Gloo binds to the address the hostname resolves to unless GLOO_SOCKET_IFNAME says otherwise;
    with `127.0.1.1 host` in /etc/hosts (Debian's default) peers on other nodes cannot connect."""
    if not _multi_node(f) or f["env"].get("GLOO_SOCKET_IFNAME"):
        return []
    name = f["host"]["hostname"]
    try:
        addresses = network.resolve(name)
    except OSError as e:
        return [
            Check(
                "hostname",
                FAIL,
                f"hostname {name} does not resolve ({e})",
                "add it to /etc/hosts or DNS, or set GLOO_SOCKET_IFNAME=<interface>",
            )
        ]
    if all(network.is_loopback(a) for a in addresses):
        return [
            Check(
                "hostname",
                WARN,
                f"hostname {name} resolves only to loopback "
                f"({', '.join(addresses)}): gloo would advertise it to other nodes",
                "set GLOO_SOCKET_IFNAME=<cluster interface> or map the hostname to its real address",
            )
        ]
    return [Check("hostname", OK, f"hostname {name} -> {', '.join(addresses)}")]


def _usable(iface: dict) -> bool:
    return iface["state"] in ("up", "unknown") and bool(iface["ipv4"] or iface["ipv6"])


def check_socket_ifname(f: dict, var: str) -> list[Check]:
    """NCCL_SOCKET_IFNAME takes prefixes (`eth` matches eth0), GLOO_SOCKET_IFNAME exact names."""
    spec = f["env"].get(var)
    if not spec:
        return []
    ifaces = {i["name"]: i for i in f["interconnect"]["interfaces"]}
    matched = network.match_interface_list(spec, list(ifaces), prefix=var.startswith("NCCL"))
    if not matched:
        return [
            Check(
                var.lower(),
                FAIL,
                f"{var}={spec} matches no interface (this host has: {', '.join(ifaces)})",
                f"set {var} to the cluster network's interface",
            )
        ]
    usable = [n for n in matched if _usable(ifaces[n])]
    if not usable:
        return [
            Check(
                var.lower(),
                FAIL,
                f"{var}={spec} matches {', '.join(matched)}, none up with an address",
                "bring the interface up or name another",
            )
        ]
    addresses = [a for n in usable for a in ifaces[n]["ipv4"] + ifaces[n]["ipv6"]]
    if _multi_node(f) and all(network.is_loopback(a) for a in addresses):
        return [
            Check(
                var.lower(),
                WARN,
                f"{var}={spec} selects only loopback: other nodes cannot connect",
                f"set {var} to the cluster network's interface",
            )
        ]
    shown = ", ".join(f"{n} ({(ifaces[n]['ipv4'] + ifaces[n]['ipv6'])[0]})" for n in usable)
    return [Check(var.lower(), OK, f"{var}={spec} -> {shown}")]


def check_ib_hca(f: dict) -> list[Check]:
    spec = f["env"].get("NCCL_IB_HCA")
    if not spec:
        return []
    devices = sorted({p["device"] for p in f["interconnect"]["infiniband"]})
    if not network.match_interface_list(spec, devices, prefix=True):
        return [
            Check(
                "nccl_ib_hca",
                FAIL,
                f"NCCL_IB_HCA={spec} matches no InfiniBand device (this host "
                f"has: {', '.join(devices) or 'none'})",
                "name devices from /sys/class/infiniband",
            )
        ]
    return [Check("nccl_ib_hca", OK, f"NCCL_IB_HCA={spec} matches devices here")]


def check_interconnect(f: dict) -> list[Check]:
    if not _multi_node(f):
        return []
    ports, gpus = f["interconnect"]["infiniband"], bool(f["devices"]["gpus"])
    active = [f"{p['device']}:{p['port']}" for p in ports if p["state"] == "ACTIVE"]
    if active and f["env"].get("NCCL_IB_DISABLE") == "1":
        return [
            Check(
                "interconnect",
                WARN,
                f"NCCL_IB_DISABLE=1 though {len(active)} IB/RoCE port(s) are active: NCCL falls back to TCP",
                "unset NCCL_IB_DISABLE",
            )
        ]
    if active:
        return [Check("interconnect", OK, f"{len(active)} active IB/RoCE port(s): {', '.join(active)}")]
    if ports:
        return [
            Check(
                "interconnect",
                WARN,
                f"IB/RoCE devices present but no port is ACTIVE "
                f"({', '.join(sorted({p['device'] for p in ports}))}): NCCL falls back to TCP",
                "check cables and the subnet manager (`ibstat`)",
            )
        ]
    if gpus and not f["env"].get("NCCL_SOCKET_IFNAME"):
        return [
            Check(
                "interconnect",
                WARN,
                "multi-node GPUs without InfiniBand/RoCE and NCCL_SOCKET_IFNAME "
                "unset: NCCL picks an interface itself (possibly docker0 or a slow management NIC)",
                "export NCCL_SOCKET_IFNAME=<the fast interface>, e.g. eth0",
            )
        ]
    return [Check("interconnect", OK, "no InfiniBand/RoCE: collectives run over TCP sockets")]


def check_memlock(f: dict) -> list[Check]:
    """RDMA pins (registers) NCCL's buffers; a locked-memory limit makes that fail at startup."""
    if not any(p["state"] == "ACTIVE" for p in f["interconnect"]["infiniband"]):
        return []
    soft = f["devices"]["limits"]["memlock"][0]
    if soft is not None:
        return [
            Check(
                "memlock",
                WARN,
                f"locked-memory limit is {soft // 1024} KiB; RDMA buffer registration can fail",
                "ulimit -l unlimited (docker: --ulimit memlock=-1; SLURM: PropagateResourceLimits)",
            )
        ]
    return [Check("memlock", OK, "locked memory unlimited (RDMA can register buffers)")]


def check_shm(f: dict) -> list[Check]:
    shm = f["devices"]["shm"]
    fix = (
        "give the container more: docker run --shm-size=16g (or --ipc=host); Kubernetes: mount an "
        "emptyDir with medium: Memory at /dev/shm"
    )
    if shm is None:
        return [Check("shm", WARN, "/dev/shm is missing: NCCL and DataLoader workers need it", fix)]
    if shm["total_gib"] >= SHM_MIN_GIB:
        return [Check("shm", OK, f"/dev/shm {shm['total_gib']:.1f} GiB ({shm['free_gib']:.1f} free)")]
    several = f["launch"]["local_world_size"] > 1 or len(f["devices"]["gpus"]) > 1
    return [
        Check(
            "shm",
            FAIL if several else WARN,
            f"/dev/shm is only {shm['total_gib'] * 1024:.0f} MiB: "
            "NCCL between GPUs of a node and DataLoader workers fail with bus errors",
            fix,
        )
    ]


def check_open_files(f: dict) -> list[Check]:
    soft, hard = f["devices"]["limits"]["nofile"]
    if soft is None or soft >= NOFILE_MIN:
        return [Check("open_files", OK, f"open-files limit {soft or 'unlimited'}")]
    raise_to = "unlimited" if hard is None else hard
    fix = (
        f"ulimit -n {raise_to}"
        if hard is None or hard >= NOFILE_MIN
        else "raise nofile in /etc/security/limits.conf (docker: --ulimit nofile=1048576)"
    )
    return [
        Check(
            "open_files",
            WARN,
            f"open-files limit {soft}: DataLoader workers and NCCL sockets can hit 'Too many open files'",
            fix,
        )
    ]


def check_cpu_threads(f: dict) -> list[Check]:
    """Ranks x OMP threads above the usable cores makes CPU ranks thrash instead of compute."""
    value = f["env"].get("OMP_NUM_THREADS")
    if value is None:
        return []
    cores, ranks = f["devices"]["cpu"]["usable_cpus"], f["launch"]["local_world_size"]
    if not value.isdigit() or int(value) < 1:
        return [
            Check(
                "cpu_threads",
                WARN,
                f"OMP_NUM_THREADS={value!r} is not a positive integer",
                "set it to usable cores / ranks per node",
            )
        ]
    if int(value) * ranks > cores:
        return [
            Check(
                "cpu_threads",
                WARN,
                f"{ranks} rank(s) x OMP_NUM_THREADS={value} threads > {cores} usable CPUs: oversubscribed",
                f"OMP_NUM_THREADS={max(1, cores // ranks)}",
            )
        ]
    return [Check("cpu_threads", OK, f"{ranks} rank(s) x OMP_NUM_THREADS={value} <= {cores} usable CPUs")]


def run_checks(facts: dict) -> list[Check]:
    """Every check that applies to this host, in report order."""
    checks = [
        check_torch_cuda,
        check_cuda_driver,
        check_gpu_arch,
        check_visible_devices,
        check_nccl,
        check_master_addr,
        check_master_port,
        check_hostname,
        lambda f: check_socket_ifname(f, "NCCL_SOCKET_IFNAME"),
        lambda f: check_socket_ifname(f, "GLOO_SOCKET_IFNAME"),
        check_ib_hca,
        check_interconnect,
        check_memlock,
        check_shm,
        check_open_files,
        check_cpu_threads,
    ]
    return [c for check in checks for c in check(facts)]
