"""The report: readable text by default, one JSON document with --json. Checks from many ranks are
merged (same name, status and message -> one line naming the ranks), so a 64-node job reads like
one node plus its exceptions."""

from __future__ import annotations

from dist_llm.envinfo.checks import OK, SEVERITY, Check, worst
from dist_llm.envinfo.compare import rank_ranges

# Software keys shown on their own lines (or not at all) rather than in the package list.
_NOT_PACKAGES = {
    "python",
    "torch",
    "torch_git",
    "torch_cuda",
    "torch_hip",
    "nvidia_driver",
    "driver_cuda",
    "cudnn",
    "nccl",
    "cuda_init_warning",
    "dist_llm",
    "dist_llm_source",
}


def merge_checks(per_rank: list[list[Check]]) -> list[Check]:
    """One check per distinct (name, status, message, fix) with the ranks that reported it, in the
    order first seen."""
    merged: dict[tuple, list[int]] = {}
    for rank, checks in enumerate(per_rank):
        for c in checks:
            merged.setdefault((c.name, c.status, c.message, c.fix), []).append(rank)
    return [Check(*key, ranks=tuple(ranks)) for key, ranks in merged.items()]


def to_json(facts: dict, checks: list[Check], ranks: list[dict] | None) -> dict:
    """{status, facts (this rank's), checks, ranks (every rank's facts, when gathered)}."""
    out = {"status": worst(checks), "facts": facts, "checks": [c.to_dict() for c in checks]}
    if ranks is not None:
        out["ranks"] = ranks
    return out


def _line(label: str, value: object) -> str:
    return f"  {label:<14}{value}"


def _software(sw: dict) -> list[str]:
    build = (
        f"CUDA {sw['torch_cuda']}"
        if sw["torch_cuda"]
        else f"ROCm {sw['torch_hip']}"
        if sw["torch_hip"]
        else "CPU-only build"
    )
    lines = [_line("python", sw["python"]), _line("torch", f"{sw['torch']} (git {sw['torch_git']}), {build}")]
    if sw["nvidia_driver"] or sw["driver_cuda"]:
        lines.append(_line("driver", f"{sw['nvidia_driver'] or '?'} (CUDA {sw['driver_cuda'] or '?'})"))
    lines += [_line(key, sw[key]) for key in ("cudnn", "nccl") if sw[key]]
    lines += [_line(k, v or "not installed") for k, v in sw.items() if k not in _NOT_PACKAGES]
    return [*lines, _line("dist_llm", f"{sw['dist_llm']} (source {sw['dist_llm_source']})")]


def _devices(dev: dict) -> list[str]:
    lines = [
        _line(
            "GPU",
            f"{g['index']}: {g['name']}, {g['memory_gib']} GiB, compute {g['capability']}, "
            f"{g['multiprocessors']} SMs",
        )
        for g in dev["gpus"]
    ]
    if not dev["gpus"]:
        lines.append(_line("GPU", f"none usable ({dev['nvidia_device_nodes']} /dev/nvidia* device nodes)"))
    cpu, mem, shm = dev["cpu"], dev["memory"], dev["shm"]
    cores = (
        f"{cpu['physical_cores'] or '?'} cores, {cpu['logical_cpus']} threads, {cpu['usable_cpus']} usable"
    )
    if cpu["cgroup_cpus"]:
        cores += f", cgroup quota {cpu['cgroup_cpus']} CPUs"
    ram = f"{mem['total_gib']} GiB, {mem['available_gib']} GiB available"
    if mem["cgroup_limit_gib"]:
        ram += f", container limit {mem['cgroup_limit_gib']} GiB"
    nofile, memlock = dev["limits"]["nofile"][0], dev["limits"]["memlock"][0]
    return [
        *lines,
        _line("CPU", f"{cpu['model']}; {cores}; {cpu['numa_nodes'] or '?'} NUMA node(s)"),
        _line("CPU ISA", f"{' '.join(cpu['isa']) or '-'} (torch kernels: {cpu['torch_capability']})"),
        _line("RAM", ram),
        _line("/dev/shm", f"{shm['total_gib']:.2f} GiB, {shm['free_gib']:.2f} free" if shm else "none"),
        _line(
            "ulimits",
            f"open files {nofile or 'unlimited'}, locked memory "
            f"{'unlimited' if memlock is None else f'{memlock // 1024} KiB'}",
        ),
    ]


def _interconnect(net: dict) -> list[str]:
    lines = []
    for p in net["infiniband"]:
        netdev = f" -> {p['netdev']}" if p["netdev"] else ""
        lines.append(
            _line(
                "InfiniBand",
                f"{p['device']}:{p['port']} {p['state']}, {p['rate']}, {p['link_layer']}{netdev}",
            )
        )
    if not net["infiniband"]:
        lines.append(_line("InfiniBand", "none (no /sys/class/infiniband devices)"))
    elif not net["gpudirect_rdma"]:
        lines.append(_line("GPUDirect", "nvidia_peermem not loaded"))
    for i in net["interfaces"]:
        speed = f", {i['speed_mbps']} Mb/s" if i["speed_mbps"] else ""
        addresses = " ".join(i["ipv4"] + i["ipv6"]) or "no address"
        lines.append(_line("interface", f"{i['name']} {i['state']}, mtu {i['mtu']}{speed}: {addresses}"))
    if net["topology"]:
        lines += ["  GPU topology (nvidia-smi topo -m):", *("    " + t for t in net["topology"].splitlines())]
    return lines


def _check_lines(checks: list[Check], world_size: int) -> list[str]:
    """Worst first; a per-host check that not every rank reported names its ranks."""
    lines = []
    for c in sorted(checks, key=lambda c: -SEVERITY[c.status]):
        where = f" [ranks {rank_ranges(list(c.ranks))}]" if 0 < len(c.ranks) < world_size else ""
        lines.append(f"  {c.status:<5}{c.name:<20}{c.message}{where}")
        if c.fix and c.status != OK:
            lines.append(f"  {'':<25}fix: {c.fix}")
    return lines


def format_text(facts: dict, checks: list[Check], ranks: list[dict] | None) -> str:
    head = f"dist-llm env: {facts['host']['hostname']} ({facts['host']['os']})"
    if ranks is not None:
        head += f", rank {facts['launch']['rank']} of {len(ranks)} (the facts below are this rank's)"
    env = [f"  {k}={v}" for k, v in facts["env"].items()] or ["  (no NCCL_*, MASTER_*, SLURM_*, ... set)"]
    counts = ", ".join(f"{sum(c.status == s for c in checks)} {s}" for s in SEVERITY)
    return "\n".join(
        [
            head,
            "",
            "Software",
            *_software(facts["software"]),
            "",
            "Devices",
            *_devices(facts["devices"]),
            "",
            "Interconnect",
            *_interconnect(facts["interconnect"]),
            "",
            "Environment",
            *env,
            "",
            "Checks",
            *_check_lines(checks, len(ranks or [facts])),
            "",
            f"{worst(checks)}: {counts}",
        ]
    )
