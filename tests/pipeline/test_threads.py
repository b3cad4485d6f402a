"""pipeline.common.threads.torch_threads: set for the block, restored after (also on an exception)."""

import pytest
import torch

from pipeline.common.threads import torch_threads


def test_torch_threads_sets_and_restores():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch_threads(2):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
        with torch_threads(0):  # 0 = leave the setting alone
            assert torch.get_num_threads() == 1
        with pytest.raises(RuntimeError, match="boom"), torch_threads(2):
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
