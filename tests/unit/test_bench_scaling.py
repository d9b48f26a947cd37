"""The scaling estimator's arithmetic: traffic volumes per engine, model-state memory per ZeRO stage,
where communication is hidden and where it is not."""

from __future__ import annotations

import pytest

from dist_llm.bench.scaling import LAYOUTS, Hardware, Layout, estimate, scaling_table, single_device_mfu
from dist_llm.config import load_config
from dist_llm.errors import ConfigError
from dist_llm.models import count_params
from tests.conftest import REPO

HW = Hardware()


@pytest.fixture(scope="module")
def model_1b3():
    return load_config(str(REPO / "configs" / "models" / "1.3b.yaml")).model


def test_one_node_data_parallel_keeps_the_single_gpu_mfu(model_1b3):
    row = estimate(model_1b3, 2048, 1024, 8, 8, LAYOUTS["zero1"], 0.45, HW)
    assert row.exposed_comm_s == 0 and row.mfu == pytest.approx(0.45)
    assert single_device_mfu(model_1b3, 2048, row.tokens_per_s_per_gpu, HW) == pytest.approx(0.45)


def test_zero3_moves_one_and_a_half_times_the_zero1_traffic_and_shards_all_states(model_1b3):
    z1 = estimate(model_1b3, 2048, 1024, 8, 64, LAYOUTS["zero1"], 0.45, HW)
    z3 = estimate(model_1b3, 2048, 1024, 8, 64, LAYOUTS["zero3"], 0.45, HW)
    assert z3.comm_s == pytest.approx(1.5 * z1.comm_s)
    n = count_params(model_1b3)
    assert z3.state_gb == pytest.approx(16 * n / 64 / 1e9)
    assert z1.state_gb == pytest.approx((4 * n + 12 * n / 64) / 1e9)


def test_fixed_global_batch_on_more_gpus_exposes_communication(model_1b3):
    rows = scaling_table(model_1b3, 2048, 1024, 8, ["zero1"], [8, 64, 512], 0.45, HW)
    per_gpu = [r.tokens_per_s_per_gpu for r in rows]
    assert per_gpu[0] >= per_gpu[1] > per_gpu[2] and rows[-1].exposed_comm_s > 0
    assert rows[-1].micro_batch == 2  # 1024 sequences over 512 replicas


def test_tensor_parallel_traffic_is_not_hidden_and_stays_in_a_node(model_1b3):
    tp = estimate(model_1b3, 2048, 1024, 8, 8, LAYOUTS["tp8"], 0.45, HW)
    assert tp.exposed_comm_s == pytest.approx(tp.comm_s) and tp.mfu < 0.45
    with pytest.raises(ConfigError, match="does not fit"):
        estimate(model_1b3, 2048, 1024, 8, 16, Layout("TP 16", tp=16), 0.45, HW)


def test_pipeline_bubble(model_1b3):
    pp = estimate(model_1b3, 2048, 1024, 8, 64, Layout("PP 4", pp=4), 0.45, Hardware(overlap=1.0))
    dp = estimate(model_1b3, 2048, 1024, 8, 16, LAYOUTS["zero1"], 0.45, Hardware(overlap=1.0))
    micro_steps = 1024 // (16 * 8)
    assert pp.compute_s == pytest.approx(dp.compute_s / 4 * (1 + 3 / micro_steps))  # a quarter of the layers


def test_cli_from_a_measured_single_gpu_throughput(tmp_path, capsys):
    import json

    from dist_llm.cli import main

    out = tmp_path / "scaling.json"
    assert (
        main(
            [
                "bench",
                "scaling",
                "--config",
                str(REPO / "configs" / "models" / "125m.yaml"),
                "--tokens-per-s",
                "400000",
                "--gpus",
                "8,64",
                "--layouts",
                "zero1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert "measured 400,000 tokens/s on one GPU" in capsys.readouterr().out
    report = json.loads(out.read_text())[0]
    assert [r["gpus"] for r in report["rows"]] == [8, 64] and report["seq_len"] == 2048
    assert report["rows"][0]["tokens_per_s_per_gpu"] == pytest.approx(400000)  # one node: nothing exposed
