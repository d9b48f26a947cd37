"""`dist-llm bench peer`: the built-in nanoGPT is GPT-2 shaped and trains, and the benchmark runs
ours and a nanoGPT (built-in or from a checkout directory) side by side end to end."""

import json
import textwrap

import pytest
import torch

from dist_llm.bench import nanogpt
from dist_llm.cli import main
from dist_llm.errors import ConfigError
from tests.conftest import REPO, SMALL_MODEL

FAKE_MODEL_PY = '''
"""A stand-in for nanoGPT's model.py: same GPT/GPTConfig interface, a bigram model inside."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def forward(self, idx, targets):
        logits = self.lm_head(self.wte(idx))
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        return torch.optim.AdamW(self.parameters(), lr=learning_rate, betas=betas, weight_decay=weight_decay)
'''


@pytest.mark.parametrize("bias", [False, True])
def test_parameter_count_is_gpt2s(bias):
    V, T, L, d = 100, 16, 2, 32
    model = nanogpt.GPT(
        nanogpt.GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=4, n_embd=d, bias=bias)
    )
    # Per block: qkv 3d^2, attention out d^2, MLP 8d^2, two LayerNorm gains; plus the final gain.
    # Biases: 3d + d + 4d + d in the Linears and two LayerNorm biases per block, one final.
    expected = V * d + T * d + L * (12 * d * d + 2 * d) + d
    if bias:
        expected += L * (11 * d) + d
    assert sum(p.numel() for p in model.parameters()) == expected  # the tied LM head counted once
    assert model.lm_head.weight is model.transformer.wte.weight


def test_a_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = nanogpt.GPT(
        nanogpt.GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32, bias=False)
    )
    optimizer = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu")
    tokens = torch.randint(0, 64, (4, 17))
    micro_batches = [
        {"input_ids": rows[:, :-1].contiguous(), "labels": rows[:, 1:].contiguous()}
        for rows in tokens.split(2)
    ]
    cpu = torch.device("cpu")
    first = nanogpt.train_step(model, optimizer, micro_batches, 1e-2, 1.0, cpu)
    second = nanogpt.train_step(model, optimizer, micro_batches, 1e-2, 1.0, cpu)
    assert second < first


def _bench(dataset: str, out: str, *extra: str) -> dict:
    assert (
        main(
            [
                "bench",
                "peer",
                "--config",
                str(REPO / "configs" / "tiny.yaml"),
                f"data.path={dataset}",
                *SMALL_MODEL,
                "--threads",
                "1",
                "--json",
                out,
                *extra,
            ]
        )
        == 0
    )
    with open(out) as f:
        return json.load(f)[0]


def test_bench_peer_end_to_end(dataset, tmp_path, capsys):
    result = _bench(dataset, str(tmp_path / "peer.json"), "--steps", "6", "--warmup", "2")
    ours, theirs = result["ours"], result["nanogpt"]
    assert ours["tokens_per_s"] > 0 and theirs["tokens_per_s"] > 0
    assert result["ratio"] == pytest.approx(ours["tokens_per_s"] / theirs["tokens_per_s"])
    assert ours["precision"] == theirs["precision"] == "fp32" and result["threads"] == 1
    assert len(ours["losses"]) == len(theirs["losses"]) == len(theirs["step_times_ms"]) == 6
    # Same init scale, same batches: both start at about ln(vocab) and within a hair of each other.
    assert ours["losses"][0] == pytest.approx(theirs["losses"][0], abs=0.05)
    # The ceiling: nanoGPT's N is its Linear weights, i.e. every parameter but the position table
    # and the norm gains (the tied head counted once); the goal is priced in our FLOPs per token
    # against the best peak measured in the run.
    d, layers, seq = 64, 2, 64
    linear_weights = theirs["params"] - seq * d - layers * 2 * d - d
    assert theirs["flops_per_token"] == 6 * linear_weights + 12 * layers * d * seq
    for run in (ours, theirs):
        assert run["achieved_tflops"] == pytest.approx(run["tokens_per_s"] * run["flops_per_token"] / 1e12)
    assert set(result["peaks_tflops"]) == {"bf16", "fp32"} and min(result["peaks_tflops"].values()) > 0
    best_peak = max(result["peaks_tflops"].values())
    goal = 2.5 * theirs["tokens_per_s"] * ours["flops_per_token"] / 1e12
    assert result["goal_tflops"] == pytest.approx(goal)
    assert result["goal_vs_peak"] == pytest.approx(result["goal_tflops"] / best_peak)
    out = capsys.readouterr().out
    assert "ours / nanoGPT tokens/s" in out and "matmul peak measured here" in out


def test_bench_peer_imports_a_checkout(dataset, tmp_path):
    checkout = tmp_path / "nanoGPT"
    checkout.mkdir()
    (checkout / "model.py").write_text(textwrap.dedent(FAKE_MODEL_PY))
    result = _bench(
        dataset, str(tmp_path / "peer.json"), "--steps", "3", "--warmup", "1", "--nanogpt-dir", str(checkout)
    )
    assert str(checkout) in result["nanogpt"]["name"]
    assert result["nanogpt"]["params"] == 2 * 1024 * 64  # the bigram model: untied embedding + head
    assert result["nanogpt"]["tokens_per_s"] > 0


def test_a_checkout_without_model_py_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no model.py"):
        nanogpt.load_checkout(str(tmp_path))
