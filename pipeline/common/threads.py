"""torch's CPU thread count for the length of a block, restored afterwards (whatever happens inside)."""

from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch CPU threads (n <= 0: leave torch's setting), then restore the previous
    count, so a run or a training call never leaks its setting into the caller."""
    import torch

    saved = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
