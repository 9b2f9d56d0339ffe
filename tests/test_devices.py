"""devices.parse_device: a name becomes a usable torch.device, or one clear error;
devices.native_bf16: where bf16 autocast pays, per device type; devices.device_name."""

import pytest
import torch

from ivref import devices


def test_names_and_devices_that_exist_here_are_returned_as_devices():
    assert devices.parse_device("cpu") == torch.device("cpu")
    assert devices.parse_device(torch.device("cpu")) == torch.device("cpu")
    assert devices.parse_device("meta") == torch.device("meta")  # shapes only, no memory


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("foo", "device 'foo' is not a device name; use cpu, cuda, cuda:N or mps"),
        (3.5, "device 3.5 is not a device name"),
        ("xpu", "device 'xpu': supported devices are cpu, cuda[:N] and mps"),
    ],
)
def test_a_name_that_is_no_supported_device_is_refused(name, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        devices.parse_device(name)


def test_cuda_is_refused_where_it_is_missing_and_an_index_past_the_last_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'cuda': CUDA is not available here"):
        devices.parse_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # one GPU, as if present
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert devices.parse_device("cuda:0") == torch.device("cuda", 0)
    assert devices.parse_device("cuda") == torch.device("cuda")
    with pytest.raises(ValueError, match=r"'cuda:1': only 1 CUDA device\(s\)"):
        devices.parse_device("cuda:1")


def test_mps_is_refused_where_it_is_missing(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'mps': MPS is not available here"):
        devices.parse_device("mps")


def test_native_bf16_follows_onednn_on_the_cpu_and_leaves_meta_as_configured(monkeypatch):
    assert devices.native_bf16(torch.device("cpu")) is bool(
        torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
    assert devices.native_bf16(torch.device("meta")) is True
    assert devices.native_bf16("cpu") is devices.native_bf16(torch.device("cpu"))  # a name too
    with pytest.raises(RuntimeError, match="device"):
        devices.native_bf16("gpu")

    def moved():
        raise AttributeError("no such op")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", moved)
    for capability, native in (("AVX2", False), ("DEFAULT", False), ("AVX512", True)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert devices.native_bf16(torch.device("cpu")) is native


def test_native_bf16_on_mps_needs_macos_14_and_torch_2_6(monkeypatch):
    """Metal has bf16 from macOS 14, torch autocasts to it on MPS from 2.6; a Mac without
    an MPS device has none (the macOS check would raise there)."""
    mps = torch.backends.mps
    cases = [  # (available, macOS, torch, native)
        (True, (14, 0), "2.6.0", True),
        (True, (15, 2), "2.13.0", True),
        (True, (13, 6), "2.13.0", False),
        (True, (14, 4), "2.5.1", False),
        (False, (14, 0), "2.13.0", False),
    ]
    for available, macos, version, native in cases:
        monkeypatch.setattr(mps, "is_available", lambda a=available: a)
        monkeypatch.setattr(
            mps, "is_macos_or_newer", lambda major, minor, v=macos: v >= (major, minor)
        )
        monkeypatch.setattr(torch, "__version__", version)
        assert devices.native_bf16("mps") is native, (available, macos, version)


def test_the_float32_warning_says_why_per_device_and_offers_to_force_only_where_it_can(
    monkeypatch,
):
    from ivref import trainer

    monkeypatch.setattr(devices, "native_bf16", lambda device: False)
    for name, why, forces in (
        ("cpu", "AVX2", True),
        ("cuda", "8.0", True),
        ("mps", "macOS 14", False),
    ):
        with pytest.warns(UserWarning, match="bf16 autocast is off") as caught:
            assert trainer.resolve_bf16(None, True, torch.device(name), warn=True) is False
        said = str(caught[0].message)
        assert why in said and ("--bf16" in said) is forces, said
    assert trainer.resolve_bf16(True, True, torch.device("mps")) is True  # forced: as asked


def test_a_device_name_is_the_cpus_model_name_or_the_gpus(monkeypatch):
    """What each benchmark records of its machine: three 2-core CPUs gave this project's
    tables, and several scripts wrote no name, so their rows could not be told apart."""
    import builtins
    import platform
    import re
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = re.findall(r"^model name\s*:\s*(.+?)\s*$", cpuinfo.read_text(), re.M)
        assert devices.device_name("cpu") == (names[0] if names else platform.processor() or "cpu")
    assert devices.device_name(torch.device("meta")) == "meta"
    real_open = builtins.open

    def no_proc(path, *args, **kwargs):
        if str(path) == "/proc/cpuinfo":
            raise PermissionError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert devices.device_name("cpu") == "cpu"
    monkeypatch.setattr(platform, "processor", lambda: "arm")
    assert devices.device_name("cpu") == "arm"
