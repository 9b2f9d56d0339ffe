"""Fidelity of distilled stages: PSNR against the teacher's many-step samples from the same noise.

    python benchmarks/distill_fidelity.py                  # shipped toy cascade and its students
    python benchmarks/distill_fidelity.py --prompts 8 --json docs/bench/distill_fidelity.json
    python benchmarks/distill_fidelity.py --scale ci       # seeded random weights, for CI
    python benchmarks/distill_fidelity.py --phases runs/distill-base   # every phase of a run

Caption alignment saturates in the toy world, so distillation is judged by fidelity. For
every distilled stage, from the same z_1, text and (SR stages) the same low-res input with
the same augmentation noise:
- reference: the undistilled teacher at ``--ref-factor`` x its default steps (DDIM, its
  default guidance w, or ``--guidance W`` for every sample);
- the student at its N steps, with its own stochastic sampler [IV §2.7] and with DDIM;
- the undistilled teacher at the same N (DDIM, same w).
PSNR = 10 log10(2^2 / MSE) per video (``evaluate.psnr``), mean over the prompts. SR stages
refine the toy world's true clips seen at their input size (``superres.low_res``), so each
stage is judged alone. The student "wins" by PSNR(student) - PSNR(teacher at N).
``--phases DIR`` scores the student of every phase of one ``ivref distill`` run instead,
which shows where fidelity is lost (the guided phase, or a halving).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

from ivref import cascade as cascade_lib
from ivref import cli, data, devices, distill, evaluate, objectives, superres


def _random_ci_cascades() -> dict[str, cascade_lib.Cascade]:
    """benchmarks/sampling.py's seeded random ci cascade and its 'distilled' copy."""
    path = Path(__file__).with_name("sampling.py")
    spec = importlib.util.spec_from_file_location("ivref_bench_sampling", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.random_ci_cascades()


def stage_fidelity(
    teacher: cascade_lib.Cascade,
    student: cascade_lib.Cascade,
    name: str,
    prompts: list[str],
    ref_factor: int = 2,
    seed: int = 0,
    guidance: float | None = None,
) -> dict:
    """PSNRs (dB) of one stage's student and teacher at N against the teacher's reference,
    every sample at guidance weight ``guidance`` (None: the teacher's own)."""
    t_stage, s_stage = teacher.cfg.stage(name), student.cfg.stage(name)
    t_model, s_model = teacher.models[name], student.models[name]
    emb, mask = teacher.encoder.encode(prompts)
    g = torch.Generator().manual_seed(seed)
    shape = (len(prompts), 3, t_stage.num_frames, t_stage.height, t_stage.width)
    noise = torch.randn(shape, generator=g)
    kwargs: dict = {"noise": noise}
    previous = objectives.previous_stage(teacher.cfg, t_stage)
    if previous is not None:
        truth = evaluate.render_eval_clips(t_stage, prompts, seed)
        kwargs["cond_video"] = superres.low_res(truth, t_stage, previous)
        kwargs["aug_noise"] = torch.randn(shape, generator=g)
    d = teacher.cfg.diffusion
    n = s_stage.sample_steps
    ddim = dataclasses.replace(t_stage, sampler="ddim")
    w = t_stage.guidance_w if guidance is None else guidance

    def run(model, stage, steps):
        began = time.perf_counter()
        with torch.no_grad():
            x = cascade_lib.sample_stage(
                model, stage, d, emb, mask, steps=steps, guidance_w=w,
                generator=torch.Generator().manual_seed(seed + 1), **kwargs,
            )  # fmt: skip
        return x.float().cpu(), time.perf_counter() - began

    reference, ref_s = run(t_model, ddim, ref_factor * t_stage.sample_steps)
    x_student, student_s = run(s_model, s_stage, n)
    x_student_ddim, _ = run(s_model, dataclasses.replace(s_stage, sampler="ddim"), n)
    x_teacher, teacher_s = run(t_model, ddim, n)
    db = {
        key: float(evaluate.psnr(x, reference).mean())
        for key, x in (
            ("student", x_student),
            ("student_ddim", x_student_ddim),
            ("teacher_at_n", x_teacher),
        )
    }
    return {
        "steps": n,
        "reference_steps": ref_factor * t_stage.sample_steps,
        "guidance_w": w,
        "psnr_db": db,
        "gain_db": db["student"] - db["teacher_at_n"],
        "seconds": {"reference": ref_s, "student": student_s, "teacher_at_n": teacher_s},
    }


def table(result: dict) -> str:
    """Markdown: per stage, PSNR of the student (stochastic, DDIM) and of the teacher at N."""
    lines = [
        "| stage | N | w | student dB | student, DDIM dB | teacher at N dB "
        "| gain dB | gain, DDIM dB |",
        "|---|---|---|---|---|---|---|---|",
    ]  # rows are keyed by stage, or by phase with --phases
    for name, r in result["stages"].items():
        p = r["psnr_db"]
        lines.append(
            f"| {name} | {r['steps']} | {r['guidance_w']:g} | {p['student']:.1f} | "
            f"{p['student_ddim']:.1f} | {p['teacher_at_n']:.1f} | {r['gain_db']:+.1f} | "
            f"{p['student_ddim'] - p['teacher_at_n']:+.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, help="cascade folder (default: the shipped one)")
    p.add_argument("--scale", choices=("toy", "ci"), default="toy", help="ci: random weights")
    p.add_argument("--prompts", type=int, default=8, help="spread_prompts(N) of the toy world")
    p.add_argument("--stages", nargs="+", help="default: every distilled stage")
    p.add_argument("--ref-factor", type=int, default=2, help="reference: this x default steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, help="w of every sample (default: the teacher's)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--phases", type=Path, help="an `ivref distill` run: score each phase")
    p.add_argument("--json", type=Path, help="write the result here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.phases is not None:
        return _phases(args)
    if args.scale == "ci":
        pair = _random_ci_cascades()
        teacher, student = pair["teacher"], pair["distilled"]
    else:
        teacher = cascade_lib.Cascade.from_pretrained(args.checkpoint)
        student = cascade_lib.Cascade.from_pretrained(args.checkpoint, variant="distilled")
    distilled = [
        s.name for s in student.trained_stages if student.models[s.name].cfg.use_guidance_embedding
    ]
    names = args.stages or distilled
    unknown = sorted(set(names) - set(distilled))
    if unknown:
        p.error(f"--stages {unknown}: not distilled; distilled stages: {distilled}")
    prompts = evaluate.spread_prompts(args.prompts) or list(data.CAPTIONS)  # None: all 84
    result = {"prompts": prompts, "seed": args.seed, "stages": {}}
    for name in names:
        result["stages"][name] = stage_fidelity(
            teacher, student, name, prompts, args.ref_factor, args.seed, args.guidance
        )
        print(f"{name}: {json.dumps(result['stages'][name]['psnr_db'])}", file=sys.stderr)
    result["machine"] = {
        "device_name": devices.device_name("cpu"),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _phases(args: argparse.Namespace) -> int:
    """--phases DIR: the student of every phase of one distillation against its teacher."""
    record = json.loads((args.phases / distill.PLAN).read_text())
    teacher = cascade_lib.Cascade.from_pretrained(args.checkpoint)
    name, prompts = record["stage"], evaluate.spread_prompts(args.prompts) or list(data.CAPTIONS)
    result = {"prompts": prompts, "seed": args.seed, "run": str(args.phases), "stages": {}}
    for folder in record["phases"]:
        cfg, _, model = cli.run_stage(args.phases / folder)
        student = cascade_lib.Cascade(cfg, {**teacher.models, name: model}, teacher.encoder)
        row = stage_fidelity(
            teacher, student, name, prompts, args.ref_factor, args.seed, args.guidance
        )
        result["stages"][f"{name} {folder}"] = row
        print(f"{folder}: {json.dumps(row['psnr_db'])}", file=sys.stderr)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
