"""Device names read once, with a clear error for one that is not usable here."""

from __future__ import annotations

import torch


def parse_device(name: str | torch.device) -> torch.device:
    """A usable torch device from a name ("cpu", "cuda", "cuda:1", "mps"), or a clear error."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {name!r} is not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r}: CUDA is not available here (torch "
                f"{torch.__version__}); use the cpu device"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available here; use the cpu device")
    elif device.type not in ("cpu", "cuda", "mps", "meta"):
        raise ValueError(f"device {name!r}: supported devices are cpu, cuda[:N] and mps")
    return device


def parse_command_device(name: str | torch.device) -> torch.device:
    """``parse_device`` for a command (``--device``): the meta device, which holds shapes and
    no data (the library allows it for tests), is refused before any work."""
    device = parse_device(name)
    if device.type == "meta":
        raise ValueError(
            f"--device {name}: the meta device holds no data; use cpu, cuda, cuda:N or mps"
        )
    return device
