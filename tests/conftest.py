"""Test-wide settings."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests run many tiny models: intra-op threads cost more than they give (up to 30x on a loaded 2-core
    machine, measured), and one thread makes timings of the suite predictable on CI."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
