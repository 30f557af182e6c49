"""Reading the weights at an epoch's end without copying them in the training thread.

A checkpoint (weights, optimizer moments: 280 MB for a fine-tuned ResNet50) and the copy of the
best weights used to be deep copies taken in the training thread, so that training could go on
changing the tensors while they were stored. Here they are read in place instead, beside the
next epoch's first batches: parameters and optimizer state change only at the optimizer's next
step, so the readers have until then (a forward and a backward pass); training waits for them
there, or before anything else that writes the weights. Batch norm's running statistics change
in every training forward pass, so they (a few hundred kB) are copied at once.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

import torch
from torch import nn


def live_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state: its parameters as they are (read them before the optimizer's next
    step), its buffers copied now."""
    buffers = {name for name, _ in module.named_buffers()}
    return {k: v.detach().clone() if k in buffers else v.detach() for k, v in module.state_dict().items()}


def done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


class PendingReads:
    """What reads the live weights between an epoch's end and the next optimizer step: the
    copy of a new best epoch's weights (made here, on a thread of its own) and whatever a
    callback hands back (the recorder's checkpoint write). `settle()` waits for all of them
    and raises what failed; training calls it before it changes the weights."""

    def __init__(self) -> None:
        self.pending: list[Future] = []

    def copy(self, state: dict[str, torch.Tensor]) -> Future:
        future: Future = Future()

        def work() -> None:
            try:
                future.set_result({k: v.clone() for k, v in state.items()})
            except BaseException as e:
                future.set_exception(e)

        # A thread per copy, not a pool: a run that ends on an error (a pruned trial) leaves none behind.
        threading.Thread(target=work, name="best-weights", daemon=True).start()
        self.pending.append(future)
        return future

    def add(self, future: Future | None) -> None:
        if future is not None:
            self.pending.append(future)

    def settle(self) -> None:
        while self.pending:
            self.pending.pop(0).result()
