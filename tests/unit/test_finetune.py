"""`dist-llm finetune`: sequence and token classification heads on a real (briefly pretrained)
decoder checkpoint, from generated JSONL and CSV files; the metrics, the output directory, and the
errors that name file:line and field."""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
import subprocess
import sys
import time

import pytest
import torch

from dist_llm.errors import ConfigError, DataError
from dist_llm.finetune import FinetuneConfig, finetune, load_finetuned
from dist_llm.finetune.backbone import BACKBONES, make_backbone
from dist_llm.finetune.encode import IGNORE, collate, encode_examples, framing
from dist_llm.finetune.loop import evaluate, rank_batches
from dist_llm.finetune.metrics import sequence_metrics, token_metrics
from tests.conftest import REPO, free_port, make_trainer

# Words that are frequent in the default corpus (stdlib docstrings), so the tokenizer knows them.
FILLER = [
    "the",
    "a",
    "of",
    "to",
    "is",
    "and",
    "in",
    "for",
    "this",
    "that",
    "with",
    "be",
    "as",
    "by",
    "value",
    "object",
    "function",
    "method",
    "return",
    "name",
    "data",
    "default",
    "type",
    "new",
]
FAMILIES = {
    "io": ["file", "path", "directory", "read", "write", "open"],
    "sync": ["thread", "lock", "process", "queue", "signal", "wait"],
    "text": ["string", "bytes", "character", "encoding", "unicode", "format"],
}
TAGS = {"io": "IO", "sync": "SYNC", "text": "TEXT"}


def seq_rows(n: int, seed: int) -> list[dict]:
    """A sentence of filler words with one or two keywords of one family; the family is the label."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        family = rng.choice(sorted(FAMILIES))
        words = [rng.choice(FILLER) for _ in range(rng.randint(5, 9))]
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randint(0, len(words)), rng.choice(FAMILIES[family]))
        rows.append({"text": " ".join(words), "label": family})
    return rows


def token_rows(n: int, seed: int) -> list[dict]:
    """Each word is a keyword (tagged with its family) with probability 0.3, else filler tagged O."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(5, 10)):
            if rng.random() < 0.3:
                family = rng.choice(sorted(FAMILIES))
                words.append(rng.choice(FAMILIES[family]))
                tags.append(TAGS[family])
            else:
                words.append(rng.choice(FILLER))
                tags.append("O")
        rows.append({"tokens": words, "tags": tags})
    return rows


def write_jsonl(path, rows: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return str(path)


def write_csv(path, rows: list[dict]) -> str:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: " ".join(v) if isinstance(v, list) else v for k, v in row.items()})
    return str(path)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory, dataset) -> str:
    """A real decoder checkpoint: the small test model after a few pretraining steps."""
    run_dir = tmp_path_factory.mktemp("pretrain") / "run"
    make_trainer(run_dir, dataset, ["train.max_steps=4"], []).fit()
    return str(run_dir)


def config(backbone: str, tmp_path, train: str, eval_: str, **kw) -> FinetuneConfig:
    settings = {"epochs": 4, "batch_size": 16, "lr": 2e-3, "max_length": 32, "warmup_ratio": 0.1, **kw}
    return FinetuneConfig(backbone=backbone, train=train, eval=eval_, out=str(tmp_path / "out"), **settings)


def test_sequence_classification_learns_and_reloads(backbone, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", seq_rows(240, seed=1))
    evaluation = write_jsonl(tmp_path / "eval.jsonl", seq_rows(60, seed=2))
    cfg = config(backbone, tmp_path, train, evaluation)
    start = time.perf_counter()
    final = finetune(cfg)
    print(f"seq fine-tune: {time.perf_counter() - start:.1f}s, {final}")
    assert final["accuracy"] >= 0.9 and final["macro_f1"] >= 0.9, final
    assert final["epoch"] == 4 and final["step"] == 4 * 15

    out = cfg.out
    assert sorted(os.listdir(out)) == [
        "finetune.json",
        "metrics.jsonl",
        "model.safetensors",
        "tokenizer.model",
    ]
    with open(os.path.join(out, "metrics.jsonl")) as f:
        epochs = [json.loads(line) for line in f]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4] and epochs[-1] == final
    with open(os.path.join(out, "finetune.json")) as f:
        summary = json.load(f)
    assert summary["labels"] == ["io", "sync", "text"] and summary["final"] == final
    assert summary["best"]["accuracy"] == max(e["accuracy"] for e in epochs)

    # The directory alone gives back the same model: same eval counts as the run's last epoch.
    reloaded = load_finetuned(out)
    from dist_llm.finetune.data import read_examples

    examples = read_examples(evaluation, cfg)
    encoded = encode_examples(
        examples,
        reloaded.tokenizer,
        framing("decoder", reloaded.tokenizer),
        reloaded.labels,
        cfg.max_length,
        evaluation,
    )
    from dist_llm.distributed import World

    world = World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))
    matrix, loss = evaluate(reloaded.model, encoded, 3, cfg, world, 0, per_token=False)
    assert sequence_metrics(matrix)["accuracy"] == final["accuracy"]
    assert loss == pytest.approx(final["eval_loss"], rel=1e-6)


def test_csv_and_jsonl_give_bitwise_identical_runs(backbone, tmp_path):
    """The readers agree, and a CPU run is a function of its seed."""
    rows, eval_rows = seq_rows(48, seed=3), seq_rows(16, seed=4)
    runs = []
    for kind, write in (("jsonl", write_jsonl), ("csv", write_csv)):
        cfg = config(
            backbone,
            tmp_path / kind,
            write(tmp_path / f"train.{kind}", rows),
            write(tmp_path / f"eval.{kind}", eval_rows),
            epochs=1,
        )
        runs.append((finetune(cfg), load_finetuned(cfg.out).model.state_dict()))
    (first, weights_a), (second, weights_b) = runs
    assert first == second
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_bf16_autocast_runs(backbone, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", seq_rows(48, seed=3))
    final = finetune(config(backbone, tmp_path, train, train, epochs=1, precision="bf16"))
    assert 0.0 < final["train_loss"] < 10.0 and 0.0 <= final["accuracy"] <= 1.0


def test_token_classification_from_csv(backbone, tmp_path):
    train = write_csv(tmp_path / "train.csv", token_rows(240, seed=5))
    evaluation = write_csv(tmp_path / "eval.csv", token_rows(60, seed=6))
    cfg = config(backbone, tmp_path, train, evaluation, task="token", epochs=3)
    start = time.perf_counter()
    final = finetune(cfg)
    print(f"token fine-tune: {time.perf_counter() - start:.1f}s, {final}")
    assert final["micro_f1"] >= 0.9 and final["token_accuracy"] >= 0.9, final
    assert load_finetuned(cfg.out).labels == ["IO", "O", "SYNC", "TEXT"]


def pair_rows(n: int, seed: int) -> list[dict]:
    """A pair task: a filler sentence, then the keyword sentence whose family is the label."""
    rng = random.Random(seed)
    return [
        {
            "premise": " ".join(rng.choice(FILLER) for _ in range(rng.randint(3, 6))),
            "hypothesis": row["text"],
            "label": row["label"],
        }
        for row in seq_rows(n, seed)
    ]


def hf_backbone(arch: str, backbone: str, out: str) -> str:
    """An HF model directory of this family: the decoder checkpoint exported, or a freshly initialized
    model of the other families saved with the same tokenizer."""
    from dist_llm.data.sources import tokenizer_path
    from dist_llm.interop import export_hf, save_hf_model
    from dist_llm.models import ModelConfig, build_model

    if arch == "decoder":
        return export_hf(backbone, out)
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, vocab_size=1024, d_model=64, n_layers=2, n_heads=4, max_seq_len=64)
    from dist_llm.evaluate import load_trained_model

    data = load_trained_model(backbone).cfg.data.path
    return save_hf_model(build_model(cfg).state_dict(), cfg, out, tokenizer_path(data))


@pytest.mark.parametrize("arch", ["decoder", "encoder", "encoder_decoder"])
def test_text_pairs_on_an_hf_directory_of_each_family(arch, backbone, tmp_path):
    """The HF path (import + the directory's own tokenizer), pair framing, and each family's adapter."""
    hf_dir = hf_backbone(arch, backbone, str(tmp_path / "hf"))
    train = write_jsonl(tmp_path / "train.jsonl", pair_rows(240, seed=7))
    evaluation = write_jsonl(tmp_path / "eval.jsonl", pair_rows(60, seed=8))
    # A randomly initialized BERT learns the pair task through its <cls> pooler more slowly than
    # the pretrained decoder (measured: 0.65 accuracy after 4 epochs, 1.0 after 12).
    epochs = 12 if arch == "encoder" else 4
    cfg = config(
        hf_dir, tmp_path, train, evaluation, text_field="premise", text_pair_field="hypothesis", epochs=epochs
    )
    start = time.perf_counter()
    final = finetune(cfg)
    print(f"{arch} pair fine-tune from HF dir: {time.perf_counter() - start:.1f}s, {final}")
    assert final["accuracy"] >= 0.9, final
    with open(os.path.join(cfg.out, "finetune.json")) as f:
        summary = json.load(f)
    assert summary["arch"] == arch and summary["tokenizer"] == "tokenizer"  # the HF tokenizer, copied
    if arch == "encoder_decoder":
        assert any(name.startswith("backbone.model.decoder.") for name in summary["frozen"])


def test_first_subword_carries_the_tag(backbone, tmp_path):
    from data_prep.tokenizer import load_tokenizer
    from dist_llm.data.sources import tokenizer_path
    from dist_llm.evaluate import load_trained_model
    from dist_llm.finetune.data import TokenExample

    tok = load_tokenizer(tokenizer_path(load_trained_model(backbone).cfg.data.path))
    words = ["the", "xylophonically", "thread"]
    example = TokenExample("t:1", words, ["O", "X", "Y"])
    frame = framing("decoder", tok)
    (encoded,) = encode_examples([example], tok, frame, ["O", "X", "Y"], 64, "t")
    pieces = [tok.encode(w) for w in words]
    assert len(pieces[1]) > 1  # the rare word splits into several subwords
    assert encoded.input_ids == [tok.eos_id, *pieces[0], *pieces[1], *pieces[2], tok.eos_id]
    word_labels = [[tag] + [IGNORE] * (len(p) - 1) for tag, p in zip((0, 1, 2), pieces)]
    assert encoded.labels == [IGNORE, *sum(word_labels, []), IGNORE]
    # Truncation keeps the special tokens and drops the words that do not fit.
    (short,) = encode_examples([example], tok, frame, ["O", "X", "Y"], 3, "t")
    assert short.input_ids == [tok.eos_id, pieces[0][0], tok.eos_id] and short.labels == [IGNORE, 0, IGNORE]
    batch = collate([encoded, short], pad=0, per_token=True)
    assert batch["labels"][1].tolist() == [IGNORE, 0, IGNORE] + [IGNORE] * (len(encoded.labels) - 3)
    assert batch["attention_mask"].sum(dim=1).tolist() == [len(encoded.input_ids), 3]


def test_metric_definitions():
    # gold rows, predicted columns; labels IO, O, SYNC
    matrix = torch.tensor([[3, 1, 0], [1, 10, 0], [0, 2, 2]])
    seq = sequence_metrics(matrix)
    assert seq["accuracy"] == pytest.approx(15 / 19)
    f1 = [2 * 3 / (4 + 4), 2 * 10 / (13 + 11), 2 * 2 / (2 + 4)]
    assert seq["macro_f1"] == pytest.approx(sum(f1) / 3)
    tok = token_metrics(matrix, ["IO", "O", "SYNC"], "O")
    # Non-O: tp = 3 + 2, predicted non-O = 4 + 2, gold non-O = 4 + 4.
    assert (tok["precision"], tok["recall"]) == (pytest.approx(5 / 6), pytest.approx(5 / 8))
    assert tok["micro_f1"] == pytest.approx(2 * (5 / 6) * (5 / 8) / (5 / 6 + 5 / 8))
    assert tok["macro_f1"] == pytest.approx((f1[0] + f1[2]) / 2)
    assert tok["token_accuracy"] == seq["accuracy"]


def test_rank_batches_split_every_global_batch():
    order = list(range(10))
    shares = [list(rank_batches(order, 4, rank, 2)) for rank in range(2)]
    assert shares[0] == [[0, 2], [4, 6], [8]] and shares[1] == [[1, 3], [5, 7], [9]]
    # A last batch smaller than the world is topped up so every rank takes part in the step.
    assert [list(rank_batches(order[:5], 4, r, 2))[-1] for r in range(2)] == [[4], [0]]


class StubModel(torch.nn.Module):
    """Stands in for a family's model: records how hidden_states was called; hidden = the ids as floats."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        from dist_llm.models import ModelConfig

        self.cfg = ModelConfig(arch=arch, d_model=2)
        self.calls: list[tuple] = []

    def hidden_states(self, input_ids, *args, **kwargs):
        self.calls.append((args, kwargs))
        return torch.stack([input_ids.float(), -input_ids.float()], dim=-1)

    def pooled(self, hidden):  # BERT's pooler reads the first token
        return hidden[:, 0] * 10


def test_each_family_is_called_and_pooled_its_way():
    assert sorted(BACKBONES) == ["decoder", "encoder", "encoder_decoder"]
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = (ids != 0).long()
    types = torch.tensor([[0, 0, 1, 0], [0, 1, 0, 0]])
    pooled = {}
    for arch in BACKBONES:
        backbone = make_backbone(StubModel(arch))
        pooled[arch] = backbone.pool(backbone(ids, mask, types), mask)[:, 0].tolist()
        args, kwargs = backbone.model.calls[0]
        if arch == "decoder":  # causal and right-padded: no mask needed, and none is accepted
            assert (args, kwargs) == ((), {})
        elif arch == "encoder":
            assert kwargs["token_type_ids"] is types and kwargs["attention_mask"] is mask
        else:
            assert kwargs == {"attention_mask": mask}
    assert pooled == {
        "decoder": [7.0, 9.0],  # the last real token
        "encoder": [50.0, 80.0],  # the pooler on [CLS]
        "encoder_decoder": [6.0, 8.5],
    }  # the mean over real tokens


# ---- errors: named before any model is loaded ------------------------------------------------------


def run_error(tmp_path, train_rows, eval_rows=None, name="train.jsonl", **kw):
    """finetune() on files that fail their checks; the backbone is never read (a dummy path)."""
    backbone = tmp_path / "no-model-needed"
    backbone.mkdir(exist_ok=True)
    train = tmp_path / name
    if isinstance(train_rows, str):
        train.write_text(train_rows)
    else:
        write_jsonl(train, train_rows)
    evaluation = write_jsonl(tmp_path / "eval.jsonl", eval_rows or [{"text": "x", "label": "a"}])
    finetune(config(str(backbone), tmp_path, str(train), evaluation, **kw))


def test_missing_field_names_file_line_and_flag(tmp_path):
    rows = [{"text": "a b", "label": "a"}, {"txt": "c d", "label": "b"}]
    with pytest.raises(
        DataError,
        match=r"train.jsonl:2: field 'text' is missing \(fields: label, txt\); .*"
        r"--text-field",
    ):
        run_error(tmp_path, rows)


def test_unknown_eval_label_names_the_line(tmp_path):
    rows = [{"text": "a", "label": "a"}, {"text": "b", "label": "b"}]
    with pytest.raises(
        DataError,
        match=r"eval.jsonl:2: label 'zzz' does not occur in the training file "
        r"\(its labels: a, b\)",
    ):
        run_error(tmp_path, rows, [{"text": "x", "label": "a"}, {"text": "y", "label": "zzz"}])


def test_file_errors(tmp_path):
    with pytest.raises(DataError, match=r"train.jsonl:2: not valid JSON"):
        run_error(tmp_path, '{"text": "a", "label": 1}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"train.jsonl: no examples"):
        run_error(tmp_path, "\n\n")
    with pytest.raises(DataError, match=r"train.csv:3: 3 values but the header has 2 columns"):
        run_error(tmp_path, 'text,label\n"a, b",x\na,b,c\n', name="train.csv")
    with pytest.raises(DataError, match=r"train.jsonl:1: 2 'tokens' but 1 'tags'"):
        run_error(tmp_path, [{"tokens": ["a", "b"], "tags": ["O"]}], task="token")
    with pytest.raises(DataError, match=r"every example has label 'a'"):
        run_error(tmp_path, [{"text": "x", "label": "a"}])
    with pytest.raises(ConfigError, match=r"--train .*nope.jsonl: no such file"):
        finetune(config(str(tmp_path), tmp_path, str(tmp_path / "nope.jsonl"), str(tmp_path / "nope.jsonl")))
    with pytest.raises(ConfigError, match=r"--epochs 0 must be > 0"):
        run_error(tmp_path, [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}], epochs=0)


def test_cli_checks_flags_before_loading(tmp_path, capsys):
    from dist_llm.finetune.cli import main

    code = main(
        [
            str(tmp_path),
            "--train",
            str(tmp_path / "t.jsonl"),
            "--eval",
            str(tmp_path / "e.jsonl"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2 and "--train " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_gzipped_jsonl_and_integer_labels(tmp_path):
    """Integer labels sort numerically (2 before 10) and equal their CSV spelling."""
    from dist_llm.finetune.data import build_label_map, read_examples

    path = tmp_path / "t.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"text": "a", "label": 10}\n{"text": "b", "label": 2}\n')
    cfg = FinetuneConfig(backbone="", train=str(path), eval=str(path), out="")
    assert build_label_map(read_examples(str(path), cfg)) == ["2", "10"]


def test_token_fields_as_json_lists_in_csv(tmp_path):
    from dist_llm.finetune.data import read_examples

    path = tmp_path / "t.csv"
    path.write_text('tokens,tags\n"[""New York"", ""is""]","B-LOC O"\n')
    cfg = FinetuneConfig(backbone="", train=str(path), eval=str(path), out="", task="token")
    (example,) = read_examples(str(path), cfg)
    assert (example.words, example.tags, example.where) == (["New York", "is"], ["B-LOC", "O"], f"{path}:2")


# ---- several ranks --------------------------------------------------------------------------------


def test_two_ranks_under_torchrun(backbone, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", seq_rows(240, seed=1))
    evaluation = write_jsonl(tmp_path / "eval.jsonl", seq_rows(60, seed=2))
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{free_port()}",
        "-m",
        "dist_llm.finetune.cli",
        backbone,
        "--train",
        train,
        "--eval",
        evaluation,
        "--out",
        str(out),
        "--epochs",
        "4",
        "--lr",
        "2e-3",
        "--max-length",
        "32",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    final = json.loads(proc.stdout.strip().splitlines()[-1])  # printed once, by rank 0
    assert final["accuracy"] >= 0.9 and final["step"] == 4 * 15, final
    with open(out / "metrics.jsonl") as f:
        assert len(f.readlines()) == 4
