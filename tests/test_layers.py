"""ResBlock, temporal conv and embeddings: shapes, identity at init, frames kept apart."""

import pytest
import torch

from ivref import layers


def test_sinusoidal_embedding_shape_and_values():
    x = torch.tensor([0.0, 1.0], dtype=torch.float64)
    emb = layers.sinusoidal_embedding(x, 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4, dtype=torch.float64))
    assert torch.allclose(emb[1, 0], torch.cos(torch.tensor(1.0, dtype=torch.float64)))


@pytest.mark.parametrize("dim", [7, 0, 1, 8.0, True])
def test_sinusoidal_embedding_refuses_a_dim_without_cos_and_sin_halves(dim):
    """An odd dim gave dim - 1 features, so the next layer failed on a shape later."""
    with pytest.raises(ValueError, match=f"dim={dim!r} is invalid; allowed: an even int >= 2"):
        layers.sinusoidal_embedding(torch.zeros(2), dim)


def test_resblock_shapes_and_conditioning():
    block = layers.ResBlock(8, 16, emb_dim=12, groups=4).double()
    x = torch.randn(6, 8, 4, 4, dtype=torch.float64)
    emb = torch.randn(6, 12, dtype=torch.float64)
    out = block(x, emb)
    assert out.shape == (6, 16, 4, 4)
    assert not torch.allclose(out, block(x, emb + 1.0))


def _reference_temporal_conv(x, tc, num_frames):
    """The same op as an ordinary Conv1d over frames: (b h w) c f, kernel 3, zero padding."""
    from einops import rearrange

    c = x.shape[1]
    weight = rearrange(tc.conv.weight[..., 0, 0], "(k o) i -> o i k", k=3)
    h = rearrange(torch.nn.functional.silu(tc.norm(x)), "(b f) c h w -> (b h w) c f", f=num_frames)
    y = torch.nn.functional.conv1d(h, weight, tc.bias, padding=1)
    b = x.shape[0] // num_frames
    return x + rearrange(y, "(b h w) c f -> (b f) c h w", b=b, h=x.shape[2], c=c)


def test_temporal_conv_starts_as_identity_and_equals_conv1d():
    tc = layers.TemporalConv(8, groups=4).double()
    x = torch.randn(2 * 5, 8, 3, 3, dtype=torch.float64)
    assert torch.equal(tc(x, num_frames=5), x)  # zero-initialised branch
    with torch.no_grad():
        tc.conv.weight.normal_()
        tc.bias.normal_()
    torch.testing.assert_close(tc(x, 5), _reference_temporal_conv(x, tc, 5))


def test_temporal_conv_gradients_equal_conv1d():
    """The hand-written backward of the frame shifts gives conv1d's gradients (float64), also
    for a one-frame clip, where both shifted taps fall outside it."""
    for frames in (5, 1):
        tc = layers.TemporalConv(8, groups=4).double()
        with torch.no_grad():
            tc.conv.weight.normal_()
            tc.bias.normal_()
        x = torch.randn(2 * frames, 8, 3, 3, dtype=torch.float64, requires_grad=True)
        grad_out = torch.randn_like(x)
        params = [x, tc.conv.weight, tc.bias, tc.norm.weight]
        ours = torch.autograd.grad(tc(x, frames), params, grad_out)
        ref = torch.autograd.grad(_reference_temporal_conv(x, tc, frames), params, grad_out)
        for a, b in zip(ours, ref, strict=True):
            torch.testing.assert_close(a, b)


def test_shift_sum_gradcheck():
    z = torch.randn(2, 4, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layers.ShiftSum.apply, (z,))
    y = layers.ShiftSum.apply(z)  # the definition, frame by frame
    for f in range(4):
        want = z[:, f, 1] + (z[:, f - 1, 0] if f > 0 else 0) + (z[:, f + 1, 2] if f < 3 else 0)
        torch.testing.assert_close(y[:, f], want)


def test_temporal_conv_bypassed_for_images():
    tc = layers.TemporalConv(8, groups=4).double()
    with torch.no_grad():
        tc.conv.weight.normal_()
    x = torch.randn(2 * 5, 8, 3, 3, dtype=torch.float64)
    out = tc(x, 5, video_mask=torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.equal(out[:5], x[:5])  # image sample: untouched
    assert not torch.allclose(out[5:], x[5:])


def test_resample_shapes():
    x = torch.randn(3, 8, 8, 8)
    assert layers.Downsample(8)(x).shape == (3, 8, 4, 4)
    assert layers.Upsample(8)(x).shape == (3, 8, 16, 16)
