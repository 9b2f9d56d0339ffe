"""Safetensors files: streamed writes, one-tensor reads, manifests, optimizer state as tensors."""

import json

import pytest
import torch

from ivref import tensor_files


def _streamed(tensors: dict, json=None):
    """``tensors`` as a Streamed source whose every take makes a fresh copy, asserting that
    the memory of every tensor taken before is freed (the writer holds one at a time)."""
    from torch.multiprocessing.reductions import StorageWeakRef

    refs = []

    def take(name):
        assert all(ref.expired() for ref in refs), "an earlier tensor is still held"
        value = tensors[name].clone()
        refs.append(StorageWeakRef(value.untyped_storage()))
        return value

    specs = {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}
    return tensor_files.Streamed(specs, take, json)


def test_streamed_tensors_write_what_safetensors_reads_one_at_a_time(tmp_path):
    from safetensors.torch import load_file

    tensors = {
        "f32": torch.randn(3, 5), "f16": torch.randn(7).half(),
        "bf16": torch.randn(2, 2, 3).bfloat16(), "i64": torch.arange(5),
        "u8": torch.arange(9, dtype=torch.uint8), "bool": torch.rand(4) > 0.5,
        "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3),
    }  # fmt: skip
    tensor_files.write_tensors(tmp_path / "t.safetensors", _streamed(tensors), {"k": "v"})
    loaded = load_file(tmp_path / "t.safetensors")
    assert loaded.keys() == tensors.keys()
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value), name
    opened = tensor_files.TensorFile(tmp_path / "t.safetensors")
    assert opened.shapes == {k: tuple(v.shape) for k, v in tensors.items()}
    assert opened.dtypes == {k: v.dtype for k, v in tensors.items()}
    assert torch.equal(opened.get("bf16"), tensors["bf16"])
    wrong = tensor_files.Streamed({"f32": (torch.float32, (3, 4))}, lambda name: tensors[name])
    with pytest.raises(ValueError, match=r"'f32' came as torch.float32 \(3, 5\); its spec says"):
        tensor_files.write_tensors(tmp_path / "w.safetensors", wrong)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]  # nothing left


def test_a_manifest_names_a_file_changed_at_the_same_size(tmp_path):
    tensor_files.write_tensors(tmp_path / "a.safetensors", {"w": torch.arange(6.0)})
    tensor_files.write_json(tmp_path / "b.json", {"k": [1, 2]})
    files = ["a.safetensors", "b.json"]
    manifest = tensor_files.file_manifest(tmp_path, files)
    assert json.loads((tmp_path / "b.json").read_text()) == {"k": [1, 2]}
    tensor_files.verify_files(tmp_path, manifest, "the manifest")  # as written: passes
    raw = bytearray((tmp_path / "a.safetensors").read_bytes())
    raw[-1] ^= 0x01  # one bit of the last weight: same size, other content
    (tmp_path / "a.safetensors").write_bytes(bytes(raw))
    with pytest.raises(tensor_files.CheckpointError, match=r"a.safetensors' is corrupted: its sha"):
        tensor_files.verify_files(tmp_path, manifest, "the manifest")
    (tmp_path / "b.json").write_text("{}")
    with pytest.raises(tensor_files.CheckpointError, match=r"b.json' is corrupted: 2 bytes, the"):
        tensor_files.verify_files(tmp_path, {"b.json": manifest["b.json"]}, "the manifest")
    (tmp_path / "b.json").unlink()
    with pytest.raises(tensor_files.CheckpointError, match=r"b.json' is missing"):
        tensor_files.verify_files(tmp_path, {"b.json": manifest["b.json"]}, "the manifest")


def test_optimizer_state_splits_into_tensors_and_json_and_joins_back():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = opt.state_dict()
    tensors, meta = tensor_files.optimizer_split(state)
    assert sorted(tensors) == [
        f"state.{i}.{k}" for i in (0, 1) for k in ("exp_avg", "exp_avg_sq", "step")
    ]
    meta = json.loads(json.dumps(meta))  # the rest is plain JSON, as optimizer.json holds it
    joined = tensor_files.optimizer_join(tensors, meta)
    assert joined["param_groups"] == json.loads(json.dumps(state["param_groups"]))
    for i, entry in state["state"].items():
        assert joined["state"][i].keys() == entry.keys()
        assert all(torch.equal(joined["state"][i][k], v) for k, v in entry.items())
    again = torch.optim.AdamW(model.parameters(), lr=0.01)
    again.load_state_dict(joined)  # what a resume does with it
    restored = again.state_dict()["state"]
    assert all(
        torch.equal(restored[i][k], v) for i, e in state["state"].items() for k, v in e.items()
    )


def test_a_missing_or_garbage_tensor_file_is_named(tmp_path):
    with pytest.raises(tensor_files.CheckpointError, match=r"x.safetensors' is missing"):
        tensor_files.read_tensors(tmp_path / "x.safetensors")
    (tmp_path / "x.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(tensor_files.CheckpointError, match=r"x.safetensors' is corrupted"):
        tensor_files.read_tensors(tmp_path / "x.safetensors")
    with pytest.raises(tensor_files.CheckpointError, match=r"x.safetensors' is corrupted"):
        tensor_files.TensorFile(tmp_path / "x.safetensors")
