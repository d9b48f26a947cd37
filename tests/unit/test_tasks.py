"""Downstream tasks in process: scoring against log-likelihoods computed by hand with the model's
forward, the data-parallel split, task file errors (file, line, field) before launch, the task made
from the default corpus, the benchmark converters, and the report."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch

from data_prep.tokenizer import load_tokenizer
from dist_llm.callbacks.tasks import TaskEvalCallback, document_start
from dist_llm.cli import main
from dist_llm.config import load_config
from dist_llm.engine.base import TokenScores
from dist_llm.errors import ConfigError, DataError
from dist_llm.launch.preflight import check_training
from dist_llm.metrics.sinks import ConsoleSink, grouped_key
from dist_llm.models.decoder import label_logprobs
from dist_llm.tasks.continuation import DEFAULT_CORPUS_TASKS, write_continuation_task
from dist_llm.tasks.convert import convert
from dist_llm.tasks.files import TASKS_DIR, read_task, read_tasks
from dist_llm.tasks.scoring import score_requests
from tests.conftest import REPO, make_trainer

# Written for these tests; the long context is cut to the last data.seq_len tokens.
COMPLETIONS = [
    {"context": "Return the number of items in the", "target": " list."},
    {"context": "Raise ValueError if the argument is", "target": " negative"},
    {"context": "", "target": "Open the file and return a stream."},
    {"context": "The default value is", "target": " None."},
    {
        "context": " ".join(["Read the next line of the file and split it into fields."] * 12),
        "target": " Done.",
    },
]


def write_jsonl(path, records) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    return str(path)


def default_task(dataset: str, name: str = "docstring_continuation") -> str:
    return os.path.join(dataset, TASKS_DIR, f"{name}.jsonl")


def by_hand(model, tokenizer, prefix: list[int], window: int, context: str, continuation: str):
    """(log-likelihood, greedy) of one continuation from one unpadded forward of the model."""
    ids = prefix + tokenizer.encode(context + continuation)
    n_target = len(ids) - len(prefix) - len(tokenizer.encode(context))
    ids = ids[-(window + 1) :]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]])).float(), dim=-1)[0]
    positions = range(len(ids) - 1 - min(n_target, len(ids) - 1), len(ids) - 1)
    loglik = sum(logp[t, ids[t + 1]].item() for t in positions)
    return loglik, all(logp[t].argmax().item() == ids[t + 1] for t in positions)


@pytest.fixture
def tasks_trainer(tmp_path, dataset):
    """A 1-rank trainer (untrained tiny model) with a multiple-choice and a completion task, on one
    thread: on a 2-core machine busy with other tests, two threads make each forward much slower."""
    with open(default_task(dataset), encoding="utf-8") as f:
        mc = write_jsonl(tmp_path / "docstrings.jsonl", f.read().splitlines()[:16])
    completion = write_jsonl(tmp_path / "completion.jsonl", COMPLETIONS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = make_trainer(
            tmp_path, dataset, [f"eval.tasks=[{mc},{completion}]", "eval.tasks_interval=1"], []
        )
        callback = next(cb for cb in trainer.callbacks if isinstance(cb, TaskEvalCallback))
        callback.on_train_start(trainer)
        yield trainer, callback
    finally:
        torch.set_num_threads(threads)


def test_scores_equal_log_likelihoods_computed_by_hand(tasks_trainer, dataset):
    trainer, callback = tasks_trainer
    record = trainer.history[-1]
    tokenizer = load_tokenizer(os.path.join(dataset, "tokenizer.model"))
    prefix, window = document_start(trainer.data.manifest), trainer.cfg.data.seq_len
    model = trainer.engine.model.eval()
    mc, completion = callback.suite.tasks
    right = right_norm = 0
    lls = []
    for example in mc.examples:
        scores = [
            by_hand(model, tokenizer, prefix, window, example.context, c)[0] for c in example.continuations
        ]
        per_byte = [s / len(c.encode()) for s, c in zip(scores, example.continuations)]
        right += int(np.argmax(scores)) == example.answer
        right_norm += int(np.argmax(per_byte)) == example.answer
        lls.append(scores[example.answer])
    assert record["task/docstrings/acc"] == right / 16
    assert record["task/docstrings/acc_norm"] == right_norm / 16
    assert record["task/docstrings/chance"] == 0.25
    assert record["task/docstrings/loglik"] == pytest.approx(np.mean(lls), rel=1e-5)
    hand = [
        by_hand(model, tokenizer, prefix, window, e.context, e.continuations[0]) for e in completion.examples
    ]
    assert record["task/completion/acc"] == np.mean([greedy for _, greedy in hand])
    assert record["task/completion/loglik"] == pytest.approx(np.mean([ll for ll, _ in hand]), rel=1e-5)
    assert record["task/completion/examples"] == len(COMPLETIONS)
    assert record["task/acc"] == pytest.approx(
        (record["task/docstrings/acc"] + record["task/completion/acc"]) / 2
    )
    assert record["task/acc_norm"] == record["task/docstrings/acc_norm"]


def test_data_parallel_shares_add_up_to_the_whole(tasks_trainer):
    """Each of 2 data-parallel ranks scores its batches; together they give the 1-rank scores,
    bit for bit (same batches, same shapes)."""
    trainer, callback = tasks_trainer
    s = callback.suite
    args = (trainer.engine.score_tokens, s.requests, s.plan, s.shape, s.pad_id)
    whole = score_requests(*args)
    shares = [score_requests(*args, dp_rank=r, dp=2) for r in (0, 1)]
    assert np.array_equal(shares[0] + shares[1], whole)
    assert np.count_nonzero(shares[0][0]) and np.count_nonzero(shares[1][0])


def test_greedy_flags_and_ignored_labels():
    logits = torch.tensor([[[0.0, 2.0, 1.0], [3.0, 3.0, 0.0], [1.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, 1, -100]])
    picked, best = label_logprobs(logits, labels)
    scores = TokenScores.from_logprobs(picked, best, labels)
    logp = torch.log_softmax(logits, dim=-1)[0]
    assert torch.allclose(scores.logprobs[0], torch.stack([logp[0, 1], logp[1, 1], torch.tensor(0.0)]))
    # Position 1 is a tie between tokens 0 and 1: the label is a most likely token.
    assert scores.greedy.tolist() == [[True, True, True]]
    wrong = torch.tensor([[2, 1, -100]])
    assert TokenScores.from_logprobs(*label_logprobs(logits, wrong), wrong).greedy.tolist() == [
        [False, True, True]
    ]


MC = {"context": "a", "choices": [" b", " c"], "answer": 1}


@pytest.mark.parametrize(
    "lines, where, message",
    [
        ([MC, '{"context": "a", "choices": [" b"'], ":2:", "not valid JSON"),
        ([MC, {"choices": [" b", " c"], "answer": 0}], ":2:", "field 'context' must be a string"),
        ([{**MC, "answer": 2}], ":1:", "field 'answer' must be the index of the right choice"),
        ([{**MC, "answer": True}], ":1:", "field 'answer'"),
        ([{"context": "a", "choices": " b", "answer": 0}], ":1:", "field 'choices' must be a list"),
        ([{"context": "a", "choices": [" b", ""], "answer": 0}], ":1:", "field 'choices'"),
        ([{"context": "a", "choices": [" b", " c"]}], ":1:", "field 'answer'"),
        ([{"context": "a", "target": ""}], ":1:", "field 'target' must be a non-empty string"),
        ([{**MC, "target": " b"}], ":1:", "has both 'choices'"),
        ([{"context": "a", "label": 0}], ":1:", "no field 'choices'"),
        ([MC, "", {"context": "a", "target": " b"}], ":3:", "made this a multiple-choice task"),
        (["[1, 2]"], ":1:", "a JSON list"),
        ([], "", "no examples"),
    ],
)
def test_malformed_task_file_names_file_line_and_field(tmp_path, lines, where, message):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError, match="bad.jsonl" + where) as err:
        read_task(path, "bad")
    assert message in str(err.value)


def test_task_files_are_checked_before_launch(tmp_path, dataset):
    bad = tmp_path / "broken.jsonl"
    bad.write_bytes(json.dumps(MC).encode() + b"\n" + b'{"context": "\xff", "target": " x"}\n')
    config = str(REPO / "configs" / "tiny.yaml")
    with pytest.raises(DataError, match=r"broken\.jsonl:2: not UTF-8"):
        check_training(config, [f"data.path={dataset}", f"eval.tasks=[{bad}]"], 2)
    with pytest.raises(DataError, match=r"missing\.jsonl: not found"):
        check_training(config, [f"data.path={dataset}", f"eval.tasks=[{tmp_path}/missing.jsonl]"], 2)
    # The main job's task, named bare: the file `dist-llm prep` wrote into the dataset.
    cfg = check_training(config, [f"data.path={dataset}"], 2)
    assert [t.name for t in read_tasks(cfg.eval, dataset)] == list(DEFAULT_CORPUS_TASKS)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["eval.tasks=[x]", "model.arch=encoder", "data.objective=mlm"], "model.arch='encoder' is not one"),
        (["eval.tasks=[a/arc.jsonl, b/arc.jsonl]"], "same name 'arc'"),
        (["eval.tasks=[a/arc v2.jsonl]"], "task name 'arc v2'"),
        (["eval.tasks_interval=-1"], "eval.tasks_interval=-1 must be >= 0"),
        (["eval.tasks=a.jsonl"], "eval.tasks must be a list"),
    ],
)
def test_eval_config_checks(overrides, message):
    with pytest.raises(ConfigError, match="override") as err:
        load_config(str(REPO / "configs" / "tiny.yaml"), overrides).validate(world_size=2)
    assert message in str(err.value)


def test_default_corpus_tasks_are_deterministic(tmp_path, dataset):
    again = str(tmp_path / "again.jsonl")
    assert write_continuation_task(dataset, again) > 100
    with open(default_task(dataset), "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read()
    documents, shuffled = (read_task(default_task(dataset, name), name) for name in DEFAULT_CORPUS_TASKS)
    for task in (documents, shuffled):
        assert task.kind == "multiple_choice" and {len(e.continuations) for e in task.examples} == {4}
        assert {e.answer for e in task.examples} == {0, 1, 2, 3}
        # Every choice is 8 words after a space; the contexts are the same passages in both tasks.
        assert all(len(c.split()) == 8 and c.startswith(" ") for e in task.examples for c in e.continuations)
    assert [e.context for e in documents.examples] == [e.context for e in shuffled.examples]
    for d, s in zip(documents.examples, shuffled.examples):
        truth = d.continuations[d.answer]
        assert s.continuations[s.answer] == truth and truth not in d.continuations[: d.answer]
        assert all(sorted(c.split()) == sorted(truth.split()) for c in s.continuations)
    five = str(tmp_path / "five.jsonl")
    assert main(["tasks", "make", dataset, "--out", five, "--choices", "5", "--distractors", "shuffled"]) == 0
    assert {len(e.continuations) for e in read_task(five, "five").examples} == {5}


def test_converters_map_the_public_fields(tmp_path, capsys):
    hellaswag = write_jsonl(
        tmp_path / "hs.jsonl",
        [
            {
                "activity_label": "Baking",
                "ctx_a": "A man mixes flour.",
                "ctx_b": "he",
                "endings": ["pours [header] milk.", "runs away.", "sings.", "sleeps."],
                "label": "0",
            }
        ],
    )
    arc = write_jsonl(
        tmp_path / "arc.jsonl",
        [
            {
                "id": "q1",
                "question": {
                    "stem": "Which is a metal?",
                    "choices": [{"text": "wood", "label": "A"}, {"text": "iron", "label": "B"}],
                },
                "answerKey": "B",
            }
        ],
    )
    piqa = write_jsonl(
        tmp_path / "piqa.jsonl", [{"goal": "Dry a cup", "sol1": "use a towel", "sol2": "use water"}]
    )
    labels = tmp_path / "piqa-labels.lst"
    labels.write_text("0\n")
    out = {name: str(tmp_path / f"{name}_task.jsonl") for name in ("hs", "arc", "piqa")}
    assert main(["tasks", "convert", "hellaswag", hellaswag, "--out", out["hs"]]) == 0
    assert main(["tasks", "convert", "arc", arc, "--out", out["arc"]]) == 0
    assert main(["tasks", "convert", "piqa", piqa, "--out", out["piqa"], "--labels", str(labels)]) == 0
    assert capsys.readouterr().out.count("1 multiple-choice examples") == 3
    (hs,) = read_task(out["hs"], "hs").examples
    assert (
        hs.context == "Baking: A man mixes flour. He"
        and hs.continuations[0] == " pours milk."
        and hs.answer == 0
    )
    (q,) = read_task(out["arc"], "arc").examples
    assert (
        q.context == "Question: Which is a metal?\nAnswer:"
        and q.continuations == [" wood", " iron"]
        and q.answer == 1
    )
    (p,) = read_task(out["piqa"], "piqa").examples
    assert p.context == "Question: Dry a cup\nAnswer:" and p.continuations == [" use a towel", " use water"]
    with pytest.raises(DataError, match=r"piqa\.jsonl:1: no field 'label'"):
        convert("piqa", piqa, str(tmp_path / "x.jsonl"))
    broken = write_jsonl(
        tmp_path / "arc2.jsonl", [{"question": {"stem": "?", "choices": []}, "answerKey": "A"}]
    )
    with pytest.raises(DataError, match=r"arc2\.jsonl:1: field 'question.choices'"):
        convert("arc", broken, str(tmp_path / "x.jsonl"))


def test_report_draws_and_summarizes_tasks(tmp_path, capsys):
    train = [
        {"step": s, "loss": 5.0 - s, "lr": 1e-3, "tokens_per_s": 10.0, "consumed_tokens": 8 * s}
        for s in (1, 2)
    ]
    tasks = [
        {
            "step": s,
            "task/acc": a,
            "task/acc_norm": a,
            "task/t/acc": a,
            "task/t/acc_norm": a,
            "task/t/chance": 0.25,
            "task/t/loglik": -9.0,
            "task/t/examples": 40,
            "task/seconds": 1.0,
        }
        for s, a in ((0, 0.25), (2, 0.5))
    ]
    write_jsonl(tmp_path / "metrics.jsonl", [tasks[0], *train, tasks[1]])
    assert main(["report", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    assert str(tmp_path / "report" / "tasks.png") in printed
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "## Downstream tasks" in summary
    assert "| t | acc 0.250 (step 0) -> 0.500 (step 2), best 0.500 (step 2);" in summary
    assert "chance 0.250; 40 examples |" in summary


def test_console_line_and_dashboard_keys(warnings_log):
    record = {"step": 50, "task/acc": 0.5, "task/acc_norm": 0.25, "task/t/acc": 0.5, "task/t/acc_norm": 0.25}
    record |= {"task/t/chance": 0.25, "task/t/examples": 40, "task/seconds": 1.0}
    warnings_log.set_level(logging.INFO, logger="dist_llm")
    ConsoleSink(max_steps=100).write(record)
    assert (
        "step 50 | task acc 0.500 acc_norm 0.250 | t acc 0.500 acc_norm 0.250 (chance 0.250), 40 examples"
        in (warnings_log.text)
    )
    # W&B and TensorBoard show them under their own section, as logged.
    assert [grouped_key(k) for k in ("task/t/acc", "task/acc", "val_loss")] == [
        "task/t/acc",
        "task/acc",
        "eval/val_loss",
    ]
