"""Scoring task examples by log-likelihood, as lm-eval-harness scores multiple-choice and
`loglikelihood` tasks, on the model being trained, through `Engine.score_tokens`.

- A request is a context followed by one continuation. Its tokens are the document start the
  training data uses (EOS, plus BOS if prep added one), then encode(context), then what
  encode(context + continuation) adds beyond encode(context)'s length: the continuation's tokens.
  A request longer than the training window keeps its last `window` + 1 tokens (the start of the
  context goes first). Its score is the sum of the continuation tokens' log-probabilities.
- Multiple-choice: `acc` counts examples whose right choice has the highest log-likelihood,
  `acc_norm` those where it has the highest log-likelihood per UTF-8 byte of the choice; ties go to
  the first choice. `chance` is the mean of 1/choices.
- Completion: `acc` counts targets that greedy decoding would produce token for token (every target
  token is a most likely next token).
- Both: `loglik` is the mean log-likelihood of the right continuation in nats (a smooth companion
  to the accuracies).
- `task/acc` averages `acc` over tasks, `task/acc_norm` averages `acc_norm` over multiple-choice
  tasks: each task counts once, whatever its size.

Data parallelism: every rank tokenizes all requests (cheap next to the forwards) and cuts them into
the same batches: sorted by length, `rows` requests each, padded to the longest of the batch. Batch
k runs on data-parallel rank k % dp, so each rank runs the forwards of 1/dp of the examples. Batch
contents and shapes do not depend on the number of ranks, so neither do the scores: results are the
same, bit for bit, on any number of ranks. Sharded models gather their parameters in every
forward, so a rank with one batch fewer runs an empty one. The per-request scores are then summed
over ranks (each request is scored by one replica, the others add zeros), and every rank computes
the metrics from all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from data_prep.tokenizer import Tokenizer
from dist_llm.data.batch import Batch
from dist_llm.distributed import all_reduce_sum
from dist_llm.engine.base import TokenScores
from dist_llm.tasks.files import MULTIPLE_CHOICE, Task

ScoreFn = Callable[[Batch], TokenScores]
PAD_MULTIPLE = 8
"""Batch lengths are rounded up to a multiple of this (times the tensor-parallel degree), so a
compiled model sees few distinct shapes."""


@dataclass
class Requests:
    """All requests of all tasks, in task, example, continuation order."""

    tokens: list[np.ndarray]
    """Each request's tokens (input = all but the last, labels = all but the first)."""
    targets: np.ndarray
    """How many of each request's last tokens are the continuation (the scored labels)."""
    nbytes: np.ndarray
    """UTF-8 bytes of each continuation (acc_norm)."""


def tokenize(tasks: list[Task], tokenizer: Tokenizer, prefix: list[int], window: int) -> Requests:
    """The requests of every example of `tasks`."""
    tokens, targets, nbytes = [], [], []
    for task in tasks:
        contexts = [e.context for e in task.examples]
        wholes = [e.context + c for e in task.examples for c in e.continuations]
        context_ids = tokenizer.encode_batch(contexts)
        whole_ids = iter(tokenizer.encode_batch(wholes))
        for example, ctx in zip(task.examples, context_ids):
            for continuation in example.continuations:
                ids = prefix + next(whole_ids)
                # At least one token each: a continuation the tokenizer merged into the context's
                # last token is scored from that token on, as the harness does.
                n_target = max(1, len(ids) - len(prefix) - len(ctx))
                ids = ids[-(window + 1) :]
                tokens.append(np.asarray(ids, dtype=np.int32))
                targets.append(min(n_target, len(ids) - 1))
                nbytes.append(len(continuation.encode("utf-8")))
    return Requests(tokens, np.asarray(targets, dtype=np.int64), np.asarray(nbytes, dtype=np.int64))


def plan_batches(requests: Requests, rows: int) -> list[np.ndarray]:
    """Request indices of each batch: longest first (ties in request order), `rows` per batch."""
    lengths = np.asarray([len(t) for t in requests.tokens])
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + rows] for i in range(0, len(order), rows)]


def make_batch(
    requests: Requests, chosen: np.ndarray, rows: int, multiple: int, window: int, pad_id: int
) -> Batch:
    """`rows` x the longest chosen request, rounded up to `multiple` but not past `window` (which
    the tensor-parallel degree divides): labels are the continuation tokens, -100 elsewhere (context,
    padding, and the empty rows of a short or empty batch)."""
    longest = max((len(requests.tokens[r]) - 1 for r in chosen), default=1)
    length = min(-(-longest // multiple) * multiple, window)
    input_ids = torch.full((rows, length), pad_id, dtype=torch.int64)
    labels = torch.full((rows, length), -100, dtype=torch.int64)
    for row, r in enumerate(chosen):
        ids, k = torch.from_numpy(requests.tokens[r]).long(), int(requests.targets[r])
        input_ids[row, : len(ids) - 1] = ids[:-1]
        labels[row, len(ids) - 1 - k : len(ids) - 1] = ids[-k:]
    return {"input_ids": input_ids, "labels": labels}


def my_batches(plan: list[np.ndarray], dp_rank: int, dp: int) -> Iterator[np.ndarray]:
    """This data-parallel rank's batches (k % dp == dp_rank), then empty ones up to the count every
    rank runs."""
    for k in range(dp_rank, math.ceil(len(plan) / dp) * dp, dp):
        yield plan[k] if k < len(plan) else np.zeros(0, dtype=np.int64)


def score_requests(
    score_fn: ScoreFn,
    requests: Requests,
    plan: list[np.ndarray],
    shape: tuple[int, int, int],
    pad_id: int,
    dp_rank: int = 0,
    dp: int = 1,
) -> np.ndarray:
    """[2, requests] float64: each continuation's log-likelihood and whether greedy decoding produces
    it (1/0), for the requests of this rank's batches; zeros elsewhere. `shape`: rows per batch,
    the multiple and the window of their lengths (`make_batch`)."""
    scores = np.zeros((2, len(requests.tokens)))
    for chosen in my_batches(plan, dp_rank, dp):
        result = score_fn(make_batch(requests, chosen, *shape, pad_id))
        n = len(chosen)
        scores[0, chosen] = result.logprobs[:n].double().sum(dim=1).cpu().numpy()
        scores[1, chosen] = result.greedy[:n].all(dim=1).cpu().numpy()
    return scores


def metrics(tasks: list[Task], requests: Requests, scores: np.ndarray) -> dict[str, float]:
    """Flat metric keys (task/<name>/acc, ..., task/acc) from every request's scores."""
    loglik, greedy = scores
    out: dict[str, float] = {}
    accs, accs_norm = [], []
    r = 0
    for task in tasks:
        right = right_norm = chance = right_loglik = 0.0
        for example in task.examples:
            k = len(example.continuations)
            ll = loglik[r : r + k]
            if task.kind == MULTIPLE_CHOICE:
                right += np.argmax(ll) == example.answer
                right_norm += np.argmax(ll / requests.nbytes[r : r + k]) == example.answer
                chance += 1 / k
            else:
                right += greedy[r]
            right_loglik += ll[example.answer]
            r += k
        n = len(task.examples)
        key = f"task/{task.name}"
        out[f"{key}/acc"] = float(right / n)
        accs.append(right / n)
        if task.kind == MULTIPLE_CHOICE:
            out[f"{key}/acc_norm"] = float(right_norm / n)
            out[f"{key}/chance"] = chance / n
            accs_norm.append(right_norm / n)
        out[f"{key}/loglik"] = float(right_loglik / n)
        out[f"{key}/examples"] = n
    out["task/acc"] = float(np.mean(accs))
    if accs_norm:
        out["task/acc_norm"] = float(np.mean(accs_norm))
    return out


class TaskSuite:
    """The task examples, tokenized and planned into batches once; `evaluate` scores them with the
    current weights."""

    def __init__(
        self,
        tasks: list[Task],
        tokenizer: Tokenizer,
        prefix: list[int],
        window: int,
        rows: int,
        tp: int = 1,
    ) -> None:
        """`window`: most tokens a request may feed the model (data.seq_len); `rows` per batch;
        `tp`: tensor-parallel degree, which must divide every batch's length."""
        self.tasks = tasks
        self.requests = tokenize(tasks, tokenizer, prefix, window)
        self.plan = plan_batches(self.requests, rows)
        self.shape = (rows, math.lcm(PAD_MULTIPLE, tp), window)
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else prefix[0]

    def evaluate(
        self,
        score_fn: ScoreFn,
        device: torch.device,
        dp_rank: int = 0,
        dp: int = 1,
        contributes: bool = True,
    ) -> dict[str, float]:
        """Every rank calls this together; `device` holds the reduction (NCCL reduces device
        tensors only); `contributes`: this rank adds its scores (false on all but one rank of a
        replica, whose tensor and pipeline peers compute the same)."""
        scores = score_requests(score_fn, self.requests, self.plan, self.shape, self.pad_id, dp_rank, dp)
        total = torch.from_numpy(scores if contributes else np.zeros_like(scores)).to(device)
        return metrics(self.tasks, self.requests, all_reduce_sum(total).cpu().numpy())
