"""Device names read once, with a clear error for one that is not usable here; whether a
device computes bf16 natively (``native_bf16``); a device's model name (``device_name``)."""

from __future__ import annotations

import torch
from torch.torch_version import TorchVersion


def parse_device(name: str | torch.device) -> torch.device:
    """A usable torch device from a name ("cpu", "cuda", "cuda:1", "mps"), or a clear error."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device {name!r} is not a device name; use cpu, cuda, cuda:N or mps"
        ) from None
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


MPS_BF16_AUTOCAST_TORCH = (2, 6)  # the first torch whose autocast takes bf16 on MPS
NO_NATIVE_BF16 = {  # why native_bf16 says False, per device type (the trainer's warning)
    "cpu": "a CPU without AVX-512, AMX or Arm bf16 emulates it, far slower than float32: a "
    "toy training step 16x slower on an AVX2 CPU",
    "cuda": "a GPU below compute capability 8.0 emulates it",
    "mps": "MPS needs macOS 14 and torch "
    + ".".join(map(str, MPS_BF16_AUTOCAST_TORCH))
    + " or newer for it",
}


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` (a torch.device or a name such as "cpu" or "cuda:1") computes bf16
    matmuls and convolutions natively, so bf16 autocast speeds them up rather than emulating
    them.

    CPU: oneDNN's own check, which accepts AVX-512 (with bf16 instructions on Intel since
    Cooper Lake and AMD since Zen 4; earlier AVX-512 CPUs convert with AVX-512 instructions),
    AMX, or Arm's bf16 extension. Without them (AVX2 only, as on many laptops and older
    servers) bf16 is emulated slowly: on a 2-core AVX2 AMD EPYC a 2048^3 bf16 matmul ran at
    0.3 GFLOP/s against 167 in float32, and a toy base training step under bf16 autocast
    took 16x as long as in float32 (benchmarks/train_step_variants.py). CUDA: compute capability 8.0
    (Ampere) or newer; older GPUs emulate it. MPS: an available MPS device on macOS 14 or
    newer (Metal has no bf16 before it: bf16 tensors raise there, and torch turns bf16
    autocast off) with torch 2.6 or newer (the first to autocast to bf16 on MPS); whether an
    M1 or M2 GPU computes bf16 at full speed is not checked. Other devices (meta): True,
    autocast left as configured.
    """
    device = torch.device(device)  # a name too; a bad one raises torch's own error
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # the check moved: judge by the vector unit
            return torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "AVX2")
    if device.type == "cuda":
        with torch.cuda.device(device):
            try:
                return torch.cuda.is_bf16_supported(including_emulation=False)
            except TypeError:  # torch before 2.3: no emulation to tell apart
                return torch.cuda.is_bf16_supported()
    if device.type == "mps":
        mps = torch.backends.mps
        version = TorchVersion(torch.__version__)  # compares with a tuple (set at run time)
        autocasts = version >= MPS_BF16_AUTOCAST_TORCH  # type: ignore[operator]  # stub: a str
        return bool(autocasts and mps.is_available() and mps.is_macos_or_newer(14, 0))
    return True


def device_name(device: torch.device | str) -> str:
    """The model name of ``device``, as a benchmark records the machine it ran on: the GPU's
    (``torch.cuda.get_device_name``), or the CPU's (the "model name" of /proc/cpuinfo on
    Linux, ``platform.processor()`` elsewhere, "cpu" where neither says). Other devices: their
    type ("mps", "meta")."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"
