"""Stable per-sample pseudo-random numbers: a hash of a salt and the sample id, the same in every run and process."""

from __future__ import annotations

import hashlib

import numpy as np


def sample_hash(sample_ids, salt: str) -> np.ndarray:
    """A uint64 per sample id: the first 8 bytes of ``sha256(f"{salt}:{id}")``."""
    return np.array([int.from_bytes(hashlib.sha256(f"{salt}:{sid}".encode()).digest()[:8], "little")
                     for sid in sample_ids], dtype=np.uint64)


def unit_hash(sample_ids, salt: str) -> np.ndarray:
    """A float in [0, 1) per sample id, uniform over ids: :func:`sample_hash` / 2**64."""
    return sample_hash(sample_ids, salt).astype(np.float64) / 2.0**64
