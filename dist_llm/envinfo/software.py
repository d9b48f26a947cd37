"""Versions of everything a rank's behaviour depends on, as one flat dict so ranks compare key by key.

Package versions come from the installed metadata, not from importing them: importing deepspeed
alone costs ~5 s, and `dist-llm env` should answer in a few seconds.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import os
import platform
import re
import warnings

import torch

import dist_llm

# Distribution names; the key in the facts is the same name.
PACKAGES = (
    "numpy",
    "triton",
    "deepspeed",
    "transformers",
    "datasets",
    "pyarrow",
    "sentencepiece",
    "safetensors",
    "fsspec",
    "s3fs",
    "wandb",
)


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nccl_version() -> str | None:
    """The NCCL library torch loaded (None on CPU-only builds)."""
    if not torch.distributed.is_nccl_available():
        return None
    try:
        version = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def _cudnn_version() -> str | None:
    v = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if not v:
        return None
    # 8902 -> 8.9.2 (cuDNN 8), 90100 -> 9.1.0 (cuDNN 9 moved to major*10000).
    major, rest = (v // 10000, v % 10000) if v >= 90000 else (v // 1000, v % 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def driver_version() -> str | None:
    """The NVIDIA kernel driver version, from /proc (no CUDA initialization, no nvidia-smi)."""
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", f.read())
    except OSError:
        return None
    return match.group(1) if match else None


def driver_cuda_version() -> str | None:
    """The newest CUDA version the installed driver supports (cuDriverGetVersion from libcuda),
    which must be at least the CUDA torch was built with."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def source_hash() -> str:
    """A short hash of dist_llm's own .py files: nodes that run different code (a stale copy, an
    edit on one node) differ here even when the package version and git commit do not."""
    root = os.path.dirname(dist_llm.__file__)
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:12]


def software_facts() -> dict:
    """Flat {name: version or None}: python, torch and its CUDA/cuDNN/NCCL, the driver, the packages
    in PACKAGES and dist_llm (version and source hash). `cuda_init_warning` keeps what torch said
    when it could not use the GPUs (e.g. "driver too old"), which the checks quote."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.is_available()
    cuda_warning = next((str(w.message) for w in caught if "CUDA" in str(w.message)), None)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_git": (torch.version.git_version or "")[:12] or None,
        "torch_cuda": torch.version.cuda,
        "torch_hip": getattr(torch.version, "hip", None),
        "cudnn": _cudnn_version(),
        "nccl": _nccl_version(),
        "nvidia_driver": driver_version(),
        "driver_cuda": driver_cuda_version(),
        "cuda_init_warning": cuda_warning,
        **{name: _package_version(name) for name in PACKAGES},
        "dist_llm": _package_version("dist-llm"),
        "dist_llm_source": source_hash(),
    }
