"""Dropout whose random mask is cheap on a CPU.

On a 2-core CPU `torch.nn.Dropout` draws one Bernoulli sample per element, and at d_model 128 those
draws cost more than the matrix products they guard (a third of a training step, benchmarks/NOTEBOOK.md).
`ChunkedDropout` draws one 64-bit random word per four elements and cuts it into four 16-bit
chunks: an element is kept when its chunk is at or above the drop threshold. It is the same
dropout (each element kept independently with probability 1 - p, survivors scaled by 1/(1 - p)),
with p rounded to a multiple of 1/65,536. On other devices it is `torch.nn.functional.dropout`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DROPOUT_MASKS = ("bernoulli", "chunked")
_LEVELS = 1 << 16  # the values of one 16-bit chunk


class ChunkedDropout(nn.Module):
    """Drop-in for `nn.Dropout(p)`: the same semantics, a mask cut from 16-bit chunks of random words."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        # int16 chunks run from -32,768; those below `threshold` (round(p * 65,536) of them) are dropped
        self.set_p(p)

    def set_p(self, p: float) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.threshold = round(p * _LEVELS) - _LEVELS // 2

    def keep_mask(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """A boolean tensor of `shape`: True where an element is kept."""
        n = shape.numel()
        info = torch.iinfo(torch.int64)
        words = torch.randint(info.min, info.max, ((n + 3) // 4,), dtype=torch.int64, device=device)
        return words.view(torch.int16)[:n].view(shape) >= self.threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        # one float mask, scaled once: a single product forward and backward (3x faster than x * bool * s)
        return x * (self.keep_mask(x.shape, x.device).to(x.dtype) * (1.0 / (1.0 - self.p)))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_chunked_dropout(module: nn.Module) -> int:
    """Replace every `nn.Dropout` under `module` by a `ChunkedDropout` of the same p; returns how many.

    Dropout applied through `torch.nn.functional` (T5's attention weights) is left as it is."""
    swaps = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children() if type(child) is nn.Dropout]
    for parent, name, child in swaps:
        setattr(parent, name, ChunkedDropout(child.p))
    return len(swaps)


def set_dropout(module: nn.Module, p: float) -> None:
    """Set every dropout probability under `module` to p: `nn.Dropout`, `ChunkedDropout`, and the float
    `dropout` of attention layers that apply it functionally (T5's attention weights)."""
    for m in module.modules():
        if isinstance(m, ChunkedDropout):
            m.set_p(p)
        elif isinstance(m, nn.Dropout):
            m.p = p
        elif isinstance(getattr(m, "dropout", None), float):
            m.dropout = p
