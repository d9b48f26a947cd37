from dist_llm.launch.torchrun import in_torchrun, torchrun_command


def test_single_node_is_standalone():
    cmd = torchrun_command(["train", "c.yaml", "a.b=1"], nproc_per_node=2)
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--nproc_per_node=2" in cmd
    assert cmd[-5:] == ["-m", "dist_llm.cli", "train", "c.yaml", "a.b=1"]


def test_multi_node_names_master_and_rank():
    cmd = torchrun_command(["train", "c.yaml"], nproc_per_node=8, nnodes=4, node_rank=3,
                           master_addr="10.1.2.3", master_port=6000, max_restarts=2)
    assert "--standalone" not in cmd
    for flag in ("--nnodes=4", "--node_rank=3", "--master_addr=10.1.2.3", "--master_port=6000",
                 "--max_restarts=2", "--nproc_per_node=8"):
        assert flag in cmd


def test_in_torchrun_reads_environment(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert not in_torchrun()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert in_torchrun()
