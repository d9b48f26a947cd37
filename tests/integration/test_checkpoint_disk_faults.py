"""Local checkpoint destinations that refuse writes, for real: a small tmpfs that fills up
(ENOSPC) and a directory the trainer may not write to (EACCES, root without CAP_DAC_OVERRIDE).

What must hold: the error names the path and the fix, no partial file and no commit marker is
left behind, the previous committed checkpoint stays intact and loadable, training itself is not
disturbed (same losses as a run without faults), and a failed *final* checkpoint ends the run with
exit status 2 and a one-line message (the run's result would otherwise be lost silently).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from dist_llm.checkpoint import layout
from dist_llm.checkpoint.discovery import committed_steps, find_resumable
from dist_llm.checkpoint.offline import model_tensors
from tests.conftest import REPO, read_metrics, run_train, train_command, train_losses, verify_checkpoint

STEPS = 6
COMMON = [
    f"train.max_steps={STEPS}",
    "train.precision=fp32",
    "checkpoint.interval=2",
    "checkpoint.keep_last=20",
]
# One checkpoint of SMALL_MODEL is ~2.0 MB (model 0.66 MB + optimizer 1.33 MB): room for one.
TMPFS_SIZE = "3m"


def _train(
    run: str, dataset: str, overrides: list[str], prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, *train_command(run, dataset, overrides)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = str(tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}")
    os.makedirs(mount)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", mount], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", mount], check=False)


@pytest.fixture(scope="module")
def clean_losses(tmp_path_factory, dataset) -> dict[int, float]:
    run = str(tmp_path_factory.mktemp("clean") / "run")
    run_train(run, dataset, [*COMMON, "checkpoint.interval=0"])
    return train_losses(run)


def leftovers(root: str) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if ".tmp-" in f]


def test_disk_full_keeps_last_commit_and_fails_final_clearly(tmp_path, dataset, small_tmpfs, clean_losses):
    run = str(tmp_path / "run")
    ckpt = os.path.join(small_tmpfs, "ckpt")
    done = _train(run, dataset, [*COMMON, f"checkpoint.dir={ckpt}"])
    output = done.stdout + done.stderr

    assert done.returncode == 2, output[-4000:]
    assert f"dist-llm train: error: the final checkpoint (step {STEPS}) failed to commit" in done.stderr
    step4 = layout.step_uri(ckpt, 4)
    assert (
        f"checkpoint step 4 failed, not committed (cannot write {step4}/" in output
        and "No space left on device; free space on that filesystem" in output
    ), output[-4000:]
    # Training went on after the failed checkpoint, undisturbed.
    assert train_losses(run) == clean_losses
    assert any(r.get("checkpoint_blocked_s") is not None and r["step"] == 6 for r in read_metrics(run))
    # Nothing partial is visible, the one good checkpoint is intact.
    assert leftovers(small_tmpfs) == []
    assert committed_steps(ckpt) == [2]
    for step in (4, STEPS):
        assert not os.path.exists(os.path.join(layout.step_uri(ckpt, step), layout.COMMITTED))
    assert find_resumable(ckpt) == layout.step_uri(ckpt, 2)
    verify_checkpoint(layout.step_uri(ckpt, 2))
    assert open(os.path.join(ckpt, layout.LATEST)).read() == layout.step_dir_name(2)
    assert dict(model_tensors(layout.step_uri(ckpt, 2)))


def test_permission_denied_names_path_and_fix(tmp_path, dataset):
    """As root, directory modes do not apply; without CAP_DAC_OVERRIDE (dropped from the bounding
    set by setpriv) root is an ordinary owner and a 0555 directory refuses writes for real."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and util-linux setpriv to drop CAP_DAC_OVERRIDE")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    ckpt = str(readonly / "ckpt")
    run = str(tmp_path / "run")
    done = _train(
        run,
        dataset,
        ["train.max_steps=2", "train.precision=fp32", "checkpoint.interval=1", f"checkpoint.dir={ckpt}"],
        prefix=(setpriv, "--bounding-set=-dac_override,-dac_read_search"),
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-4000:]
    assert "dist-llm train: error: the final checkpoint (step 2) failed to commit" in done.stderr
    for step in (1, 2):
        assert (
            f"checkpoint step {step} failed, not committed (cannot write {layout.step_uri(ckpt, step)}/"
            in output
        ), output[-4000:]
    assert f"Permission denied: '{ckpt}'; make that directory writable for uid 0" in output, output[-4000:]
    assert sorted(train_losses(run)) == [1, 2]
    assert not os.path.exists(ckpt)
