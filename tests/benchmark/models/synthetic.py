"""The portable synthetic state dict that the golden logits were computed with.

Written from the recipe in data/golden/README.md: a counter-based integer hash, no RNG
library, so any implementation can regenerate the exact same tensors.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch

MASK32 = np.uint64(0xFFFFFFFF)


def uniform(name: str, n: int) -> np.ndarray:
    """n values in [-1, 1), value i from a 32-bit integer hash of (crc32(name), i)."""
    seed = np.uint64(zlib.crc32(name.encode("utf-8")))
    h = (np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B1) + seed) & MASK32
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x85EBCA77)) & MASK32
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE3D)) & MASK32
    h ^= h >> np.uint64(16)
    return h.astype(np.float64) / 2.0**32 * 2.0 - 1.0


def binomial(k: int) -> np.ndarray:
    row = np.array([math.comb(k - 1, i) for i in range(k)], dtype=np.float64)
    outer = np.outer(row, row)
    return outer / outer.sum()


def synthetic_tensor(key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.int64:
        return torch.zeros(shape, dtype=torch.int64)
    n = math.prod(shape)
    if key.endswith(".filt"):
        channels, _, k, _ = shape
        values = np.broadcast_to(binomial(k), (channels, 1, k, k))
    elif key.endswith("running_var"):
        values = 1.0 + 0.5 * uniform(key, n)
    elif key.endswith("running_mean"):
        values = 0.1 * uniform(key, n)
    elif len(shape) == 1 and key.endswith(".weight"):
        values = 0.5 + 0.1 * uniform(key, n)
    elif len(shape) == 1 and key.endswith(".bias"):
        values = 0.05 * uniform(key, n)
    else:
        values = uniform(key, n) * math.sqrt(3.0 / math.prod(shape[1:]))
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64).reshape(shape)).to(
        torch.float32
    )


def synthetic_state_dict(reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The synthetic values for every entry of `reference` (a model's state dict)."""
    return {
        key: synthetic_tensor(key, tuple(value.shape), value.dtype)
        for key, value in reference.items()
    }


def state_checksum(state: dict[str, torch.Tensor]) -> float:
    return float(sum(value.double().sum().item() for value in state.values()))


def golden_input() -> torch.Tensor:
    return torch.from_numpy(uniform("input", 2 * 3 * 128 * 128).reshape(2, 3, 128, 128)).to(
        torch.float32
    )
