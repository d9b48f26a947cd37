"""One seed derivation scheme: the global seed plus a purpose name gives each consumer its own seed,
so adding a new random consumer never shifts the numbers another one draws."""

import hashlib


def derive_seed(seed: int, purpose: str) -> int:
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF
