"""ivref's VideoUNet against its peers: train step and sampling forward at matched size.

    python benchmarks/unet_step.py --json unet_step.json          # toy base, TSR, SSR32, 45M
    python benchmarks/unet_step.py --sizes base tsr --repeats 9   # a subset
    python benchmarks/unet_step.py --device cuda                  # the same on a GPU
    python benchmarks/unet_step.py --tiny                         # seconds, for CI
    python benchmarks/unet_step.py --sizes 45m --input 16 64 64   # another input size
    python benchmarks/unet_step.py --device cuda --compile        # every model compiled

Peers: diffusers' ``UNet3DConditionModel`` and lucidrains' video-diffusion-pytorch ``Unet3D``
(``pip install -e .[bench]``; a missing peer is skipped and said so). For each size the peers'
widths are searched so their parameter count is within 15% of ivref's (the counts and the
relative error are printed). Every model gets the same input: B x C x F x H x W video, the
SR stages' low-resolution video concatenated on channels, text tokens (diffusers: as
cross-attention keys; video-diffusion-pytorch takes one vector: the mean token).

Each model lives in its own process (so peak memory is its own: ``ru_maxrss`` above the
level after imports on CPU, ``torch.cuda.max_memory_allocated`` on CUDA). After warm-up the
processes take turns, one repeat each (interleaved), and the medians are reported with the
ratios peer / ivref. The train step is forward + v-style MSE + backward + AdamW (fused, the
same for all), under bf16 autocast as ivref trains (``--precision fp32`` to switch off); the
sampling forward is one no-grad forward in eval mode. After the timed repeats each model
counts the ATen operators of one more train step (all of them, and those that launch a
kernel), a measure of per-step overhead that does not depend on the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
import types

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SIZES = ("base", "tsr", "ssr32", "45m")
PEERS = ("diffusers", "vdp")
TOLERANCE = 0.15  # peers' parameter counts within 15% of ivref's


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark size: the ivref config and the input every model gets."""

    name: str
    unet: object  # ivref.configs.UNetConfig
    batch: int
    frames: int
    height: int
    width: int
    text_length: int = 16


def cases(tiny: bool, device: str) -> dict[str, Case]:
    from ivref import configs

    if tiny:  # the ci preset's base U-Net at width 32 (diffusers has no config as small)
        ci = configs.preset("ci")
        base = ci.stage("base")

        def wide(u):
            return dataclasses.replace(u, base_channels=32)

        return {
            "base": Case("base", wide(base.unet), 1, base.num_frames, base.height, base.width, 4)
        }
    toy = configs.preset("toy")
    base, tsr, ssr1 = toy.stage("base"), toy.stage("tsr"), toy.stage("ssr1")
    # ~45M: the toy base's layout at width 96, two ResBlocks a level, attention below the top
    big = dataclasses.replace(
        base.unet, base_channels=96, num_res_blocks=2, spatial_attention=(False, True, True)
    )
    # batch 4 on a GPU: at batch 8 diffusers' model needed more than an H200's 141 GB
    big_input = (4, 16, 64, 64) if device == "cuda" else (1, 8, 32, 32)
    return {
        "base": Case("base", base.unet, 2, 8, 16, 16),
        "tsr": Case("tsr", tsr.unet, 2, 16, 16, 16),
        "ssr32": Case("ssr32", ssr1.unet, 2, 16, 32, 32),
        "45m": Case("45m", big, *big_input),
    }


# -- the models -------------------------------------------------------------------------------


def _placeholder(name: str) -> type:
    """Any public name of the stub: a class that accepts any arguments and does nothing."""
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (), {"__init__": lambda self, *args, **kwargs: None})


def _stub_torchvision() -> None:
    """video-diffusion-pytorch imports torchvision for its data pipeline only (not Unet3D)."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or a wheel built for another torch
        tv = types.ModuleType("torchvision")
        for sub in ("transforms", "utils"):
            mod = types.ModuleType(f"torchvision.{sub}")
            mod.__getattr__ = _placeholder
            setattr(tv, sub, mod)
            sys.modules[f"torchvision.{sub}"] = mod
        sys.modules["torchvision"] = tv


def build(kind: str, case: Case, width: int = 0, extra: int = 0) -> torch.nn.Module:
    """ivref's VideoUNet, or a peer at base width ``width`` (``extra``: layers / heads)."""
    u = case.unet
    mults = tuple(u.channel_mults)
    if kind == "ivref":
        from ivref import unet3d

        return unet3d.VideoUNet(u)
    if kind == "diffusers":
        from diffusers import UNet3DConditionModel

        levels = len(mults)
        widths = tuple(width * m for m in mults)
        heads = max(h for h in range(1, max(2, width // 32 + 1)) if width % h == 0)
        return UNet3DConditionModel(
            in_channels=u.in_channels + u.cond_channels,
            out_channels=u.out_channels,
            down_block_types=("CrossAttnDownBlock3D",) * (levels - 1) + ("DownBlock3D",),
            up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (levels - 1),
            block_out_channels=widths,
            layers_per_block=extra,
            norm_num_groups=8,
            cross_attention_dim=u.text_dim,
            attention_head_dim=heads,  # diffusers' UNet3D reads this as the number of heads
        )
    if kind == "vdp":
        _stub_torchvision()
        from video_diffusion_pytorch import Unet3D

        return Unet3D(
            dim=width,
            cond_dim=u.text_dim,
            dim_mults=mults,
            channels=u.in_channels + u.cond_channels,
            out_dim=u.out_channels,
            attn_heads=extra,
            attn_dim_head=32,
        )
    raise ValueError(f"unknown model {kind!r}; allowed: ivref, {', '.join(PEERS)}")


def count(kind: str, case: Case, width: int = 0, extra: int = 0) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build(kind, case, width, extra).parameters())


def match(kind: str, case: Case, target: int) -> dict:
    """The peer width and layers (diffusers) / heads (vdp) whose count is nearest ``target``."""
    extras = (1, 2) if kind == "diffusers" else (1, 2, 4, 8)
    best = None
    for extra in extras:
        for width in range(8, 513, 8):
            n = count(kind, case, width, extra)
            row = {"width": width, "extra": extra, "params": n, "error": n / target - 1}
            if best is None or abs(row["error"]) < abs(best["error"]):
                best = row
            if n > target * (1 + TOLERANCE):
                break
    return best


# -- one model's process ------------------------------------------------------------------------


def inputs(kind: str, case: Case, device: torch.device) -> tuple[tuple, dict, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    u, b = case.unet, case.batch
    shape = (b, u.in_channels, case.frames, case.height, case.width)
    z_t = torch.randn(shape, generator=g).to(device)
    target = torch.randn((b, u.out_channels, *shape[2:]), generator=g).to(device)
    cond = torch.randn((b, u.cond_channels, *shape[2:]), generator=g).to(device)
    text = torch.randn(b, case.text_length, u.text_dim, generator=g).to(device)
    t = torch.rand(b, generator=g).to(device)
    if kind == "ivref":
        kw = {"cond_video": cond} if u.cond_channels else {}
        if u.use_aug_embedding:
            kw["aug_logsnr"] = torch.zeros(b, device=device)
        mask = torch.ones(b, case.text_length, dtype=torch.bool, device=device)
        return (z_t, t, text, mask), kw, target
    x = torch.cat([z_t, cond], dim=1) if u.cond_channels else z_t
    if kind == "diffusers":
        return (x, t * 1000), {"encoder_hidden_states": text}, target
    return (x, t * 1000), {"cond": text.mean(1)}, target


def worker(conn, *args) -> None:
    """Run ``serve``; any error goes back to the parent as text, so it can say what failed."""
    try:
        serve(conn, *args)
    except BaseException:
        import traceback

        conn.send({"error": traceback.format_exc()})
    finally:
        conn.close()


def serve(
    conn, kind: str, case: Case, width: int, extra: int, device: str, bf16: bool,
    compile_options: dict | None = None,
) -> None:  # fmt: skip
    """Build one model, then run one timed repeat per request; report peak memory at the end.

    ``compile_options``: ``torch.compile`` the model with them (every model alike)."""
    torch.manual_seed(0)
    dev = torch.device(device)
    available(kind)  # imports first: peak memory counts the model's work, not its library
    if dev.type == "cpu":
        rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    else:
        torch.cuda.reset_peak_memory_stats(dev)
        mem_start = torch.cuda.memory_allocated(dev)
    model = build(kind, case, width, extra).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    args, kwargs, target = inputs(kind, case, dev)
    if compile_options is not None:
        # a peer's graph breaks compile its blocks' shared forward once per shape and mode
        torch._dynamo.config.recompile_limit = 64
        model.compile(**compile_options)  # in place: the optimizer keeps the same parameters

    def forward():
        if compile_options is not None:  # a new step: CUDA-graph outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(*args, **kwargs)
        return out.sample if hasattr(out, "sample") else out

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def train_step():
        model.train()
        opt.zero_grad(set_to_none=True)  # before the forward, as ivref's Trainer does
        loss = (forward().float() - target).square().mean()
        loss.backward()
        opt.step()

    @torch.no_grad()
    def sample_forward():
        model.eval()
        forward()

    def timed(fn):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    conn.send(sum(p.numel() for p in model.parameters()))
    while conn.recv() is not None:  # None: done
        conn.send({"train_s": timed(train_step), "sample_s": timed(sample_forward)})
    if dev.type == "cpu":  # ru_maxrss is in KiB on Linux
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_start) * 1024
    else:
        peak = torch.cuda.max_memory_allocated(dev) - mem_start
    if compile_options is not None:  # a compiled step's operators are not ATen calls
        conn.send({"peak_bytes": peak, "ops": None, "kernel_ops": None})
        return
    with OpCounter() as ops:  # after the peak: one more step, counted
        train_step()
        sync()
    conn.send({"peak_bytes": peak, "ops": ops.total, "kernel_ops": ops.kernels})


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators a region runs after autograd and autocast (forward, backward
    and optimizer alike): ``total``, and ``kernels``, those that compute or copy data rather
    than only make a view. Where a step is bound by launching kernels (small models on a
    GPU), its time follows this count more than the arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        self.total = self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.total += 1
        self.kernels += not _is_view_or_metadata(func)
        return func(*args, **(kwargs or {}))


def _is_view_or_metadata(func) -> bool:
    """An operator that launches no kernel: a view, an alias, or a fresh uninitialised buffer."""
    schema = func._schema
    returns_alias = any(r.alias_info is not None for r in schema.returns)
    return (returns_alias and not schema.is_mutable) or func.overloadpacket.__name__ in _METADATA


_METADATA = {  # no alias in their schemas, yet no data is computed or copied
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach",
    "_unsafe_view", "lift_fresh",
}  # fmt: skip


def measure(
    case: Case, models: dict, device: str, bf16: bool, warmup: int, repeats: int,
    compile_options: dict | None = None,
) -> dict:  # fmt: skip
    """One process per model; warm-up, then ``repeats`` rounds, each model once per round."""
    ctx = mp.get_context("spawn")
    procs = {}
    for kind, (width, extra) in models.items():
        parent, child = ctx.Pipe()
        worker_args = (child, kind, case, width, extra, device, bf16, compile_options)
        p = ctx.Process(target=worker, args=worker_args)
        p.start()
        child.close()  # so a dead worker reads as EOF here, not as a hang
        procs[kind] = (p, parent)

    failed: dict[str, str] = {}

    def receive(kind):
        """The worker's reply; a peer that failed (out of memory, say) is dropped and noted."""
        reply = procs[kind][1].recv()
        if isinstance(reply, dict) and "error" in reply:
            if kind == "ivref":  # nothing left to compare against
                for p, _ in procs.values():
                    p.kill()
                raise RuntimeError(f"{kind} on {case.name} failed:\n{reply['error']}")
            procs.pop(kind)[0].kill()
            failed[kind] = reply["error"].strip().splitlines()[-1][:500]
            print(f"  {kind} on {case.name} failed and is left out: {failed[kind]}")
            return None
        return reply

    params = {kind: receive(kind) for kind in list(procs)}
    runs = {kind: [] for kind in procs}
    for i in range(warmup + repeats):
        for kind in list(procs):  # interleaved: one repeat of each in turn
            procs[kind][1].send(True)
            row = receive(kind)
            if row is not None and i >= warmup:
                runs[kind].append(row)
    result = {}
    for kind in list(procs):
        p, conn = procs[kind]
        conn.send(None)
        reply = receive(kind)
        if reply is None:
            continue
        p.join()
        result[kind] = {
            "params": params[kind],
            "train_ms": 1e3 * statistics.median(r["train_s"] for r in runs[kind]),
            "sample_ms": 1e3 * statistics.median(r["sample_s"] for r in runs[kind]),
            "peak_mib": reply["peak_bytes"] / 2**20,
            "train_ops": reply["ops"],
            "train_kernel_ops": reply["kernel_ops"],
        }
    return result | {kind: {"error": error} for kind, error in failed.items()}


# -- the run ------------------------------------------------------------------------------------


def available(kind: str) -> bool:
    try:
        if kind == "vdp":
            _stub_torchvision()
            import video_diffusion_pytorch  # noqa: F401
        elif kind == "diffusers":
            from diffusers import UNet3DConditionModel  # noqa: F401
        else:
            from ivref import unet3d  # noqa: F401
    except ImportError as e:
        print(f"skipping {kind}: {e} (pip install -e .[bench])")
        return False
    return True


def run_case(case: Case, peers: list[str], args) -> dict:
    target = count("ivref", case)
    models = {"ivref": (0, 0)}
    config = {"ivref": {"params": target}}
    for kind in peers:
        m = match(kind, case, target)
        if abs(m["error"]) > TOLERANCE:
            print(f"  {case.name}: no {kind} config within 15% (nearest {m}); skipped")
            continue
        models[kind] = (m["width"], m["extra"])
        config[kind] = m
    shape = (case.batch, case.unet.in_channels, case.frames, case.height, case.width)
    print(
        f"{case.name}: input {shape}, parameters "
        + ", ".join(
            f"{k} {c['params'] / 1e6:.2f}M" + (f" ({c['error']:+.1%})" if "error" in c else "")
            for k, c in config.items()
        )
    )
    timings = measure(
        case, models, args.device, args.precision == "bf16", args.warmup, args.repeats,
        compile_options(args),
    )  # fmt: skip
    ref = timings["ivref"]
    for kind, t in timings.items():
        t["config"] = config[kind]
        if "error" in t:
            continue
        counted = t["train_kernel_ops"] is not None
        if kind != "ivref":
            t["train_ratio"] = t["train_ms"] / ref["train_ms"]  # > 1: ivref is faster
            t["sample_ratio"] = t["sample_ms"] / ref["sample_ms"]
            t["memory_ratio"] = ref["peak_mib"] / t["peak_mib"] if t["peak_mib"] > 0 else None
            if counted:
                t["kernel_ops_ratio"] = t["train_kernel_ops"] / ref["train_kernel_ops"]
        print(
            f"  {kind:9s} train {t['train_ms']:8.1f} ms  sample {t['sample_ms']:8.1f} ms  "
            f"peak {t['peak_mib']:8.0f} MiB"
            + (
                f"  ops {t['train_kernel_ops']:5d} kernels of {t['train_ops']:5d}"
                if counted
                else ""
            )
            + (
                f"  | {kind}/ivref: train {t['train_ratio']:.2f}x, sample "
                f"{t['sample_ratio']:.2f}x; ivref memory {t['memory_ratio']:.2f}x of it"
                if kind != "ivref" and t["memory_ratio"]
                else ""
            )
        )
    return {"input": list(shape), "models": timings}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    p.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--batch", type=int, help="override every size's batch")
    p.add_argument(
        "--input",
        nargs=3,
        type=int,
        metavar=("F", "H", "W"),
        help="override every size's frames, height and width",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile every model alike (CUDA graphs on a GPU); warm-up compiles",
    )
    p.add_argument(
        "--compile-backend", help="a torch.compile backend instead of inductor (e.g. aot_eager)"
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tiny", action="store_true", help="ci-size U-Nets, 1 repeat (for CI)")
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.tiny:
        args.warmup, args.repeats = 1, 1
    if args.compile:  # compile, then (CUDA graphs) record, before the timed rounds
        args.warmup = max(args.warmup, 3)
    all_cases = cases(args.tiny, args.device)
    overrides = {"batch": args.batch} if args.batch else {}
    if args.input:
        overrides |= dict(zip(("frames", "height", "width"), args.input, strict=True))
    all_cases = {k: dataclasses.replace(c, **overrides) for k, c in all_cases.items()}
    peers = [k for k in args.peers if available(k)]
    result = {
        "benchmark": "unet_step",
        "device": args.device,
        "device_name": _device_name(args.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "compile": compile_options(args),
        "repeats": args.repeats,
        "sizes": {},
    }
    for name in args.sizes:
        if name in all_cases:
            result["sizes"][name] = run_case(all_cases[name], peers, args)
            if args.json:  # after every size, so an interrupted run keeps what it measured
                with open(args.json, "w") as f:
                    json.dump(result, f, indent=2)
    return 0


def compile_options(args) -> dict | None:
    """``torch.compile`` options of ``--compile``: static shapes; CUDA graphs on a GPU, as
    ivref's own ``Trainer(compile=True)`` uses them."""
    if not args.compile:
        return None
    if args.compile_backend:
        return {"dynamic": False, "backend": args.compile_backend}
    from ivref import train

    return train.compile_options(torch.device(args.device))


def _device_name(device: str) -> str:
    from ivref import devices

    return devices.device_name(device)


if __name__ == "__main__":
    sys.exit(main())
