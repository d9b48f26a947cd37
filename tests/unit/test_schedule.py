import math

import pytest

from dist_llm.config import OptimConfig
from dist_llm.schedule import lr_at


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd", "constant"])
def test_warmup_then_decay_to_floor(schedule):
    cfg = OptimConfig(lr=1.0, warmup_steps=10, schedule=schedule, min_lr_ratio=0.1, wsd_decay_fraction=0.2)
    lrs = [lr_at(s, cfg, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(b <= a + 1e-12 for a, b in zip(lrs[10:], lrs[11:])), "no increase after warmup"
    end = lr_at(100, cfg, 100)
    assert end == pytest.approx(1.0 if schedule == "constant" else 0.1)


def test_cosine_midpoint_and_wsd_plateau():
    cfg = OptimConfig(lr=2.0, warmup_steps=0, schedule="cosine", min_lr_ratio=0.0)
    assert lr_at(50, cfg, 100) == pytest.approx(1.0)
    assert lr_at(25, cfg, 100) == pytest.approx(1.0 + math.cos(math.pi / 4))
    wsd = OptimConfig(lr=1.0, warmup_steps=0, schedule="wsd", wsd_decay_fraction=0.2)
    assert lr_at(79, wsd, 100) == 1.0 and lr_at(90, wsd, 100) < 1.0
