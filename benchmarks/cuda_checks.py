"""The checks and timings to run on a CUDA GPU, each one ``--parts`` entry of one JSON file.

    python benchmarks/cuda_checks.py --device cuda --out results/     # every part
    python benchmarks/cuda_checks.py --device cpu --tiny --out /tmp/c  # ci sizes, any machine
    python benchmarks/cuda_checks.py --prepare-text-cache textcache   # here, before a run

Parts (each adds its entry to ``OUT/cuda_checks.json``; one failing part does not stop the
others):

- ``equivalence``: the shipped cascade (and its distilled students) generates the same videos
  on the device as on the CPU from one seed (noise is drawn on the CPU and moved), per stage:
  max |difference| and PSNR, and the time per stage on each.
- ``attention``: temporal attention over more sequences than one fused-attention call takes
  (``attention.MAX_SEQUENCES``) runs in chunks on the device and matches a float64 reference.
- ``evaluate``: ``evaluate.cascade_report`` of the whole cascade on all captions x
  ``--repeats`` seeds at default settings, teacher and distilled.
- ``distill``: ``distill_stage`` of ``--distill-stages`` (default: base) on the device,
  ``--distill-steps`` per phase: seconds and steps/s per phase (guided, then each halving);
  ``--keep DIR`` keeps the runs (DIR/<stage>, for ``ivref export``).
- ``train``: the toy base stage trained from scratch on the device for ``--train-steps``
  or at most ``--train-seconds`` (SIGTERM then, which saves a checkpoint), with caption
  alignment every ``--eval-every``; the first step (compilation, with ``--compile``),
  training and evaluation timed apart.
- ``cascade``: every toy stage trained from scratch with its shipped step count (each
  stopped after its share of ``--cascade-seconds``, counted after the stage's first step,
  which compiles; ``--compile`` as in ``train``), then
  ``evaluate.cascade_report`` of the cascade they make: the time per stage and the scores.

The default toy text encoder needs the MiniLM package; where it is missing (a GPU machine
that cannot install it) ``--text-cache`` serves embeddings computed beforehand with
``--prepare-text-cache``, and a prompt missing from it is an error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import torch

from ivref import attention, cascade, configs, data, distill, evaluate, text, train
from ivref.unet3d import VideoUNet

DEMO_PROMPTS = ["a red circle moving left", "a blue square moving up"]


class CacheOnlyEncoder:
    """An encoder whose every prompt must already be in a ``text.CachedEncoder`` folder."""

    def __init__(self, name: str, dim: int, max_length: int) -> None:
        self.name, self.dim, self.max_length = name, dim, max_length

    def encode(self, prompts):
        raise KeyError(f"prompts not in the carried text cache: {list(prompts)[:4]}")


class CarriedCache(text.CachedEncoder):
    """A ``text.CachedEncoder`` that is all there is of its encoder: the probe reads it too."""

    @property
    def uncached(self):
        return self


ENCODER_NAME = "encoder-name.txt"  # in a prepared cache: the name its entries are keyed by


def all_prompts() -> list[str]:
    """Every caption training, evaluation and these checks can ask for (videos and images)."""
    images = [data.caption(c, s, None) for c, s, _ in data.COMBOS]
    return sorted(set(data.CAPTIONS) | set(images) | set(DEMO_PROMPTS))


def encoder_for(cfg: configs.CascadeConfig, cache_dir: Path | None) -> text.TextEncoder:
    try:
        return text.build_encoder(cfg.text, cache_dir=cache_dir)
    except ValueError:
        if cfg.text.encoder != "minilm" or cache_dir is None:
            raise
        if not (cache_dir / ENCODER_NAME).is_file():
            raise ValueError(
                f"{cache_dir} holds no {ENCODER_NAME}: it was prepared before the encoder's name "
                "was recorded; run --prepare-text-cache again where MiniLM is installed"
            ) from None
        name = (cache_dir / ENCODER_NAME).read_text().strip()  # MiniLM's, with its fingerprint
        inner = CacheOnlyEncoder(name, cfg.text.dim, cfg.text.max_length)
        return CarriedCache(inner, cache_dir)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load(args, variant: str | None) -> cascade.Cascade:
    """The shipped toy cascade, or (``--tiny``) a ci cascade of random weights."""
    if args.tiny:
        cfg = configs.ci()
        torch.manual_seed(0 if variant is None else 1)
        models = {s.name: VideoUNet(s.unet).eval() for s in cfg.stages}
        return cascade.Cascade(cfg, models, encoder_for(cfg, args.text_cache))
    cfg = configs.CascadeConfig.from_dict(
        json.loads((cascade.shipped_dir() / "cascade.json").read_text())["config"]
    )
    return cascade.Cascade.from_pretrained(
        variant=variant, encoder=encoder_for(cfg, args.text_cache)
    )


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(evaluate.psnr(a.float(), b.float()).mean())


def part_equivalence(args) -> dict:
    result = {}
    for variant in (None, "distilled"):
        model = load(args, variant)
        runs = []  # (stage videos, stage seconds, total seconds): the CPU's, then the device's
        for device in ("cpu", str(args.device)):
            model.to(device)
            sync(torch.device(device))
            start = time.perf_counter()
            _, stages = model.generate(DEMO_PROMPTS, seed=0, return_stages=True)
            runs.append((stages, dict(model.timings), time.perf_counter() - start))
        (cpu, cpu_t, cpu_s), (dev, dev_t, dev_s) = runs
        rows = {}
        for stage, a, b in zip(model.trained_stages, cpu, dev, strict=True):
            rows[stage.name] = {
                "shape": list(b.shape),
                "max_abs_diff": float((a - b).abs().max()),
                "psnr_db": psnr(a, b),
                "cpu_s": cpu_t.get(stage.name),
                "device_s": dev_t.get(stage.name),
            }
        result[variant or "teacher"] = {"stages": rows, "cpu_s": cpu_s, "device_s": dev_s}
        print(f"equivalence {variant or 'teacher'}: {json.dumps(rows)}")
    return result


def part_attention(args) -> dict:
    """bf16 on CUDA (where cuDNN's fused kernel, the one with the limit, runs), fp32 on CPU."""
    device = args.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = attention.MAX_SEQUENCES + 1000 if not args.tiny else 40
    old = attention.MAX_SEQUENCES
    if args.tiny:  # force chunking at a small size
        attention.MAX_SEQUENCES = 16
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, 2, 16, 32, generator=g).to(dtype) for _ in range(3))
    bias = torch.randn(1, 2, 16, 16, generator=g).to(dtype)
    try:
        out = attention.attend(*(t.to(device) for t in (q, k, v)), bias.to(device))
        sync(device)
    finally:
        attention.MAX_SEQUENCES = old
    scores = q.double() @ k.double().transpose(-1, -2) / math.sqrt(32) + bias.double()
    ref = torch.softmax(scores, -1) @ v.double()
    rel = float((out.double().cpu() - ref).norm() / ref.norm())
    unchunked = "not tried"
    if not args.tiny:
        try:  # one call over all sequences, which the chunking avoids
            attention._attend(q.to(device), k.to(device), v.to(device), bias.to(device))
            sync(device)
            unchunked = "ran"
        except RuntimeError as err:
            unchunked = f"failed: {str(err).splitlines()[0][:200]}"
    print(f"attention: {n} sequences ({dtype}), rel error {rel:.2e}; one call: {unchunked}")
    return {"sequences": n, "dtype": str(dtype), "rel_error_vs_float64": rel,
            "unchunked_call": unchunked}  # fmt: skip


def part_evaluate(args) -> dict:
    prompts = evaluate.split_prompts("all", args.repeats)
    if args.tiny:
        prompts = prompts[:4]
    result = {}
    for variant in (None, "distilled"):
        model = load(args, variant).to(args.device)
        sync(args.device)
        start = time.perf_counter()
        report = evaluate.cascade_report(model, prompts, seed=0)
        report["wall_s"] = time.perf_counter() - start
        result[variant or "teacher"] = report
        print(evaluate.format_cascade_report(report))
    return result


def phase_seconds(folder: Path) -> dict:
    rows = train.read_log(folder / train.LOG)
    seconds, last = 0.0, 0
    for r in rows:
        if r.get("steps_per_s"):
            seconds += (r["step"] - last) / r["steps_per_s"]
            last = r["step"]
    return {"steps": last, "seconds": seconds, "steps_per_s": last / seconds if seconds else None}


def part_distill(args) -> dict:
    model = load(args, None)
    result = {}
    for stage in args.distill_stages:
        out = (args.keep or Path(tempfile.mkdtemp(prefix="cuda-distill-"))) / stage
        start = time.perf_counter()
        distill.distill_stage(
            model, stage, out, device=args.device, batch_size=args.distill_batch,
            guided_steps=args.distill_steps, halving_steps=args.distill_steps,
            checkpoint_every=10**6, progress=False,
        )  # fmt: skip
        wall = time.perf_counter() - start
        plan = json.loads((out / distill.PLAN).read_text())
        phases = {name: phase_seconds(out / name) for name in plan["phases"]}
        print(f"distill {stage} on {args.device}: {wall:.0f} s; {json.dumps(phases)}")
        result[stage] = {"plan": plan, "phases": phases, "wall_s": wall}
    return result | {"batch": args.distill_batch}


class _Timed:
    """An evaluator that also adds up the seconds it takes (training time is wall minus this)."""

    def __init__(self, evaluator) -> None:
        self.evaluator, self.seconds = evaluator, 0.0

    def __call__(self, trainer) -> dict:
        start = time.perf_counter()
        try:
            return self.evaluator(trainer)
        finally:
            self.seconds += time.perf_counter() - start


def train_timed(trainer: train.Trainer, steps: int, seconds: float) -> dict:
    """``trainer.fit(steps)``, stopped by SIGTERM ``seconds`` after its first step: steps
    done and the seconds of the first step (compilation, for a compiled model), of the other
    training steps, and of evaluation apart."""
    start = time.perf_counter()
    trainer.fit(1)
    sync(trainer.device)
    first = time.perf_counter() - start
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()  # SIGTERM only inside ``fit``, whose handler saves and stops
    try:
        trainer.fit(steps)
        sync(trainer.device)
    finally:
        timer.cancel()
    wall = time.perf_counter() - start
    eval_s = trainer.evaluate.seconds if isinstance(trainer.evaluate, _Timed) else 0.0
    train_s = wall - first - eval_s
    rate = (trainer.step - 1) / train_s if trainer.step > 1 and train_s > 0 else None
    return {
        "steps": trainer.step, "target_steps": steps, "stopped_by_time": trainer.signal is not None,
        "wall_s": wall, "first_step_s": first, "eval_s": eval_s, "train_s": train_s,
        "steps_per_s": rate, "batch": trainer.batch_size, "compiled": trainer.compiled,
        "seconds_for_target": 1 / rate * (steps - 1) + first if rate else None,
    }  # fmt: skip


def part_train(args) -> dict:
    """The toy base from scratch; ``--compile``: as ``ivref train --compile`` runs it."""
    cfg = configs.ci() if args.tiny else configs.toy()
    out = Path(tempfile.mkdtemp(prefix="cuda-train-"))
    trainer = train.Trainer(
        cfg, "base", out, text_encoder=encoder_for(cfg, args.text_cache), device=args.device,
        checkpoint_every=10**6, evaluate=_Timed(evaluate.stage_evaluator()),
        evaluate_every=args.eval_every, progress=False, compile=args.compile,
    )  # fmt: skip
    result = train_timed(trainer, args.train_steps, args.train_seconds)
    rows = train.read_log(out / train.LOG)
    result["evals"] = [r for r in rows if any(k.startswith("eval_") for k in r)]
    print(f"train base on {args.device}: {json.dumps(result)}")
    return result


SHIPPED_STEPS = {"base": 3000, "tsr": 2000, "ssr1": 2271, "ssr2": 12168}  # data/README.md


def part_cascade(args) -> dict:
    """Every toy stage from scratch with the shipped step counts (each stopped after its share
    of ``--cascade-seconds``, counted from its first step, which compiles), then
    ``evaluate.cascade_report`` of the cascade they make."""
    cfg = configs.ci() if args.tiny else configs.toy()
    encoder = encoder_for(cfg, args.text_cache)
    steps = {s.name: (8 if args.tiny else SHIPPED_STEPS[s.name]) for s in cfg.stages}
    total = sum(steps.values())
    stages, models = {}, {}
    for stage in cfg.stages:
        trainer = train.Trainer(
            cfg, stage.name, Path(tempfile.mkdtemp(prefix=f"cuda-{stage.name}-")),
            text_encoder=encoder, device=args.device, checkpoint_every=10**6, progress=False,
            compile=args.compile,
        )  # fmt: skip
        share = args.cascade_seconds * steps[stage.name] / total
        stages[stage.name] = train_timed(trainer, steps[stage.name], share)
        models[stage.name] = trainer.ema
        print(f"cascade: {stage.name} {json.dumps(stages[stage.name])}")
    model = cascade.Cascade(cfg, models, encoder).to(args.device)
    prompts = evaluate.split_prompts("all", args.repeats)[: 4 if args.tiny else None]
    start = time.perf_counter()
    report = evaluate.cascade_report(model, prompts, seed=0)
    report["wall_s"] = time.perf_counter() - start
    print(evaluate.format_cascade_report(report))
    return {"stages": stages, "report": report}


PARTS = {
    "equivalence": part_equivalence,
    "attention": part_attention,
    "evaluate": part_evaluate,
    "distill": part_distill,
    "train": part_train,
    "cascade": part_cascade,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--out", type=Path, default=Path("cuda_checks"))
    p.add_argument("--tiny", action="store_true", help="ci preset with random weights")
    p.add_argument("--text-cache", type=Path, help="text.CachedEncoder folder")
    p.add_argument("--prepare-text-cache", type=Path, help="fill this folder and exit")
    p.add_argument("--repeats", type=int, default=2, help="seeds per caption (evaluate)")
    p.add_argument("--distill-steps", type=int, default=100, help="steps per distill phase")
    p.add_argument("--distill-batch", type=int, default=16)
    p.add_argument("--distill-stages", nargs="+", default=["base"])
    p.add_argument("--keep", type=Path, help="keep the distillation runs here")
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--train-seconds", type=float, default=120.0)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--compile", action="store_true", help="train and cascade: compiled steps")
    p.add_argument("--cascade-seconds", type=float, default=290.0, help="training, all stages")
    args = p.parse_args(argv)
    if args.prepare_text_cache:
        cfg = configs.toy()
        encoder = text.build_encoder(cfg.text, cache_dir=args.prepare_text_cache)
        encoder.encode(all_prompts())
        (args.prepare_text_cache / ENCODER_NAME).write_text(encoder.name + "\n")
        print(f"{len(all_prompts())} prompts cached in {args.prepare_text_cache}")
        return 0
    args.device = cascade.parse_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in args.parts:
        start = time.perf_counter()
        try:
            run_part = PARTS[name]
            result = run_part(args)
            result |= {"ok": True}
        except Exception as err:  # a report of every part, whatever one of them does
            traceback.print_exc()
            result, failed = {"ok": False, "error": repr(err)[:2000]}, failed + [name]
        result |= {"part": name, "device": str(args.device), "seconds": time.perf_counter() - start}
        if args.device.type == "cuda":
            result["device_name"] = torch.cuda.get_device_name(args.device)
            result["max_memory_gib"] = torch.cuda.max_memory_allocated(args.device) / 2**30
            torch.cuda.reset_peak_memory_stats(args.device)
        result["torch"] = torch.__version__
        path = args.out / "cuda_checks.json"
        report = json.loads(path.read_text()) if path.is_file() else {}
        report[name] = result
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"== {name}: {'ok' if result['ok'] else 'FAILED'} in {result['seconds']:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
