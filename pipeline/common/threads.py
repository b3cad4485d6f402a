"""`torch_threads(n)`: run a block with n torch CPU threads and give the caller its own setting back after."""

from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Use `n` torch CPU threads inside the block (n <= 0: leave the setting alone); the previous count is
    restored on exit, also when the block raises. torch is imported here so that importing this module is cheap."""
    import torch

    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
