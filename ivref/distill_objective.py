"""What one distillation phase optimises: its targets, its loss, its student [GD, PD].

Phase 1, guided distillation [GD]: a student copies the teacher and gains an embedding of
the guidance weight w (``with_guidance_embedding``: zero-initialised, so it starts as the
teacher). It learns, in one forward pass, what guidance makes from two:
    x~_w = (1 + w) x_hat(z_t, c) - w x_hat(z_t),    w ~ U(0, w_max)
Phase 2, progressive distillation [PD Alg. 2]: with N student steps, t = i / N, a student
step t -> t - 1/N must land where two teacher DDIM steps t -> t - 1/(2N) -> t - 1/N land
(``pd_target``). Both phases minimise max(SNR_t, 1) ||x~ - x_hat||^2 (``x_loss``; truncated
SNR weighting, [PD §4]). ``DistillObjective`` is one phase as a ``trainer.Trainer``
objective; distill.py runs the phases of a stage.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
from typing import Any, cast

import torch

from ivref import configs, guidance, losses, objectives, parameterization, samplers, schedules
from ivref.layers import ScalarEmbedding
from ivref.unet3d import VideoUNet

XHatFn = samplers.XHatFn


@torch.no_grad()
def pd_target(
    teacher: XHatFn,
    z_t: torch.Tensor,
    t: torch.Tensor,
    dt: float,
    *,
    logsnr_min: float = -20.0,
    logsnr_max: float = 20.0,
) -> torch.Tensor:
    """The x a student DDIM step t -> t - dt needs to land on two teacher steps [PD Alg. 2].

    ``teacher(z, logsnr) -> x_hat``; t is the student's time (B,), dt = 1 / N.
    z' = ddim(z_t, t -> t'), z'' = ddim(z', t' -> t''), t' = t - dt/2, t'' = t - dt;
      x~ = (z'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t).
    At t'' = 0 (logsnr = +inf: alpha = 1, sigma = 0) this is the teacher's x_hat at t'.
    ``dt`` must be in (0, 1] and each t in [dt, 1] (a ValueError otherwise: outside, the
    target is NaN or a step backwards); t on a GPU is not checked (no sync per step).
    """
    real = isinstance(dt, numbers.Real) and not isinstance(dt, bool)
    if not real or not 0.0 < dt <= 1.0:  # NaN fails the comparison too
        raise ValueError(f"dt={dt!r} is invalid; allowed: a step size in (0, 1], e.g. 1 / N")
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.device.type == "cpu" and not bool(((t >= dt - 1e-9) & (t <= 1.0)).all()):
        raise ValueError(
            f"t spans [{t.min().item():g}, {t.max().item():g}]; allowed: student times in "
            f"[dt, 1] = [{dt:g}, 1], so that t - dt, where the step lands, is not before 0"
        )

    def logsnr(time: torch.Tensor) -> torch.Tensor:
        value = schedules.logsnr_cosine(time.clamp(min=0.0), logsnr_min, logsnr_max)
        return torch.where(time <= 1e-9, torch.full_like(value, math.inf), value)

    l_t, l_1, l_2 = logsnr(t), logsnr(t - dt / 2), logsnr(t - dt)
    cast = lambda v: v.to(device=z_t.device, dtype=z_t.dtype)  # noqa: E731
    z_1 = samplers.ddim_step(z_t, teacher(z_t, cast(l_t)), cast(l_t), cast(l_1))
    z_2 = samplers.ddim_step(z_1, teacher(z_1, cast(l_1)), cast(l_1), cast(l_2))
    alpha_t, sigma_t = schedules.alpha_sigma(schedules.expand_to(cast(l_t), z_t))
    alpha_2, sigma_2 = schedules.alpha_sigma(schedules.expand_to(cast(l_2), z_t))
    ratio = sigma_2 / sigma_t
    return (z_2 - ratio * z_t) / (alpha_2 - ratio * alpha_t)


def x_loss(
    v_hat: torch.Tensor,
    z_t: torch.Tensor,
    x_target: torch.Tensor,
    logsnr: torch.Tensor,
    weighting: configs.LossWeighting = "snr_trunc",
) -> torch.Tensor:
    """Per-sample w(logsnr) ||x~ - x_hat||^2 of a v-predicting student, computed in v space.

    x_hat = alpha z_t - sigma v_hat, so ||x~ - x_hat||^2 = sigma^2 ||v~ - v_hat||^2 with
    v~ = (alpha z_t - x~) / sigma: no cancellation at high SNR [PD §4].
    """
    alpha, sigma = schedules.alpha_sigma(schedules.expand_to(logsnr, z_t))
    v_target = (alpha * z_t - x_target) / sigma
    log_factor = losses.log_loss_weight(logsnr, weighting) - torch.nn.functional.softplus(logsnr)
    mse = (v_hat.float() - v_target).pow(2).flatten(1).mean(1)
    return torch.exp(log_factor) * mse


def with_guidance_embedding(teacher: VideoUNet, seed: int = 0) -> VideoUNet:
    """A student equal to ``teacher`` plus a w embedding whose output starts at zero [GD].

    The embedding's first layer is drawn from ``seed`` (the global RNG is left as it was), so
    one seed gives one student.
    """
    if teacher.cfg.use_guidance_embedding:
        return copy.deepcopy(teacher).requires_grad_(True).train()
    cfg = dataclasses.replace(teacher.cfg, use_guidance_embedding=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = VideoUNet(cfg).to(next(teacher.parameters()).device)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("w_emb.") for k in missing), (missing, unexpected)
    w_emb = cast(ScalarEmbedding, student.w_emb)  # built: use_guidance_embedding=True
    last = cast(torch.nn.Linear, w_emb.mlp[-1])  # its MLP's output layer
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    return student.requires_grad_(True).train()


class DistillObjective:
    """One distillation phase as a ``trainer.Trainer`` objective (see the module docstring).

    ``phase="guided"``: the teacher is undistilled; its guided prediction is the target.
    ``phase="progressive"``: the teacher embeds w; ``steps`` is the student's N.
    Data, SR conditioning, crops and augmentation are the stage's own (``base``); w is drawn
    from U(0, w_max) with w_max the student stage's ``guidance_w_max`` (``student_config``),
    else the distill config's.
    """

    def __init__(
        self,
        base: objectives.DiffusionObjective,
        teacher: torch.nn.Module,  # a VideoUNet, or a compiled wrapper of one
        phase: str,
        steps: int,
        distill_cfg: configs.DistillConfig,
    ) -> None:
        if phase not in ("guided", "progressive"):
            raise ValueError(f"phase={phase!r}; allowed: 'guided' or 'progressive'")
        self.base, self.phase, self.steps, self.cfg = base, phase, steps, distill_cfg
        learnt = base.stage.guidance_w_max
        self.w_max = distill_cfg.w_max if learnt is None else learnt  # w ~ U(0, w_max)
        self.teacher = teacher  # the caller's module, left as it is: see ``target``
        self.data, self.text = base.data, base.text

    def sample(self, batch_size: int) -> objectives.Batch:
        return self.base.sample(batch_size)

    def rng_state(self) -> dict[str, torch.Tensor]:
        return self.base.rng_state()

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        self.base.set_rng_state(state)

    def reseed(self, seed: int) -> None:
        self.base.reseed(seed)

    def _draws(self, batch: objectives.Batch, g: torch.Generator) -> dict[str, Any]:
        """Every random draw of one step, from the CPU generator: x, cond, w, t, eps,
        augmentation (the tensors on the device the clips were painted on)."""
        x, cond = self.base.conditioning(batch.x, g)
        b = x.shape[0]
        w = torch.rand(b, generator=g) * self.w_max
        if self.phase == "guided":
            t = torch.rand(b, generator=g, dtype=torch.float64)
        else:
            t = torch.randint(1, self.steps + 1, (b,), generator=g).double() / self.steps
        eps = torch.randn(x.shape, generator=g).to(x.device)  # x: where the data painted it
        return dict(x=x, w=w, t=t, eps=eps, extra=self.base.augmented(x, cond, g))

    @torch.no_grad()
    def target(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        logsnr: torch.Tensor,
        emb: torch.Tensor,
        mask: torch.Tensor,
        w: torch.Tensor,
        extra: dict[str, Any],
        is_image: torch.Tensor,
    ) -> torch.Tensor:
        """The teacher's x~ for the student at (z_t, t), in eval mode and without gradients.

        The teacher's train/eval flags are restored afterwards, so a caller's module is never
        changed (no_grad already keeps its parameters out of the student's graph).
        """
        flags = [(m, m.training) for m in self.teacher.modules()]
        self.teacher.eval()
        try:
            return self._target(z_t, t, logsnr, emb, mask, w, extra, is_image)
        finally:
            for module, training in flags:
                module.training = training

    def _target(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        logsnr: torch.Tensor,
        emb: torch.Tensor,
        mask: torch.Tensor,
        w: torch.Tensor,
        extra: dict[str, Any],
        is_image: torch.Tensor,
    ) -> torch.Tensor:
        """Guided: (1 + w) x_hat(z_t, c) - w x_hat(z_t); progressive: ``pd_target``."""
        d = self.base.diffusion
        if self.phase == "guided":
            two = lambda v: torch.cat([v, v])  # noqa: E731
            kwargs = {k: two(v) for k, v in extra.items()}
            v_hat = self.teacher(
                two(z_t), two(logsnr), two(emb), torch.cat([mask, torch.zeros_like(mask)]),
                is_image=two(is_image), **kwargs,
            )  # fmt: skip
            alpha, sigma = schedules.alpha_sigma(two(logsnr))
            x_c, x_u = parameterization.x_from_v(two(z_t), v_hat, alpha, sigma).chunk(2)
            return guidance.cfg(x_c, x_u, w)

        def teacher(z: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
            level = level.expand(z.shape[0]) if level.ndim == 0 else level
            v = self.teacher(z, level, emb, mask, guidance_w=w, is_image=is_image, **extra)
            alpha, sigma = schedules.alpha_sigma(level)
            return parameterization.x_from_v(z, v, alpha, sigma)

        return pd_target(
            teacher, z_t, t, 1.0 / self.steps, logsnr_min=d.logsnr_min, logsnr_max=d.logsnr_max
        )

    def loss(
        self,
        model: torch.nn.Module,
        batch: objectives.Batch,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        bf16: bool = False,
    ) -> torch.Tensor:
        """Mean distillation loss of one batch; the teacher runs in float32, no grad."""
        device, d = torch.device(device), self.base.diffusion
        draws = self._draws(batch, generator)
        emb, mask = self.text.encode(batch.captions)  # no text dropout: the student is conditional
        x, eps = draws["x"].to(device), draws["eps"].to(device)
        logsnr = schedules.logsnr_cosine(draws["t"], d.logsnr_min, d.logsnr_max).float().to(device)
        z_t = schedules.q_sample(x, logsnr, eps)
        emb, mask, w = emb.to(device), mask.to(device), draws["w"].to(device)
        extra = {k: v.to(device) for k, v in draws["extra"].items()}
        is_image = batch.is_image.to(device)
        x_target = self.target(z_t, draws["t"], logsnr, emb, mask, w, extra, is_image)
        with objectives.bf16_autocast(device, bf16):
            v_hat = model(z_t, logsnr, emb, mask, guidance_w=w, is_image=is_image, **extra)
        return x_loss(v_hat, z_t, x_target, logsnr, self.cfg.loss).mean()
