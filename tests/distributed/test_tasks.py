"""Downstream task evaluation on real ranks: the same results on 1 rank (in process), on 2 ranks
with FSDP2 and on 2 ranks with DeepSpeed ZeRO-3 (whose forwards gather sharded parameters), at
initialization and after training, with a multiple-choice and a completion task."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_trainer, read_metrics, run_train
from tests.unit.test_tasks import COMPLETIONS, write_jsonl

STEPS = 2
COMMON = [
    f"train.max_steps={STEPS}",
    "train.precision=fp32",
    "checkpoint.interval=0",
    "eval.tasks_interval=2",
    "eval.tasks_max_examples=24",
]
# 1 vs 2 ranks and FSDP2 vs ZeRO-3 train with differently ordered gradient reductions: weights
# differ by ~1e-7 after a step; the log-likelihoods, sums over a few dozen tokens, by <= 4e-7 (measured).
LOGLIK_TOLERANCE = 1e-5


def task_records(records: list[dict]) -> dict[int, dict]:
    return {
        r["step"]: {k: v for k, v in r.items() if k != "task/seconds"} for r in records if "task/acc" in r
    }


@pytest.mark.distributed
def test_same_task_results_on_one_and_two_ranks_and_both_engines(tmp_path, dataset):
    completion = write_jsonl(tmp_path / "completion.jsonl", COMPLETIONS)
    overrides = [*COMMON, f"eval.tasks=[docstring_continuation, {completion}]"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the spawned ranks run (OMP_NUM_THREADS=1)
    try:
        one = task_records(make_trainer(tmp_path / "one", dataset, overrides, []).fit())
    finally:
        torch.set_num_threads(threads)
    runs = {"one rank": one}
    for name, engine in (("fsdp2", []), ("zero3", ["engine.type=deepspeed", "engine.zero_stage=3"])):
        run_train(str(tmp_path / name), dataset, [*overrides, *engine], nproc=2)
        runs[name] = task_records(read_metrics(str(tmp_path / name)))
    for name, records in runs.items():
        assert sorted(records) == [0, STEPS], name
        assert records[0]["task/docstring_continuation/examples"] == 24
        assert records[0]["task/completion/examples"] == len(COMPLETIONS)
    # At initialization every layout holds the same weights and scores the same batches: identical.
    assert runs["fsdp2"][0] == one[0] and runs["zero3"][0] == one[0]
    for name in ("fsdp2", "zero3"):
        trained = runs[name][STEPS]
        for key, value in one[STEPS].items():
            if key.endswith("loglik"):
                assert trained[key] == pytest.approx(value, abs=LOGLIK_TOLERANCE), (name, key)
            else:
                assert trained[key] == value, (name, key)
