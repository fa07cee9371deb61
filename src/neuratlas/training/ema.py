"""An exponential moving average of the weights (Polyak averaging), evaluated and saved in their place.

The raw weights keep training; the average smooths the last steps' noise, which is worth a few tenths of a
point when a budget ends before the learning rate has settled. Early on the decay is (1 + n) / (10 + n), so
the average is not dominated by the random initialisation. Float buffers (BatchNorm statistics) are averaged
too; integer buffers are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        weight = 1.0 - self.current_decay()
        # parameters() lists a tied weight once (a state_dict would list it twice and average it twice)
        pairs = list(zip(self.module.parameters(), model.parameters())) + list(
            zip(self.module.buffers(), model.buffers())
        )
        floats = [(a, r) for a, r in pairs if a.is_floating_point()]
        torch._foreach_lerp_([a for a, _ in floats], [r.detach() for _, r in floats], weight)
        for a, r in pairs:
            if not a.is_floating_point():
                a.copy_(r)
