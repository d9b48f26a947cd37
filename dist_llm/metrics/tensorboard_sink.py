"""TensorBoard sink: rank 0's metric records as scalars in event files under <run_dir>/tensorboard.

Every number a record carries becomes a scalar at the record's step, tagged as in W&B (train/,
eval/, memory/, checkpoint/); strings (e.g. checkpoint_uri) and missing values are not charts.
A resumed run writes into the same directory, so TensorBoard shows one timeline.
"""

from __future__ import annotations

import os
from typing import Any

from dist_llm.log import get_logger
from dist_llm.metrics.sinks import grouped_key

log = get_logger("metrics")

TENSORBOARD_DIR = "tensorboard"


class TensorBoardSink:
    """`resumed_step`: the step the trainer restored from a checkpoint, 0 for a run from scratch."""

    def __init__(self, run_dir: str, resumed_step: int) -> None:
        # Needs the tensorboard package, and takes seconds to import: only runs that enable it pay.
        from torch.utils.tensorboard import SummaryWriter

        log_dir = os.path.join(run_dir, TENSORBOARD_DIR)
        # TensorBoard hides earlier events at or past purge_step. A resumed run logs again every step
        # after its checkpoint, which the run before it may have logged before it died; a run from
        # step 0 in a reused directory is a new experiment, whose steps must not mix with the old.
        purge_step = resumed_step + 1 if resumed_step else 0
        self.writer = SummaryWriter(log_dir, purge_step=purge_step)
        log.info(
            "TensorBoard events in %s%s; view with `tensorboard --logdir %s`",
            log_dir,
            f" (resumed: steps from {purge_step} replace earlier ones)" if resumed_step else "",
            log_dir,
        )

    def write(self, m: dict[str, Any]) -> None:
        for k, v in m.items():
            if k != "step" and isinstance(v, (int, float)):  # bools too, as 0/1
                self.writer.add_scalar(grouped_key(k), v, global_step=m["step"])
        # At every record, as metrics.jsonl: a run killed (hang, lost node) keeps what it logged.
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()
