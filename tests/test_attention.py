"""Spatial attention keeps frames apart and reads text; temporal attention's relative bias."""

import torch

from ivref import attention


def test_spatial_attention_is_per_frame_and_masks_text():
    torch.manual_seed(0)
    att = attention.SpatialAttention(16, head_dim=8, ctx_dim=12, groups=4).double()
    b, f = 2, 3
    x = torch.randn(b * f, 16, 4, 4, dtype=torch.float64)
    ctx = torch.randn(b, 5, 12, dtype=torch.float64)
    mask = torch.tensor([[True] * 3 + [False] * 2] * b)
    out = att(x, ctx, mask)
    x2 = x.clone()
    x2[1] += torch.randn_like(x2[1])  # frame 1 of sample 0 (not a constant: GroupNorm
    out2 = att(x2, ctx, mask)  # would remove it, and the branch would see the same tokens)
    changed = ((out2 - x2) - (out - x)).abs().flatten(1).amax(1) > 1e-8  # the branch alone
    assert changed.tolist() == [False, True, False, False, False, False]
    ctx2 = ctx.clone()
    ctx2[:, 3:] += torch.randn(b, 2, 12, dtype=torch.float64)  # padded tokens are masked out
    assert torch.allclose(att(x, ctx2, mask), out)
    ctx2[:, 0] += torch.randn(b, 12, dtype=torch.float64)
    assert not torch.allclose(att(x, ctx2, mask), out)


def test_cross_attention_only_reads_text():
    att = attention.SpatialAttention(16, 8, 12, 4, self_attend=False)
    assert att.kv is None
    out = att(torch.randn(4, 16, 2, 2), torch.randn(2, 3, 12), torch.ones(2, 3, dtype=torch.bool))
    assert out.shape == (4, 16, 2, 2)


def test_relative_bias_is_toeplitz_clipped_and_random():
    att = attention.TemporalAttention(16, head_dim=8, max_distance=2, groups=4)
    bias = att.relative_bias(5)  # (heads, F, F)
    assert bias.shape == (2, 5, 5)
    assert torch.equal(bias[:, 0, 1], bias[:, 3, 4])  # depends on j - i only
    assert torch.equal(bias[:, 0, 3], bias[:, 0, 4])  # clipped at +2
    assert not torch.allclose(bias[:, 0, 1], bias[:, 1, 0])  # asymmetric at init


def test_temporal_attention_identity_for_images():
    att = attention.TemporalAttention(16, 8, 4, 4).double()
    f = 4
    x = torch.randn(2 * f, 16, 3, 3, dtype=torch.float64)
    is_image = torch.tensor([True, False])
    out = att(x, f, is_image)
    x2 = x.clone()
    x2[[0, f]] += torch.randn_like(x2[[0, f]])  # frame 0 of each sample (not a constant,
    out2 = att(x2, f, is_image)  # which the frame's GroupNorm would remove)
    branch = ((out2 - x2) - (out - x)).abs().flatten(1).amax(1)  # attention's change alone
    diff = branch > 1e-8
    assert diff[:f].tolist() == [True, False, False, False]  # image: each frame reads itself
    assert diff[f:].all()  # video: every frame's attention reads frame 0


def test_attend_runs_fp32_on_cpu_under_bf16_autocast(monkeypatch):
    """The softmax of bf16 logits loses the small differences between far tokens: CPU
    autocast runs attention in float32 and casts the result back."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 8).bfloat16() for _ in range(3))
    bias = torch.randn(1, 2, 5, 5)
    sdpa, seen = torch.nn.functional.scaled_dot_product_attention, []

    def spy(*args, **kwargs):
        seen.append([a.dtype for a in (*args, kwargs["attn_mask"])])
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention.attend(q, k, v, bias)
    assert seen == [[torch.float32] * 4]
    ref = sdpa(q.float(), k.float(), v.float(), attn_mask=bias)  # float32, then one rounding
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref.bfloat16())


def test_attend_chunks_many_sequences_with_the_same_result(monkeypatch):
    """Calls with more than MAX_SEQUENCES sequences run in chunks (CUDA SDPA fails >= 65,536)."""
    torch.manual_seed(0)
    n, m, lq, lk, d = 11, 2, 5, 7, 8
    q = torch.randn(n, m, lq, d, dtype=torch.float64, requires_grad=True)
    k = torch.randn(n, m, lk, d, dtype=torch.float64, requires_grad=True)
    v = torch.randn(n, m, lk, d, dtype=torch.float64, requires_grad=True)
    masks = [
        None,
        torch.randn(1, m, lq, lk, dtype=torch.float64),  # shared bias (temporal attention)
        torch.rand(n, 1, 1, lk) > 0.3,  # per-sequence boolean mask (spatial attention + text)
    ]
    masks[2][:, ..., 0] = True  # every query sees at least one key
    sdpa = torch.nn.functional.scaled_dot_product_attention
    calls = []

    def counting_sdpa(q, *args, **kwargs):
        calls.append(q.shape[0])
        return sdpa(q, *args, **kwargs)

    for mask in masks:
        ref = attention.attend(q, k, v, mask)
        grads_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
        monkeypatch.setattr(attention, "MAX_SEQUENCES", 3)
        calls.clear()
        monkeypatch.setattr(attention.F, "scaled_dot_product_attention", counting_sdpa)
        out = attention.attend(q, k, v, mask)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        monkeypatch.undo()
        assert calls == [3, 3, 3, 2]
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
        for g, g_ref in zip(grads, grads_ref, strict=True):
            torch.testing.assert_close(g, g_ref, atol=1e-12, rtol=0)


def test_temporal_attention_chunked_equals_unchunked(monkeypatch):
    torch.manual_seed(0)
    att = attention.TemporalAttention(16, head_dim=8, max_distance=3, groups=4).double()
    x = torch.randn(2 * 4, 16, 3, 3, dtype=torch.float64)  # B=2, F=4: 18 sequences
    ref = att(x, 4)
    monkeypatch.setattr(attention, "MAX_SEQUENCES", 5)
    torch.testing.assert_close(att(x, 4), ref, atol=1e-12, rtol=0)
