"""The plan of one stage's distillation [GD, PD, IV §2.7]: its phases (guided, then
halvings of the sampling steps down to ``to_steps``), each phase's training steps, and the
config of each phase's student; the plan as saved (``distill.json``) and the checks that a
resume keeps it (the same steps, batch, seed, teacher and data). distill.py runs the plan
and re-exports these names."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, SupportsInt, cast

import torch

from ivref import checkpoint, configs, errors, files
from ivref.config_checks import is_integer
from ivref.shipped import shipped_dir

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


def plan(teacher_steps: int, to_steps: int, guided: bool = True) -> list[tuple[str, str, int]]:
    """[(folder, phase, student steps)]: guided at the teacher's steps, then halvings to_steps.

    ``to_steps`` must be the teacher's steps halved k >= 0 times (k >= 1 without the guided
    phase, ``guided=False``, which a teacher that samples unguided needs not).
    """
    allowed, n = [teacher_steps], teacher_steps
    while n % 2 == 0:
        n //= 2
        allowed.append(n)
    if to_steps not in allowed:
        raise ValueError(
            f"to_steps={to_steps}: distillation halves the teacher's {teacher_steps} steps; "
            f"allowed: {allowed}"
        )
    chain = allowed[: allowed.index(to_steps) + 1]
    if not guided and len(chain) == 1:
        raise ValueError(
            f"to_steps={to_steps} equals the teacher's steps and the teacher samples unguided: "
            f"nothing to distil; allowed: {allowed[1:]}"
        )
    phases = [("guided", "guided", teacher_steps)] if guided else []
    phases += [(f"halve-{n:04d}-{n // 2:04d}", "progressive", n // 2) for n in chain[:-1]]
    return phases


def halving_lengths(
    phases: list[tuple[str, str, int]], halving_steps: int | Sequence[int]
) -> list[int]:
    """Training steps of each halving in ``phases``: one count for all, or one count each."""
    names = [folder for folder, phase, _ in phases if phase == "progressive"]
    if is_integer(halving_steps):  # an int, or NumPy's
        return [int(cast(SupportsInt, halving_steps))] * len(names)
    counts = list(cast(Sequence[int], halving_steps))
    if not names:
        raise ValueError(
            f"halving_steps={counts}: this plan has no halvings (to_steps is the teacher's own "
            "step count: the guided phase alone); drop halving_steps"
        )
    if len(counts) != len(names) or not all(is_integer(n) and n >= 1 for n in counts):
        raise ValueError(
            f"halving_steps={counts}: give one positive count for all halvings or one for each "
            f"of the {len(names)} halving{'s' * (len(names) != 1)} ({', '.join(names)})"
        )
    return [int(n) for n in counts]


def student_config(
    config: configs.CascadeConfig,
    stage: str,
    steps: int,
    batch_size: int | None = None,
    w_max: float | None = None,
    bf16: bool | None = None,
    on_videos: bool = False,
) -> configs.CascadeConfig:
    """The cascade config with ``stage`` as a distilled student of ``steps`` steps.

    Its U-Net embeds w (learnt for 0 <= w <= ``w_max``, default the distill config's), it
    samples with the stochastic N-step sampler [IV §2.7], and its training recipe is the
    distillation one (lr annealed to 0, no EMA, no warm-up) [PD]; ``bf16`` (autocast)
    replaces the stage's training setting. ``on_videos``: the student learns from a folder
    of videos, which holds no images, so its config records ``image_ratio`` 0.
    """
    d, old = config.distill, config.stage(stage)
    recipe = dataclasses.replace(
        old.train,
        lr=d.lr,
        lr_decay="linear",
        warmup_steps=0,
        ema_decay=0.0,
        batch_size=batch_size or old.train.batch_size,
        bf16=old.train.bf16 if bf16 is None else bf16,
        # a TSR stage trains on videos only (a config saved with images for it still loads)
        image_ratio=0.0 if old.kind == "tsr" or on_videos else old.train.image_ratio,
    )
    new = dataclasses.replace(
        old,
        unet=dataclasses.replace(old.unet, use_guidance_embedding=True),
        train=recipe,
        sample_steps=steps,
        sampler="stochastic",
        guidance_w_max=d.w_max if w_max is None else w_max,
    )
    return dataclasses.replace(
        config, stages=tuple(new if s.name == stage else s for s in config.stages)
    )


def is_guided(stage_cfg: configs.StageConfig) -> bool:
    """Whether a stage samples with guidance, so that its distillation starts guided."""
    return stage_cfg.guidance_w > 0 or stage_cfg.oscillating_guidance


def phase_plan(
    config: configs.CascadeConfig,
    stage: str,
    to_steps: int | None,
    guided_steps: int | None,
    halving_steps: int | Sequence[int] | None,
    bf16: bool | None,
) -> tuple[list[tuple[str, str, int]], list[int], dict[str, Any]]:
    """(phases as ``plan`` gives them, training steps per phase, the distill.json record) of
    ``distill_stage``, its defaults filled from the distill and stage configs."""
    stage_cfg, d = config.stage(stage), config.distill
    guided = is_guided(stage_cfg)
    w_max = d.w_max if guided else 0.0
    # The largest weight the stage samples at: oscillation's low weight is capped at w
    # (``cascade.stage_guidance``), so it is w.
    sampled = stage_cfg.guidance_w
    if sampled > w_max:
        raise ValueError(
            f"DistillConfig.w_max={w_max:g} is below the guidance weight {sampled:g} that stage "
            f"{stage!r} samples at: its student could not be sampled at its own default; "
            f"allowed: w_max >= {sampled:g}"
        )
    phases = plan(stage_cfg.sample_steps, d.to_steps if to_steps is None else to_steps, guided)
    halvings = iter(
        halving_lengths(phases, d.halving_steps if halving_steps is None else halving_steps)
    )
    guided_steps = d.guided_steps if guided_steps is None else guided_steps
    lengths = [guided_steps if p == "guided" else next(halvings) for _, p, _ in phases]
    record = {"stage": stage, "teacher_steps": stage_cfg.sample_steps, "to_steps": phases[-1][2]}
    record |= {"w_max": w_max, "bf16": stage_cfg.train.bf16 if bf16 is None else bf16}
    record |= {"phases": [p[0] for p in phases], "phase_steps": lengths}
    return phases, lengths, record


# -- the plan as saved (distill.json), and the checks of a resume against it ----------------

PLAN = "distill.json"
# not compared by check_same_plan: the teacher's folder may move (its digest is checked), and
# check_same_data checks the data (a changed folder may go on with new streams)
UNCHECKED = ("source", "data_digest", "recipe", "bf16_given")  # the recipe: field by field;
# bf16_given: whether --bf16 / --no-bf16 forced autocast (None: the plan's bf16, where the
# device computes bf16 natively), restored by a resume without the flag
# a plan written before these were kept is not checked on them
ADDED_LATER = ("data_digest", "data_fit", "batch_size", "seed", "teacher", "recipe")
# settings the plan keeps in its own fields (phases, phase_steps, batch_size, bf16; a resume may
# change some of them as check_same_plan allows), and the encoder's folder, which may move
# (each phase's checkpoints check the encoder itself): left out of the recipe
NOT_RECIPE = (
    "distill.to_steps", "distill.guided_steps", "distill.halving_steps", "distill.w_max",
    "stage.train.batch_size", "stage.train.bf16", "text.path",
    # the teacher's own training recipe, which student_config replaces with the distill one
    "stage.train.lr", "stage.train.lr_decay", "stage.train.warmup_steps",
    "stage.train.ema_decay",
    # how the teacher samples, which no phase reads (targets are unthresholded DDIM steps)
    "stage.sample_steps", "stage.sampler", "stage.gamma", "stage.thresholding",
    "stage.guidance_low_w", "stage.aug_sample_logsnr", "diffusion.sampler",
    "diffusion.gamma", "diffusion.threshold_percentile",
    "stage.unet.checkpointing",  # memory, not the result
)  # fmt: skip


def recipe(config: configs.CascadeConfig, stage: str) -> dict[str, Any]:
    """What the phases train with besides the plan's own fields: the teacher cascade's text,
    diffusion and distill settings and the stage's config, as {"section.field": value}. A
    teacher with the same weights but another recipe (a learning rate, a loss weighting, a
    schedule) would change a phase halfway through a resume."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)
        elif prefix not in NOT_RECIPE:
            flat[prefix] = value

    parts: dict[str, DataclassInstance] = {
        "text": config.text,
        "diffusion": config.diffusion,
        "distill": config.distill,
    }
    for name, part in (parts | {"stage": config.stage(stage)}).items():
        walk(name, dataclasses.asdict(part))
    return json.loads(json.dumps(flat))  # as distill.json keeps it: tuples are lists


def given_bf16(saved: dict[str, Any]) -> bool | None:
    """The bf16 a resume without ``--bf16`` / ``--no-bf16`` (or ``bf16=``) trains with: what
    the flag said when the distillation started (None: the plan's bf16, where the device
    computes bf16 natively); a plan written before that was kept: its bf16, then always used."""
    return saved["bf16_given"] if "bf16_given" in saved else saved.get("bf16")


def read_plan(out: str | Path) -> dict[str, Any]:
    """A distillation's plan (``out/distill.json``), or a CLIError naming the file."""
    path = Path(out) / PLAN
    try:
        record = json.loads(path.read_text())
        phases, steps = record["phases"], record["phase_steps"]
        if not (phases and isinstance(phases, list) and len(phases) == len(steps)):
            raise ValueError("no phases, or not one step count per phase")
        if not all(is_integer(n) and n >= 1 for n in steps):
            raise ValueError(f"phase_steps {steps}: a phase trains a whole number >= 1 of steps")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise errors.CLIError(
            f"{str(path)!r} does not read back as a distillation plan ({type(err).__name__}: "
            f"{err}): an edited or damaged file"
        ) from None
    return record


def final_phase(out: str | Path) -> Path:
    """The run folder of a finished distillation's last phase (what ``ivref export`` takes):
    its newest checkpoint must be at the phase's last step, and whole (a damaged one would
    let an older, unfinished student be loaded instead)."""
    out = Path(out)
    record = read_plan(out)
    last = out / record["phases"][-1]
    found = checkpoint.latest(last)
    done = found is not None and checkpoint.read_config(found)["step"] >= record["phase_steps"][-1]
    if not done:
        raise ValueError(
            f"distillation in {str(out)!r} is not finished ({last.name}); continue it with "
            f"`ivref distill --out {out} --resume`"
        )
    try:
        checkpoint.verify(cast(Path, found))  # done: found is not None
    except checkpoint.CheckpointError as err:
        again = (  # a resume goes back to the newest checkpoint before it, if there is one
            f"`ivref distill --out {out} --resume` sets it aside and trains the phase's last "
            "steps again"
            if len(checkpoint.run_checkpoints(last)) > 1
            else f"it is the phase's only one: delete {str(last)!r} and `ivref distill --out "
            f"{out} --resume` trains the phase again"
        )
        raise ValueError(
            f"distillation in {str(out)!r}: its last checkpoint is damaged ({err}); {again}"
        ) from None
    return last


_DIGESTS: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]] = (
    weakref.WeakKeyDictionary()
)


def teacher_digest(model: torch.nn.Module) -> str:
    """A digest of a teacher's weights (sha256 of every tensor, by name), so a distillation
    resumes only from the teacher it started with.

    Remembered per model while its tensors stay the same: each tensor's storage, and its
    version counter, which every in-place write (``load_state_dict``, an optimizer step)
    moves on. ``ivref distill`` checks the plan before it starts and ``distill_stage`` again,
    and a paper-size teacher takes tens of seconds to hash. A write that bypasses autograd's
    version counter (through ``tensor.data`` or a NumPy view) is not seen: ivref makes none,
    and code that edits a teacher so should hash a fresh copy."""
    state = sorted(model.state_dict().items())
    seen = tuple((name, t.data_ptr(), t._version, tuple(t.shape), t.dtype) for name, t in state)
    kept = _DIGESTS.get(model)
    if kept is not None and kept[0] == seen:
        return kept[1]
    h = hashlib.sha256()
    for name, tensor in state:
        name = name.replace("_orig_mod.", "")  # a torch.compile wrapper's names: the same weights
        h.update(name.encode() + str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    _DIGESTS[model] = (seen, h.hexdigest()[:16])
    return _DIGESTS[model][1]


def data_digest(videos: Any) -> int | None:
    """What a plan records of its data: None for the toy world, else the folder's digest
    (``VideoTextFolder.state_dict``: its files' paths, captions and frame counts)."""
    return None if videos is None else int(videos.state_dict()["digest"])


def check_same_data(out: Path, videos: Any, new_streams: bool = False) -> None:
    """A distillation goes on with the data it started on: the toy world, or the same videos
    (their folder may have moved; with ``new_streams``, a folder changed since goes on as it
    is now)."""
    saved = read_plan(out).get("data_digest")
    now = data_digest(videos)
    if saved == now:
        return
    if new_streams and saved is not None and now is not None:
        warnings.warn(  # checked_plan runs once in the CLI and once in distill_stage
            f"{str(out)!r}: the videos differ from those it was distilled on (files added, "
            "dropped, renamed or re-captioned, or of other lengths); --new-streams goes on with "
            "them as they are",
            stacklevel=2,
        )
        return
    if saved is None:
        raise errors.CLIError(
            f"{str(out)!r} was distilled on the toy world; resume it without --videos (and "
            "without an ivref-videos.json in it, the record of a distillation's videos)"
        )
    raise errors.CLIError(
        f"{str(out)!r} was distilled on a folder of videos, and "
        + (
            "none is given"
            if now is None
            else f"the one it reads now ({str(getattr(videos, 'root', '?'))!r}) holds other "
            "files or captions"
        )
        + ": give the same videos with --videos FOLDER (and --index FILE); if that folder "
        "changed since, --new-streams goes on with it as it is now; or distil into a new --out"
    )


def check_resumable(out: Path) -> None:
    """A resume needs a distillation to continue: its plan, written first, is in ``out``."""
    if not (Path(out) / PLAN).is_file():  # nothing was started there: a mistyped --out?
        raise errors.CLIError(
            f"--resume: {str(out)!r} holds no distillation ({PLAN} is missing); give the --out "
            "of the distillation to continue, or drop --resume to start one"
        )


def resume_arguments(args: Any, saved: dict[str, Any]) -> None:
    """``ivref distill --resume``: every setting not given on the command line is the plan's
    (stage, teacher folder, steps, bf16, batch size, seed), so a resume needs no flags; one
    that is given is checked against the plan as the plan's own are."""
    out = args.out
    for name in ("stage", "to_steps"):  # the phases follow from them: named first
        given, kept = getattr(args, name), saved.get(name)
        if name == "to_steps" and given is not None and kept is not None and given < kept:
            continue  # fewer steps continues the plan with more halvings (check_same_plan)
        if given is not None and kept is not None and given != kept:
            more = " (a resume may go on to fewer steps, not back to more)" * (name == "to_steps")
            raise errors.CLIError(
                f"{str(out)!r} was distilled with another plan ({name}: saved {kept}, now "
                f"{given}){more}; resume it with the settings it started with, or distil into "
                "a new --out"
            )
    unknown = [  # a plan written before it kept these: they cannot be guessed
        flag
        for key, name, flag in (
            ("source", "source", "--from"),
            ("batch_size", "batch_size", "--batch-size"),
            ("seed", "seed", "--seed"),
        )
        if key not in saved and getattr(args, name) is None
    ]
    if unknown:
        raise errors.CLIError(
            f"{str(out)!r}: its {PLAN} was written before it kept {', '.join(unknown)}; "
            "give them as the distillation started (--from the teacher cascade folder, "
            f"{shipped_dir()} for the shipped one; --batch-size the stage's default if "
            "none was given; --seed 0 if none was given)"
        )
    phases, lengths = saved["phases"], saved["phase_steps"]
    guided = phases[0] == "guided"
    halvings = list(lengths[1:] if guided else lengths)
    going_on = args.to_steps is not None and args.to_steps < saved.get("to_steps", args.to_steps)
    if going_on and args.halving_steps is None and len(set(halvings)) > 1:
        added = max(1, round(math.log2(saved["to_steps"] / args.to_steps)))
        example = ",".join(map(str, halvings + [halvings[-1]] * added))
        raise errors.CLIError(
            f"--to-steps {args.to_steps} adds halvings to {str(out)!r}, whose halvings trained "
            f"{halvings} steps: give --halving-steps with one count per halving, the planned "
            f"ones first (e.g. {example})"
        )
    plan_values = {
        "stage": saved.get("stage"),
        "source": Path(saved["source"]) if saved.get("source") else None,
        "to_steps": saved.get("to_steps"),
        "guided_steps": lengths[0] if guided else None,
        # one count where all are equal, as it was most likely given
        "halving_steps": (halvings[0] if len(set(halvings)) == 1 else halvings) or None,
        "bf16": given_bf16(saved),
        "batch_size": saved.get("batch_size"),
        "seed": saved.get("seed"),
    }
    moved = args.source is None and plan_values["source"] is not None
    for name, value in plan_values.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if moved and not args.source.is_dir():
        raise errors.CLIError(
            f"--resume: {str(out)!r} was distilled from the teacher cascade "
            f"{str(args.source)!r} (kept in its {PLAN}), which is not there now; give --from "
            "the folder it moved to (its weights are checked against the plan's)"
        )


def continues(saved: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether ``record`` is ``saved`` gone on to fewer steps: the same phases, with the same
    training steps, then more halvings (a finished 8-step distillation resumed to 1 step)."""
    n = len(saved["phases"])
    return (
        len(record["phases"]) > n
        and record["phases"][:n] == saved["phases"]
        and record["phase_steps"][:n] == saved["phase_steps"]
    )


def check_same_plan(path: Path, record: dict[str, Any]) -> None:
    """A resumed distillation must keep its plan: its finished phases were trained to it,
    and a phase trained to other lengths would teach the next from another student. It may
    go on to fewer steps (``continues``): its phases stay, more halvings follow."""
    saved = read_plan(path.parent)
    extended = ("to_steps", "phases", "phase_steps") if continues(saved, record) else ()
    changed = {
        k: (saved.get(k), v)
        for k, v in record.items()
        if saved.get(k) != v
        and k not in UNCHECKED + extended
        and (k in saved or k not in ADDED_LATER)
    }
    kept = saved.get("recipe")
    if isinstance(kept, dict):  # a field added to the configs since is not a change
        now = record.get("recipe", {})
        changed |= {k: (kept[k], v) for k, v in now.items() if k in kept and kept[k] != v}
    if changed:
        listed = "; ".join(f"{k}: saved {a}, now {b}" for k, (a, b) in changed.items())
        raise errors.CLIError(
            f"{str(path.parent)!r} was distilled with another plan ({listed}); resume it with "
            "the settings it started with, or distil into a new --out"
        )


def check_phase_finished(folder: Path) -> None:
    """A phase folder of a distillation given on its own (``ivref export``, ``generate
    --checkpoint``) must have trained its planned steps: a half-trained student exported
    without a word otherwise. A folder that is not a planned phase is left alone."""
    if not (folder.parent / PLAN).is_file():  # not a distillation's phase
        return
    record = read_plan(folder.parent)  # damaged: its error (a phase could not be judged)
    if folder.name not in record["phases"]:
        return
    length = record["phase_steps"][record["phases"].index(folder.name)]
    latest = checkpoint.latest(folder)
    step = checkpoint.read_config(latest)["step"] if latest is not None else 0
    if latest is None or step < length:  # no checkpoint: unfinished, whatever the plan says
        holder = files.lock_holder(folder.parent) or files.lock_holder(folder)
        then = (
            f"it is still training (in use by {holder}): export it once it has finished"
            if holder is not None
            else f"continue it with `ivref distill --out {folder.parent} --resume`"
        )
        raise ValueError(
            f"{str(folder)!r} is phase {folder.name} of the distillation in "
            f"{str(folder.parent)!r}, not finished (step {step} of {length}): {then}"
        )
    try:  # finished, but a damaged last checkpoint would load an older, unfinished student
        checkpoint.verify(latest)
    except checkpoint.CheckpointError as err:
        raise ValueError(
            f"{str(folder)!r}: the last checkpoint of phase {folder.name} is damaged ({err}); "
            f"`ivref distill --out {folder.parent} --resume` trains its last steps again"
        ) from None


def phase_folders(out: Path) -> list[Path]:
    """The folders of ``out`` named as a distillation's phases (``guided``, ``halve-N-M``)."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.is_dir() and _PHASE_NAME.fullmatch(p.name))


_PHASE_NAME = re.compile(r"guided|halve-\d{4,}-\d{4,}")


def refuse_phases(out: Path, folders: list[Path], whose: str) -> None:
    """Refuse phase folders with checkpoints, left by ``whose``: training would adopt them."""
    left = [p.name for p in folders if checkpoint.run_checkpoints(p)]
    if left:
        raise errors.CLIError(
            f"{str(out)!r} holds the phase folders {left} of {whose}: delete them, or distil "
            "into a new --out"
        )
