"""Consistency across ranks, from the facts every rank gathered to rank 0. Pure: facts in, checks
out, so every case is a unit test with constructed dicts.

Mismatched torch/CUDA/NCCL/DeepSpeed/transformers/python or dist_llm code across nodes is the
classic multi-node failure that shows up late and cryptically (a hang in the first collective,
pickling errors, different numerics), so those are FAIL; other packages and the driver WARN.
"""

from __future__ import annotations

from dist_llm.envinfo.checks import FAIL, OK, WARN, Check

MUST_MATCH = (
    "python",
    "torch",
    "torch_git",
    "torch_cuda",
    "torch_hip",
    "cudnn",
    "nccl",
    "deepspeed",
    "transformers",
    "dist_llm",
    "dist_llm_source",
)
NOT_COMPARED = ("cuda_init_warning",)  # wording, reported by the per-host checks
_SUMMARY = (
    ("python", "python"),
    ("torch", "torch"),
    ("CUDA", "torch_cuda"),
    ("NCCL", "nccl"),
    ("deepspeed", "deepspeed"),
    ("transformers", "transformers"),
)


def rank_ranges(ranks: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    parts: list[str] = []
    ordered = sorted(ranks)
    start = prev = ordered[0]
    for r in [*ordered[1:], None]:
        if r is not None and r == prev + 1:
            prev = r
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if r is not None:
            start = prev = r
    return ",".join(parts)


def _where(ranks: list[int], facts: list[dict]) -> str:
    hosts = sorted({facts[r]["host"]["hostname"] for r in ranks})
    shown = ", ".join(hosts[:3]) + (f" +{len(hosts) - 3} more" if len(hosts) > 3 else "")
    return f"ranks {rank_ranges(ranks)} ({shown})"


def _differences(name: str, values: list, facts: list[dict], status: str) -> list[Check]:
    """One check when the value differs between ranks, naming which ranks have which value."""
    groups: dict[str, list[int]] = {}
    for rank, value in enumerate(values):
        groups.setdefault(str(value), []).append(rank)
    if len(groups) < 2:
        return []
    detail = "; ".join(f"{value} on {_where(ranks, facts)}" for value, ranks in groups.items())
    return [
        Check(
            f"same_{name}",
            status,
            f"{name} differs across ranks: {detail}",
            "install the same environment on every node (one container image or shared venv)",
        )
    ]


def compare_ranks(facts: list[dict]) -> list[Check]:
    """Checks across ranks; `facts[i]` is rank i's facts."""
    hosts = sorted({f["host"]["hostname"] for f in facts})
    out = [
        Check(
            "ranks",
            OK,
            f"{len(facts)} ranks on {len(hosts)} host(s): {', '.join(hosts[:8])}"
            + (" ..." if len(hosts) > 8 else ""),
        )
    ]
    keys = sorted({k for f in facts for k in f["software"]} - set(NOT_COMPARED))
    mismatched = [
        c
        for key in keys
        for c in _differences(
            key, [f["software"].get(key) for f in facts], facts, FAIL if key in MUST_MATCH else WARN
        )
    ]
    out += mismatched
    if not any(c.status == FAIL for c in mismatched):
        sw = facts[0]["software"]
        shown = ", ".join(f"{label} {sw[key]}" for label, key in _SUMMARY if sw.get(key))
        out.append(Check("same_versions", OK, f"every rank runs {shown} and the same dist_llm code"))
    gpu_models = [", ".join(sorted({g["name"] for g in f["devices"]["gpus"]})) or "no GPU" for f in facts]
    out += _differences("gpu_model", gpu_models, facts, FAIL)
    out += _hostname_clashes(facts)
    nccl_env = [
        " ".join(f"{k}={v}" for k, v in f["env"].items() if k.startswith("NCCL_")) or "none set"
        for f in facts
    ]
    out += [
        Check(c.name, c.status, c.message, "export the same NCCL_* settings on every node")
        for c in _differences("nccl_env", nccl_env, facts, WARN)
    ]
    return out


def _hostname_clashes(facts: list[dict]) -> list[Check]:
    """NCCL tells nodes apart by a hash of the hostname: two machines with one hostname (cloned VMs,
    containers all named `localhost`) are taken for one node and NCCL tries shared memory between
    them, which hangs or fails. The boot id tells the machines apart."""
    machines: dict[str, set[str]] = {}
    for f in facts:
        machines.setdefault(f["host"]["hostname"], set()).add(f["host"]["boot_id"])
    clashes = sorted(h for h, boots in machines.items() if len(boots) > 1)
    if not clashes:
        return []
    return [
        Check(
            "hostnames",
            FAIL,
            f"different machines share the hostname {', '.join(clashes)}",
            "give every node its own hostname (docker --hostname), or set NCCL_HOSTID per node",
        )
    ]
