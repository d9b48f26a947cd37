"""The GPU benchmark configs (`configs/gpu/`) pass the same pre-launch check as `dist-llm train`
on the built-in corpus, and are the issue's shapes: the 125M and 1.3B presets at sequence 2048 in
bf16 on CUDA, compiled, one rank."""

import glob
import os

import pytest

from dist_llm.launch.preflight import check_training
from dist_llm.models import count_params
from tests.conftest import REPO

GPU_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "gpu", "*.yaml")))


def test_both_issue_presets_have_a_config():
    assert [os.path.basename(p) for p in GPU_CONFIGS] == ["h100_1.3b.yaml", "h100_125m.yaml"]


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=os.path.basename)
def test_gpu_config_passes_the_launch_check(path, dataset):
    cfg = check_training(path, [f"data.path={dataset}"], 1)
    assert cfg.data.seq_len == cfg.model.max_seq_len == 2048
    assert cfg.train.precision == "auto" and cfg.engine.compile and cfg.launch.nproc_per_node == 1
    expected = {"h100_125m.yaml": 134_105_856, "h100_1.3b.yaml": 1_345_423_360}[os.path.basename(path)]
    assert count_params(cfg.model) == expected
