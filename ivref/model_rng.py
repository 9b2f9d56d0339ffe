"""The model's own random draws in training (dropout), from the run's seed, not the process's.

``nn.Dropout`` draws its masks from torch's global generator of the device the activations are
on: the CPU's, or the GPU's. A training run that left them there would have masks that
depend on whatever else the process drew before, and under ``torchrun`` identical masks on
every rank: torch starts every process's global generators from the same seed, so N
replicas would drop the same units on their different samples.

``ModelRNG`` gives a run its own state for those draws. ``scope()`` swaps it in around one
step's forward and backward and takes it back out, leaving the process's generator as it
was; ``Trainer`` seeds it from the rank's stream (``distributed.stream_seed``) and saves it
in every checkpoint, so a resumed run drops the same units as one that never stopped. It
does nothing for a model without an active dropout layer, so the step of every preset (all
have dropout 0) is untouched.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn

STATE_KEY = "model_rng"  # in a checkpoint's RNG states: the state of the device's generator


def draws_dropout(model: nn.Module) -> bool:
    """Whether ``model`` has a dropout layer (any ``nn.Dropout*`` module) with p > 0."""
    kinds = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
    return any(isinstance(m, kinds) and m.p > 0 for m in model.modules())


class ModelRNG:
    """The state of ``device``'s global generator that ``model``'s training steps draw from."""

    def __init__(self, model: nn.Module, seed: int, device: torch.device) -> None:
        self.active = draws_dropout(model)
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.seed = seed
        self.state: torch.Tensor | None = None  # None: not drawn from yet (seeded at first use)

    def _get(self) -> torch.Tensor:
        if self.device.type == "cuda":
            return torch.cuda.get_rng_state(self.device)
        return torch.get_rng_state()

    def _set(self, state: torch.Tensor) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(state, self.device)
        else:
            torch.set_rng_state(state)

    def _seed_generator(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.default_generators[self.device.index].manual_seed(self.seed)
        else:
            torch.default_generator.manual_seed(self.seed)

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Inside: the device's global generator is this run's. Outside: the process's."""
        if not self.active:
            yield
            return
        cuda = self.device.type == "cuda"
        devices = [self.device.index] if cuda else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            if self.state is None:
                self._seed_generator()
            else:
                self._set(self.state)
            try:
                yield
            finally:
                self.state = self._get()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{STATE_KEY: state} once drawn from, else {} (a checkpoint's RNG entries)."""
        return {} if self.state is None else {STATE_KEY: self.state.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """The state saved by ``state_dict`` (other keys are ignored). Without one, or with
        another device type's (a GPU run resumed on the CPU), the draws start afresh from
        ``seed``: the run goes on, but its dropout masks are not those of an unbroken run."""
        saved = state.get(STATE_KEY)
        if saved is not None and self.active and saved.numel() != self._get().numel():
            warnings.warn(
                f"the checkpoint's dropout generator state is not a {self.device.type} "
                "generator's (the run was trained on another device type): dropout masks "
                "start afresh from the seed",
                stacklevel=2,
            )
            saved = None
        self.state = None if saved is None else saved.clone()
