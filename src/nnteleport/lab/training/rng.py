"""The random generators of a training run: seeding, derived seeds, and their state for a checkpoint."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["derived_seed", "rng_state", "seed_all", "set_rng_state"]


def seed_all(seed: int) -> None:
    """Seed python's, numpy's (``seed mod 2^32``) and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(seed: int, *words: int) -> int:
    """A 63-bit seed derived from ``(seed, *words)`` by ``numpy.random.SeedSequence`` (independent streams)."""
    return int(np.random.SeedSequence([int(seed) % 2**63, *words]).generate_state(1, dtype=np.uint64)[0] >> 1)


def rng_state(loader_gen: torch.Generator) -> dict[str, Any]:
    """The states of the global generators (python, numpy, torch, CUDA when in use) and of ``loader_gen``."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "loader": loader_gen.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], loader_gen: torch.Generator) -> None:
    """Inverse of :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    loader_gen.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
