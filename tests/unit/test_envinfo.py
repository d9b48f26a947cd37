"""`dist-llm env`: the checks against real conditions on this host (a bound port, interfaces that
do or do not exist, a name that does not resolve), GPU/cluster conditions on constructed facts, the
cross-rank comparison, and the command's JSON output and exit status."""

from __future__ import annotations

import copy
import json
import os
import socket

import pytest

from dist_llm import cli
from dist_llm.envinfo import checks, network
from dist_llm.envinfo.checks import FAIL, OK, WARN, run_checks
from dist_llm.envinfo.compare import compare_ranks, rank_ranges
from dist_llm.envinfo.facts import collect_facts, relevant_env
from dist_llm.envinfo.report import format_text, merge_checks

LAUNCH_VARS = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "SLURM_JOB_ID",
    "SLURM_NNODES",
    "SLURM_JOB_NUM_NODES",
    "SLURM_NODEID",
    "NCCL_SOCKET_IFNAME",
    "GLOO_SOCKET_IFNAME",
    "NCCL_IB_HCA",
    "NCCL_IB_DISABLE",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
)

IB_PORT = {
    "device": "mlx5_0",
    "port": 1,
    "state": "ACTIVE",
    "rate": "400 Gb/sec (4X NDR)",
    "link_layer": "InfiniBand",
    "netdev": "ib0",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Tests describe the launch themselves; whatever the shell exported must not leak in."""
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def base() -> dict:
    return collect_facts()


def facts_with(monkeypatch, nnodes: int | None = None, **env: str) -> dict:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return collect_facts(nnodes=nnodes)


def only(found: list[checks.Check], name: str) -> checks.Check:
    matching = [c for c in found if c.name == name]
    assert len(matching) == 1, found
    return matching[0]


def gpu_host(
    base: dict,
    n: int = 2,
    capability: str = "9.0",
    arch: tuple = ("sm_80", "sm_90"),
    cuda: str = "12.4",
    driver_cuda: str = "12.4",
) -> dict:
    f = copy.deepcopy(base)
    f["software"].update(torch_cuda=cuda, driver_cuda=driver_cuda, nvidia_driver="550.54.15", nccl="2.21.5")
    f["devices"].update(
        nvidia_device_nodes=n,
        torch_arch_list=list(arch),
        gpus=[
            {
                "index": i,
                "name": "NVIDIA H100 80GB HBM3",
                "memory_gib": 79.1,
                "capability": capability,
                "multiprocessors": 132,
            }
            for i in range(n)
        ],
    )
    return f


# --- master address and port: real sockets and name resolution ---


def test_master_port_in_use_on_the_master_fails_and_free_port_passes(monkeypatch):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        busy = only(
            run_checks(facts_with(monkeypatch, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))), "master_port"
        )
    assert busy.status == FAIL and "in use" in busy.message and str(port) in busy.fix
    free = only(run_checks(collect_facts()), "master_port")
    assert free.status == OK and "free on this host" in free.message


def test_master_port_not_a_number_fails(monkeypatch):
    found = run_checks(facts_with(monkeypatch, MASTER_ADDR="127.0.0.1", MASTER_PORT="http"))
    assert only(found, "master_port").status == FAIL


def test_unresolvable_master_addr_fails(monkeypatch):
    found = run_checks(facts_with(monkeypatch, MASTER_ADDR="no-such-host.invalid", MASTER_PORT="29500"))
    addr = only(found, "master_addr")
    assert addr.status == FAIL and "does not resolve" in addr.message
    assert not [c for c in found if c.name == "master_port"], "the name is reported once, by master_addr"


def test_multi_rank_job_without_master_addr_fails(monkeypatch):
    assert only(run_checks(facts_with(monkeypatch, nnodes=2)), "master_addr").status == FAIL
    assert only(run_checks(collect_facts()), "master_addr").status == OK  # single node: not needed


def test_loopback_master_for_several_nodes_warns(monkeypatch):
    found = run_checks(facts_with(monkeypatch, nnodes=2, MASTER_ADDR="127.0.0.1"))
    assert only(found, "master_addr").status == WARN


def test_connect_result_tells_refused_from_open():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        assert network.connect_result("127.0.0.1", port) == "refused"
        s.listen(1)
        assert network.connect_result("127.0.0.1", port) == "open"


# --- interface variables against this host's real interfaces ---


def test_nccl_socket_ifname_naming_no_interface_fails(monkeypatch):
    check = only(run_checks(facts_with(monkeypatch, NCCL_SOCKET_IFNAME="doesnotexist")), "nccl_socket_ifname")
    assert check.status == FAIL and "lo" in check.message  # lists what exists


def test_loopback_interface_passes_on_one_node(monkeypatch):
    for var, spec in [
        ("NCCL_SOCKET_IFNAME", "lo"),
        ("NCCL_SOCKET_IFNAME", "l"),
        ("GLOO_SOCKET_IFNAME", "lo"),
    ]:
        monkeypatch.setenv(var, spec)
        assert only(run_checks(collect_facts()), var.lower()).status == OK, (var, spec)
        monkeypatch.delenv(var)


def test_gloo_names_are_exact_not_prefixes(monkeypatch):
    found = run_checks(facts_with(monkeypatch, GLOO_SOCKET_IFNAME="l"))
    assert only(found, "gloo_socket_ifname").status == FAIL


def test_loopback_only_interface_for_several_nodes_warns(monkeypatch):
    found = run_checks(facts_with(monkeypatch, nnodes=2, MASTER_ADDR="127.0.0.1", NCCL_SOCKET_IFNAME="lo"))
    assert only(found, "nccl_socket_ifname").status == WARN


def test_interface_lists_follow_nccl_syntax():
    names = ["eth0", "eth1", "docker0", "lo", "ib0"]
    assert network.match_interface_list("eth", names, prefix=True) == ["eth0", "eth1"]
    assert network.match_interface_list("=eth0,ib0", names, prefix=True) == ["eth0", "ib0"]
    assert network.match_interface_list("^docker,lo", names, prefix=True) == ["eth0", "eth1", "ib0"]
    assert network.match_interface_list("mlx5_0:1,mlx5_1", ["mlx5_0", "mlx5_1", "mlx5_2"], True) == [
        "mlx5_0",
        "mlx5_1",
    ]
    assert network.match_interface_list("eth", names, prefix=False) == []


def test_ib_hca_naming_absent_device_fails(base):
    f = copy.deepcopy(base)
    f["env"]["NCCL_IB_HCA"] = "mlx5_9"
    f["interconnect"]["infiniband"] = [IB_PORT]
    assert only(checks.check_ib_hca(f), "nccl_ib_hca").status == FAIL
    f["env"]["NCCL_IB_HCA"] = "mlx5"
    assert only(checks.check_ib_hca(f), "nccl_ib_hca").status == OK


# --- GPU and cluster conditions on constructed facts ---


def test_cpu_only_torch_on_a_gpu_host_fails(base):
    f = copy.deepcopy(base)
    f["software"]["torch_cuda"] = None
    f["devices"]["nvidia_device_nodes"] = 8
    check = only(checks.check_torch_cuda(f), "torch_cuda")
    assert check.status == FAIL and "CPU-only" in check.message


def test_gpu_checks_pass_on_a_healthy_gpu_host(base):
    found = run_checks(gpu_host(base))
    for name in ("torch_cuda", "cuda_driver", "gpu_arch", "nccl"):
        assert only(found, name).status == OK, found


def test_gpu_without_kernels_for_its_architecture_fails(base):
    assert only(checks.check_gpu_arch(gpu_host(base, capability="10.0")), "gpu_arch").status == FAIL
    ptx = gpu_host(base, capability="10.0", arch=("sm_90", "compute_90"))  # PTX JIT-compiles forward
    assert only(checks.check_gpu_arch(ptx), "gpu_arch").status == OK


def test_driver_older_than_torch_cuda(base):
    assert only(checks.check_cuda_driver(gpu_host(base, driver_cuda="11.8")), "cuda_driver").status == FAIL
    assert only(checks.check_cuda_driver(gpu_host(base, driver_cuda="12.2")), "cuda_driver").status == WARN


def test_cuda_visible_devices_beyond_the_gpus_fails(base):
    f = gpu_host(base, n=2)
    f["env"]["CUDA_VISIBLE_DEVICES"] = "0,3"
    check = only(checks.check_visible_devices(f), "visible_devices")
    assert check.status == FAIL and "device 3" in check.message
    f["env"]["CUDA_VISIBLE_DEVICES"] = "1"
    assert only(checks.check_visible_devices(f), "visible_devices").status == OK


def test_more_ranks_per_node_than_gpus_fails(base):
    f = gpu_host(base, n=2)
    f["launch"]["local_world_size"] = 4
    assert only(checks.check_visible_devices(f), "visible_devices").status == FAIL


def test_multi_node_gpus_without_infiniband_or_socket_ifname_warns(base):
    f = gpu_host(base)
    f["launch"]["nnodes"] = 2
    assert only(checks.check_interconnect(f), "interconnect").status == WARN
    f["env"]["NCCL_SOCKET_IFNAME"] = "eth0"
    assert only(checks.check_interconnect(f), "interconnect").status == OK
    f["interconnect"]["infiniband"] = [IB_PORT]
    f["env"]["NCCL_IB_DISABLE"] = "1"
    assert only(checks.check_interconnect(f), "interconnect").status == WARN
    f["devices"]["limits"]["memlock"] = [65536, 65536]
    assert only(checks.check_memlock(f), "memlock").status == WARN


def test_docker_default_shm_warns_and_fails_with_several_ranks(base):
    f = copy.deepcopy(base)
    f["devices"]["shm"] = {"total_gib": 64 / 1024, "free_gib": 64 / 1024}
    check = only(checks.check_shm(f), "shm")
    assert check.status == WARN and "--shm-size" in check.fix and "64 MiB" in check.message
    f["launch"]["local_world_size"] = 2
    assert only(checks.check_shm(f), "shm").status == FAIL


def test_low_open_files_limit_warns(base):
    f = copy.deepcopy(base)
    f["devices"]["limits"]["nofile"] = [1024, 1048576]
    check = only(checks.check_open_files(f), "open_files")
    assert check.status == WARN and check.fix == "ulimit -n 1048576"


def test_oversubscribed_cpu_threads_warn(base):
    f = copy.deepcopy(base)
    f["env"]["OMP_NUM_THREADS"] = str(f["devices"]["cpu"]["usable_cpus"])
    f["launch"]["local_world_size"] = 2
    assert only(checks.check_cpu_threads(f), "cpu_threads").status == WARN


def test_secrets_are_not_reported():
    env = relevant_env({"WANDB_API_KEY": "abc", "HF_TOKEN": "x", "NCCL_DEBUG": "INFO", "HOME": "/root"})
    assert env == {"HF_TOKEN": "<set>", "NCCL_DEBUG": "INFO", "WANDB_API_KEY": "<set>"}


# --- across ranks ---


def test_version_mismatch_across_ranks_fails_naming_the_ranks(base):
    ranks = [copy.deepcopy(base) for _ in range(4)]
    for i, f in enumerate(ranks):
        f["host"].update(hostname=f"node{i // 2}", boot_id=f"boot{i // 2}")
    ranks[3]["software"]["torch"] = "2.4.0"
    ranks[2]["software"]["wandb"] = "0.1"
    found = compare_ranks(ranks)
    torch_check = only(found, "same_torch")
    assert torch_check.status == FAIL
    assert "2.4.0 on ranks 3 (node1)" in torch_check.message
    assert f"{base['software']['torch']} on ranks 0-2 (node0, node1)" in torch_check.message
    assert only(found, "same_wandb").status == WARN
    assert not [c for c in found if c.name == "same_versions"]


def test_consistent_ranks_pass_and_gpu_model_mismatch_fails(base):
    ranks = [gpu_host(base), gpu_host(base)]
    found = compare_ranks(ranks)
    assert {c.status for c in found} == {OK} and only(found, "same_versions")
    ranks[1]["devices"]["gpus"][0]["name"] = "NVIDIA A100-SXM4-80GB"
    assert only(compare_ranks(ranks), "same_gpu_model").status == FAIL


def test_two_machines_with_one_hostname_fail(base):
    ranks = [copy.deepcopy(base), copy.deepcopy(base)]
    ranks[1]["host"]["boot_id"] = "another-machine"
    assert only(compare_ranks(ranks), "hostnames").status == FAIL


def test_merge_names_the_ranks_of_each_distinct_check():
    a, b = checks.Check("shm", OK, "fine"), checks.Check("shm", WARN, "small", "grow it")
    merged = merge_checks([[a], [a], [b]])
    assert [(c.status, c.ranks) for c in merged] == [(OK, (0, 1)), (WARN, (2,))]
    assert rank_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


# --- the command ---


def test_cli_json_reports_facts_and_checks(capsys):
    assert cli.main(["env", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] in (OK, WARN)
    assert out["facts"]["software"]["python"] and out["facts"]["software"]["torch"]
    assert out["facts"]["interconnect"]["interfaces"] and "ranks" not in out
    assert {c["name"] for c in out["checks"]} >= {"torch_cuda", "master_addr", "shm", "open_files"}


def test_cli_exits_1_on_a_failed_check_and_prints_the_fix(monkeypatch, capsys):
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "doesnotexist")
    assert cli.main(["env"]) == 1
    text = capsys.readouterr().out
    assert "FAIL nccl_socket_ifname" in text and "fix: set NCCL_SOCKET_IFNAME" in text
    assert text.rstrip().splitlines()[-1].startswith("FAIL: ")


def test_rank_whose_peers_never_join_reports_itself_with_a_failed_rendezvous(monkeypatch, capsys):
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in {
        "LOCAL_RANK": "0",
        "RANK": "0",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["env", "--json", "--timeout", "1"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == FAIL and out["checks"][-1]["name"] == "rendezvous"
    assert f"127.0.0.1:{port}" in out["checks"][-1]["message"]
    assert not dist.is_initialized()


def test_text_report_names_the_sections(base):
    text = format_text(base, run_checks(base), None)
    for section in ("Software", "Devices", "Interconnect", "Environment", "Checks"):
        assert f"\n{section}\n" in text
    assert os.uname().nodename in text.splitlines()[0]
