"""Which part of a multi-machine prep this process runs: flags first, then the environment.

Each part processes the units with `index % num_parts == part`. Round-robin rather than
contiguous ranges because neighbouring units tend to be alike in cost (same file, same source),
so interleaving balances the parts without knowing costs up front.
"""

from __future__ import annotations

import os

from dist_llm.errors import DataError

# (count variable, index variable, offset variable) in order of precedence.
_ENV_SOURCES = (
    ("SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN"),  # sbatch --array
    ("WORLD_SIZE", "RANK", None),  # torchrun / deepspeed launcher
)


def resolve_part(
    num_parts: int | None, part: int | None, environ: os._Environ | dict | None = None
) -> tuple[int, int]:
    """(num_parts, part) from the flags, else a SLURM array or torchrun environment, else (1, 0)."""
    env = os.environ if environ is None else environ
    if num_parts is None and part is None:
        for count_var, index_var, offset_var in _ENV_SOURCES:
            if count_var in env and index_var in env:
                offset = int(env.get(offset_var, 0)) if offset_var else 0
                num_parts, part = int(env[count_var]), int(env[index_var]) - offset
                source = f"{count_var}={env[count_var]}, {index_var}={env[index_var]}"
                break
        else:
            return 1, 0
    else:
        if num_parts is None or part is None:
            raise DataError("--num-parts and --part go together (e.g. --num-parts 4 --part 0)")
        source = f"--num-parts {num_parts} --part {part}"
    if num_parts < 1 or not 0 <= part < num_parts:
        raise DataError(f"{source}: need num_parts >= 1 and 0 <= part < num_parts")
    return num_parts, part
