from __future__ import annotations

import pytest
import torch

from cnnvis_cli.device import amp_dtype, autocast, resolve_device
from cnnvis_cli.errors import UserError


def test_auto_and_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"device=cuda:1 but CUDA is not available here; use device=auto"):
        resolve_device("cuda:1")


def test_autocast_is_a_no_op_on_the_cpu() -> None:
    with autocast(torch.device("cpu"), enabled=True):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_mixed_precision_prefers_bfloat16_where_the_gpu_has_it(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert amp_dtype(torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert amp_dtype(torch.device("cuda")) == torch.float16
