"""Shared test set-up: offline Hugging Face, float64 helpers, the repository root."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return ROOT


def load_script(path: Path):
    """Import a script of the repository that is not part of the package (benchmarks, docs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"ivref_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DeviceSpy(torch.nn.Module):
    """Wraps a U-Net that lives on the meta device and checks every tensor it is given.

    CI has no GPU: on ``meta``, mixing devices fails as it does on CUDA, so any input left on
    the CPU either trips the spy or makes a meta/CPU op raise.
    """

    def __init__(self, model):
        super().__init__()
        self.inner, self.cfg, self.seen = model, model.cfg, []

    def forward(self, *args, **kwargs):
        for value in [*args, *kwargs.values()]:
            if isinstance(value, torch.Tensor):
                self.seen.append(value.device.type)
                assert value.device.type == "meta", f"a {value.device} tensor reached the model"
        return self.inner(*args, **kwargs)
