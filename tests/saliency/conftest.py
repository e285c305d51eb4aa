"""Shared set-up for the saliency tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_intra_op_thread() -> Iterator[None]:
    """Run each test's tiny models on one intra-op thread, restoring the caller's setting afterwards.

    The models here are a few kilobytes; a second OpenMP thread only adds synchronization, and on a machine
    whose cores are busy with other work its spin-waits made a 12x12 convolution ~400x slower (44 ms vs 0.1 ms).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
