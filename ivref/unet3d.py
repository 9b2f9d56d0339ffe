"""The Video U-Net of every cascade stage, assembled from a ``UNetConfig`` [VDM §3, IV §2.3].

A 2-D U-Net [UNET] made space-time separable: each level runs ``num_res_blocks`` blocks of
(per-frame ResBlock -> spatial attention with text, where the config asks -> temporal mixing,
attention or conv, per level), then a 2x spatial downsample; the way up mirrors it with skip
connections. Frames are never down- or upsampled. Activations live as ``(b f) c h w``.

Conditioning (one vector per frame, added in every ResBlock by scale-shift GroupNorm):
    emb_f = MLP(sin(logsnr_t)) + Linear(mean-pooled text) [+ MLP(sin(aug_logsnr))]
            [+ MLP(sin(guidance_w))] + frame_pos[f]                       [IMG §2.5, GD, IV §2.5]
CHOICE: ``frame_pos`` is a learned frame-position embedding (zero for image samples); with
the random relative bias of temporal attention it lets the net tell the direction of time
from its first step (notebook 02, section 3; docs/field-notes.md). It departs from the reason
[VDM §3] gives for relative positions (no dependence on absolute frame time).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from ivref import attention, layers
from ivref.configs import UNetConfig


class SpaceTimeBlock(nn.Module):
    """ResBlock, then optional spatial attention (with text), then optional temporal mixing."""

    def __init__(
        self,
        cfg: UNetConfig,
        c_in: int,
        c_out: int,
        spatial: str | None,  # None | "self" (self + text keys) | "cross" (text keys only)
        temporal: str | None,  # None | "attention" | "conv"
    ) -> None:
        super().__init__()
        e, g = 4 * cfg.base_channels, cfg.norm_groups
        self.res = layers.ResBlock(c_in, c_out, e, g, cfg.dropout)
        self.spatial = None
        if spatial is not None:
            self.spatial = attention.SpatialAttention(
                c_out, cfg.head_dim, e, g, self_attend=spatial == "self"
            )
        self.temporal: nn.Module | None = None
        if temporal == "attention":
            self.temporal = attention.TemporalAttention(
                c_out, cfg.head_dim, cfg.relative_max_distance, g
            )
        elif temporal == "conv":
            self.temporal = layers.TemporalConv(c_out, g)

    def forward(
        self,
        x: torch.Tensor,
        emb_f: torch.Tensor,
        ctx: torch.Tensor,
        ctx_mask: torch.Tensor,
        num_frames: int,
        is_image: torch.Tensor | None,
        video_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        x = self.res(x, emb_f)
        if self.spatial is not None:
            x = self.spatial(x, ctx, ctx_mask)
        if isinstance(self.temporal, attention.TemporalAttention):
            x = self.temporal(x, num_frames, is_image)
        elif self.temporal is not None:
            x = self.temporal(x, num_frames, video_mask)
        return x


class VideoUNet(nn.Module):
    """v_hat = VideoUNet(cfg)(z_t, logsnr_t, text_emb, text_mask, ...) [VDM §3, IV §2.3].

    A sample whose ``text_mask`` row is all False is unconditional: its text is replaced by the
    learned null embedding (one token) [CFG]. CHOICE: the null is a single learned token in
    the encoder's space, so the unconditional output does not depend on L.
    """

    @classmethod
    def to_load(cls, cfg: UNetConfig) -> VideoUNet:
        """A VideoUNet whose weights are about to be loaded: built without drawing from the
        process's random generator (``from_pretrained`` moved a caller's seeded stream on)."""
        with torch.random.fork_rng(devices=[]):  # its initial weights are overwritten anyway
            return cls(cfg)

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c0, e = cfg.base_channels, 4 * cfg.base_channels
        widths = [c0 * m for m in cfg.channel_mults]
        self.logsnr_emb = layers.ScalarEmbedding(c0, e, scale=50.0)
        self.aug_emb = layers.ScalarEmbedding(c0, e, 50.0) if cfg.use_aug_embedding else None
        self.w_emb = layers.ScalarEmbedding(c0, e, 100.0) if cfg.use_guidance_embedding else None
        self.frame_pos = nn.Parameter(torch.randn(cfg.max_frames, e))
        self.null_text = nn.Parameter(torch.randn(1, cfg.text_dim))
        self.text_norm = nn.LayerNorm(cfg.text_dim)
        self.text_proj = nn.Linear(cfg.text_dim, e)
        self.text_pool = nn.Linear(e, e)
        self.in_conv = nn.Conv2d(cfg.in_channels + cfg.cond_channels, c0, 3, padding=1)

        def block(c_in: int, c_out: int, level: int) -> SpaceTimeBlock:
            spatial = "self" if cfg.spatial_attention[level] else None
            return SpaceTimeBlock(cfg, c_in, c_out, spatial, cfg.temporal_mixing[level])

        self.down, skips, ch = nn.ModuleList(), [c0], c0
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                self.down.append(block(ch, width, level))
                ch = width
                skips.append(ch)
            if level < len(widths) - 1:
                self.down.append(layers.Downsample(ch))
                skips.append(ch)
        # The middle block always reads the text tokens: spatial self-attention + text, or in a
        # fully convolutional stage pure cross-attention to the text, which keeps the network
        # independent of the frame size (it samples at sizes it never trained on) [IV §2.3].
        mid_spatial = "cross" if cfg.fully_convolutional else "self"
        self.mid = nn.ModuleList(
            [
                SpaceTimeBlock(cfg, ch, ch, mid_spatial, cfg.temporal_mixing[-1]),
                SpaceTimeBlock(cfg, ch, ch, None, None),
            ]
        )
        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(block(ch + skips.pop(), widths[level], level))
                ch = widths[level]
            if level > 0:
                self.up.append(layers.Upsample(ch))
        self.out_norm = layers.group_norm(ch, cfg.norm_groups)
        self.out_conv = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)

    # -- inputs ---------------------------------------------------------------------------

    def _check(
        self,
        z_t: torch.Tensor,
        logsnr_t: torch.Tensor,
        text_emb: torch.Tensor,
        text_mask: torch.Tensor,
        cond_video: torch.Tensor | None,
        aug_logsnr: torch.Tensor | None,
        guidance_w: torch.Tensor | None,
    ) -> None:
        cfg = self.cfg
        given = {"z_t": z_t, "logsnr_t": logsnr_t, "text_emb": text_emb, "text_mask": text_mask}
        optional = {"cond_video": cond_video, "aug_logsnr": aug_logsnr, "guidance_w": guidance_w}
        given |= {k: v for k, v in optional.items() if v is not None}
        for name, value in given.items():
            if not isinstance(value, torch.Tensor):
                per_sample = name in ("logsnr_t", "aug_logsnr", "guidance_w")
                raise TypeError(
                    f"{name} must be a torch.Tensor, got {type(value).__name__} {value!r:.40}"
                    + (" (one value per sample: torch.full((B,), value))" if per_sample else "")
                )
        self._check_dtypes(given)
        if z_t.ndim != 5:
            raise ValueError(f"z_t must be (B, C, F, H, W) (rank 5); got shape {tuple(z_t.shape)}")
        b, c, f, h, w = z_t.shape
        if 0 in (b, f, h, w):
            raise ValueError(
                f"z_t (B, C, F, H, W) = {tuple(z_t.shape)} is empty: every size must be at "
                "least 1 (a batch of one video of one frame is the smallest)"
            )
        if c != cfg.in_channels:
            raise ValueError(
                f"z_t has {c} channels; this U-Net takes in_channels={cfg.in_channels}"
            )
        if f > cfg.max_frames:
            raise ValueError(
                f"z_t has {f} frames; this U-Net allows at most max_frames={cfg.max_frames}"
            )
        k = cfg.downsample_factor
        if h % k or w % k:
            raise ValueError(
                f"frame size (height x width) {h}x{w} must be divisible by the U-Net's "
                f"downsampling {k}"
            )
        if tuple(logsnr_t.shape) != (b,):
            raise ValueError(f"logsnr_t must be ({b},); got shape {tuple(logsnr_t.shape)}")
        if text_emb.ndim != 3 or text_emb.shape[0] != b or text_emb.shape[2] != cfg.text_dim:
            raise ValueError(
                f"text_emb must be (B={b}, L, D={cfg.text_dim}) (UNetConfig.text_dim); "
                f"got shape {tuple(text_emb.shape)}"
            )
        if text_emb.shape[1] == 0:
            raise ValueError(
                "text_emb has no tokens (L = 0): give at least one, with text_mask False "
                "throughout for no text (the encoders pad every prompt to max_length)"
            )
        if text_mask.dtype != torch.bool or tuple(text_mask.shape) != tuple(text_emb.shape[:2]):
            raise ValueError(
                f"text_mask must be bool of shape {tuple(text_emb.shape[:2])}; "
                f"got {text_mask.dtype} {tuple(text_mask.shape)}"
            )
        want = (b, cfg.cond_channels, f, h, w)
        if cfg.cond_channels and (cond_video is None or tuple(cond_video.shape) != want):
            got = None if cond_video is None else tuple(cond_video.shape)
            raise ValueError(f"cond_video must be {want} for this SR U-Net; got {got}")
        if not cfg.cond_channels and cond_video is not None:
            raise ValueError("cond_video given but this U-Net has cond_channels=0 (a base stage)")
        for name, scalar, used in (
            ("aug_logsnr", aug_logsnr, cfg.use_aug_embedding),
            ("guidance_w", guidance_w, cfg.use_guidance_embedding),
        ):
            flag = "use_aug_embedding" if name == "aug_logsnr" else "use_guidance_embedding"
            if used and (scalar is None or tuple(scalar.shape) != (b,)):
                raise ValueError(f"{name} of shape ({b},) is required ({flag}=True)")
            if not used and scalar is not None:
                raise ValueError(f"{name} given but this U-Net has {flag}=False")
        self._check_finite(logsnr_t, aug_logsnr, guidance_w)

    @staticmethod
    def _check_finite(
        logsnr_t: torch.Tensor, aug_logsnr: torch.Tensor | None, guidance_w: torch.Tensor | None
    ) -> None:
        """The per-sample scalars are finite: their sinusoidal embedding turns +-inf into NaN
        for the whole sample. Checked on CPU tensors only, and not while torch.compile traces:
        on a GPU the test would make every call wait for the device."""
        if torch.compiler.is_compiling():
            return
        scalars = {"logsnr_t": logsnr_t, "aug_logsnr": aug_logsnr, "guidance_w": guidance_w}
        for name, value in scalars.items():
            if value is None or value.device.type != "cpu" or bool(torch.isfinite(value).all()):
                continue
            bad = value[~torch.isfinite(value)][:3].tolist()
            hint = (  # logsnr = +inf is clean data, -inf pure noise: the schedule's ends
                " (the schedule's ends, DiffusionConfig.logsnr_min and logsnr_max, stand for "
                "pure noise and clean data: +-20 by default)"
                if name != "guidance_w"
                else " (guidance weights are finite, w >= 0)"
            )
            raise ValueError(f"{name} must be finite; got {bad}{hint}")

    def _check_dtypes(self, given: dict[str, torch.Tensor]) -> None:
        """Float inputs in the weights' dtype, unless autocast casts them for the layers."""
        weights = self.in_conv.weight.dtype
        try:
            autocast = torch.is_autocast_enabled(given["z_t"].device.type)
        except (RuntimeError, TypeError):  # a device type autocast does not know (meta):
            autocast = True  # no check, as under autocast
        for name in ("z_t", "text_emb", "cond_video"):
            value = given.get(name)
            if value is None:
                continue
            if not value.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
            if value.dtype != weights and not autocast:
                raise TypeError(
                    f"{name} is {value.dtype} but the U-Net's weights are {weights}: cast the "
                    f"input ({name}.to({weights})) or the model (model.to(dtype)), or run "
                    "under torch.autocast"
                )

    def _text(
        self, text_emb: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Null-substituted, projected text tokens (B, L, E), their mask, and the pooled (B, E)."""
        uncond = ~text_mask.any(dim=1)  # (B,)
        text_emb = torch.where(rearrange(uncond, "b -> b () ()"), self.null_text, text_emb)
        first = torch.zeros_like(text_mask)
        first[:, 0] = True
        mask = torch.where(rearrange(uncond, "b -> b ()"), first, text_mask)
        ctx = self.text_proj(self.text_norm(text_emb))
        weights = rearrange(mask.to(ctx.dtype), "b l -> b l ()")
        pooled = (ctx * weights).sum(1) / weights.sum(1)
        return ctx, mask, self.text_pool(pooled)

    # -- forward --------------------------------------------------------------------------

    def forward(
        self,
        z_t: torch.Tensor,
        logsnr_t: torch.Tensor,
        text_emb: torch.Tensor,
        text_mask: torch.Tensor,
        *,
        cond_video: torch.Tensor | None = None,
        aug_logsnr: torch.Tensor | None = None,
        guidance_w: torch.Tensor | None = None,
        is_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict v (B, C_out, F, H, W) from z_t (B, C, F, H, W); see the class docstring."""
        self._check(z_t, logsnr_t, text_emb, text_mask, cond_video, aug_logsnr, guidance_w)
        b, _, f, h, w = z_t.shape
        if is_image is None:
            is_image = torch.zeros(b, dtype=torch.bool, device=z_t.device)
        elif is_image.dtype != torch.bool or tuple(is_image.shape) != (b,):  # ~ of an int flag
            raise ValueError(  # is -1 or -2, and a (1,) flag broadcasts: both silently wrong
                f"is_image must be a bool tensor of shape ({b},), one flag per sample; got "
                f"{is_image.dtype} {tuple(is_image.shape)}"
            )
        video_mask = (~is_image).to(z_t.dtype)
        ctx, ctx_mask, pooled = self._text(text_emb, text_mask)
        emb = self.logsnr_emb(logsnr_t) + pooled
        if self.aug_emb is not None:
            emb = emb + self.aug_emb(aug_logsnr)
        if self.w_emb is not None:
            emb = emb + self.w_emb(guidance_w)
        pos = self.frame_pos[:f] * rearrange(video_mask, "b -> b () ()")  # (B, F, E)
        emb_f = rearrange(rearrange(emb, "b e -> b () e") + pos, "b f e -> (b f) e")
        x = z_t if cond_video is None else torch.cat([z_t, cond_video], dim=1)
        x = self.in_conv(rearrange(x, "b c f h w -> (b f) c h w"))
        args = (emb_f, ctx, ctx_mask, f, is_image, video_mask)
        hs = [x]
        for module in self.down:
            x = self._run(module, x, args)
            hs.append(x)
        for module in self.mid:
            x = self._run(module, x, args)
        for module in self.up:
            if isinstance(module, SpaceTimeBlock):
                x = torch.cat([x, hs.pop()], dim=1)
            x = self._run(module, x, args)
        x = self.out_conv(F.silu(self.out_norm(x)))
        # a tensor of its own, not a view (3 channels: a small copy): FSDP warns of a view
        # that an in-place op could detach from its backward hook
        return rearrange(x, "(b f) c h w -> b c f h w", b=b).contiguous()

    def _run(self, module: nn.Module, x: torch.Tensor, args: tuple) -> torch.Tensor:
        if not isinstance(module, SpaceTimeBlock):
            return module(x)
        if self.cfg.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(module, x, *args, use_reentrant=False)
        return module(x, *args)


def count_parameters(cfg: UNetConfig) -> int:
    """Number of parameters of ``VideoUNet(cfg)``, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = VideoUNet(cfg)
    return sum(p.numel() for p in model.parameters())


def count_flops(
    cfg: UNetConfig, num_frames: int, height: int, width: int, text_length: int = 64
) -> int:
    """FLOPs of one forward pass at batch 1, counted by ``FlopCounterMode`` on meta tensors.

    Counts matmuls, convolutions and attention (2 FLOPs per multiply-add) as torch's flop
    counter does; norms, activations and softmax are not counted. Nothing is allocated.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = VideoUNet(cfg)
        z_t = torch.zeros(1, cfg.in_channels, num_frames, height, width)
        kwargs = {
            "cond_video": torch.zeros(1, cfg.cond_channels, num_frames, height, width)
            if cfg.cond_channels
            else None,
            "aug_logsnr": torch.zeros(1) if cfg.use_aug_embedding else None,
            "guidance_w": torch.zeros(1) if cfg.use_guidance_embedding else None,
        }
        text = torch.zeros(1, text_length, cfg.text_dim)
        mask = torch.ones(1, text_length, dtype=torch.bool)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(z_t, torch.zeros(1), text, mask, **kwargs)
    return counter.get_total_flops()
