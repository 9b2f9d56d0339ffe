"""``ivref export``: train runs' EMA weights written as a cascade folder (fp16), joined with
the stages of a ``--base`` cascade; refused where the parts were trained with another text
encoder (their recorded ``text.probe`` differ) or other text or diffusion configs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ivref import configs, errors, files, text, train_videos
from ivref.run_loading import RunWeights, load_run

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from ivref.unet3d import VideoUNet

CLIError = errors.CLIError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``ivref export``."""
    p.add_argument("runs", type=Path, nargs="+", help="`ivref train` run folders")
    p.add_argument("--out", type=Path, required=True, help="cascade folder to write")
    p.add_argument("--base", type=Path, help="a cascade folder whose other stages to keep")
    p.add_argument("--force", action="store_true", help="replace a cascade already in --out")
    p.add_argument(
        "--sampling",
        choices=("run", "base", "preset"),
        default="run",
        help="a train run's sampling settings (steps, guidance, thresholding, ...): the run's "
        "own (default), the --base cascade's for that stage, or its preset's as of today",
    )


def run(args: argparse.Namespace) -> int:
    """``ivref export RUN... --out DIR [--base CASCADE] [--force] [--sampling ...]``."""
    from ivref import cascade as cascade_lib

    for run in args.runs:  # the cheap checks first: inputs, then the output
        if not run.is_dir():
            what = "a file" if run.exists() else "no such folder"
            raise CLIError(f"{str(run)!r} is not an `ivref train` run folder ({what})")
    if args.out.exists() and not args.out.is_dir():
        raise CLIError(f"--out {str(args.out)!r} is a file; give a folder for the cascade")
    _not_a_run(args.out)
    if (args.out / cascade_lib.MANIFEST).exists() and not args.force:
        raise CLIError(
            f"--out {str(args.out)!r} already holds a cascade ({cascade_lib.MANIFEST}); pass "
            "--force to replace it, or choose another folder"
        )
    files.check_writable(args.out, "--out")
    models: dict[str, VideoUNet] = {}
    cfg: configs.CascadeConfig | None = None  # the cascade the runs join (set by the first)
    base_cfg, probes, trained_on, teachers = None, {}, {}, {}
    base = None
    if args.base is not None:
        base = cascade_lib.Cascade.from_pretrained(args.base)
        cfg, base_cfg = base.cfg, base.cfg
        models = cast("dict[str, VideoUNet]", dict(base.models.items()))  # its stages' U-Nets
        trained_on, teachers = dict(base.trained_on), dict(base.teachers)
        probes[f"--base {str(args.base)!r}"] = base.text_probe
    elif args.sampling == "base":
        raise CLIError("--sampling base takes the settings of the --base cascade: give --base")
    given: dict[str, Path] = {}  # stage -> the run that gives it
    taken: list[str] = []  # what each run gave, for the report
    for run in args.runs:
        loaded = load_run(run)
        run_cfg, stage, model, extra = loaded[:4]
        taken.append(_describe(run, loaded))
        if stage in given:  # the later one would silently replace the first
            raise CLIError(
                f"{str(given[stage])!r} and {str(run)!r} are both stage {stage!r}: give one run "
                "per stage"
            )
        given[stage] = run
        teachers.pop(stage, None)  # the run's, where it is a student of this folder's parent
        probes[repr(str(run))] = text.recorded_probe(extra, repr(str(run)))
        if cfg is None:
            cfg = run_cfg
        unprobed = any(p is None for p in probes.values())  # then a T5's path must match too
        for part in ("text", "diffusion"):
            differ = _differences(getattr(run_cfg, part), getattr(cfg, part), unprobed)
            if differ:
                raise CLIError(
                    f"{str(run)!r} was trained with another {part} config than the cascade it "
                    f"joins ({differ})"
                )
        data = train_videos.trained_on(run)
        if data is None:
            trained_on.pop(stage, None)  # a checkpoint folder alone: not known
        else:
            trained_on[stage] = data
        stage_cfg = export_sampling(run, run_cfg, stage, base_cfg, args.sampling)
        stages = tuple(stage_cfg if s.name == stage else s for s in cfg.stages)
        cfg, models[stage] = dataclasses.replace(cfg, stages=stages), model
    cfg = cast(configs.CascadeConfig, cfg)  # set by the first run (args.runs: nargs="+")
    _keep_students(args.out, given, models, args.base)
    teachers |= _students_of_their_cascade(args.out, given, args.base, base)
    teachers |= _copied_teachers(args.out, args.base, models, given)
    teachers |= _teachers_of_students(given, base, args.base, teachers)
    names = [s.name for s in cfg.stages]
    last = max((names.index(st) for st in models if st in names), default=0)  # (a stage the
    missing = [n for n in names[:last] if n not in models]  # config lacks: Cascade names it)
    if missing:  # a cascade samples its stages in order: the ones before must come too
        raise CLIError(
            f"the runs give stage(s) {[n for n in names if n in given]}, which sample from "
            f"the stages before them; {missing} are missing: give their runs too, or --base "
            "CASCADE, a cascade folder that holds them"
        )
    probe = _same_text(probes)
    trained_on = {name: data for name, data in trained_on.items() if name in models}
    teachers = {name: sha for name, sha in teachers.items() if name in models}
    joined = cascade_lib.Cascade(
        cfg, models, text_probe=probe, trained_on=trained_on, teachers=teachers
    )
    folder = joined.save_pretrained(args.out, overwrite=args.force)
    names = [s.name for s in cfg.stages if s.name in models]
    print(f"wrote {folder} (stages {names}, fp16 EMA weights)", file=sys.stderr)
    for line in taken:
        print(f"  {line}", file=sys.stderr)
    _note_stale_students(folder)
    return 0


def _copied_teachers(
    out: Path, base_dir: Path | None, models: dict, given: dict[str, Path]
) -> dict[str, str]:
    """``--base C --out C/distilled`` copies C's undistilled stages beside the students (so
    ``--distilled`` samples every stage): each copy is recorded as its own teacher (the sha256
    of C's file), so that replacing the stage in C is noticed for the copy too."""
    from ivref import cascade as cascade_lib

    parent = out.resolve().parent
    if out.resolve().name != cascade_lib.DISTILLED or base_dir is None:
        return {}
    if base_dir.resolve() != parent:
        return {}
    listed = cascade_lib.listed_weights(parent)
    copies = [n for n, m in models.items() if n not in given and not m.cfg.use_guidance_embedding]
    return {n: listed[n] for n in copies if n in listed}


def _stage_alone(folder: Path, stage: str) -> tuple[Any, str] | None:
    """(the model, the sha256 of its file) of stage ``stage`` of cascade folder ``folder``,
    its file alone read and checked against the manifest (a paper cascade's other stages are
    many GB); None where the folder, the stage or an intact file is not there."""
    import warnings

    from ivref import cascade as cascade_lib
    from ivref import checkpoint, tensor_files
    from ivref.unet3d import VideoUNet

    name = f"{stage}.safetensors"
    try:
        with warnings.catch_warnings():  # a cascade the user did not name: nothing to say
            warnings.simplefilter("ignore")
            read = cascade_lib.read_manifest(folder)
        listed = cascade_lib.listed_weights(folder).get(stage)
        if stage not in read.stages or listed is None or not (folder / name).is_file():
            return None
        if tensor_files.file_manifest(folder, [name])[name]["sha256"] != listed:
            return None  # changed since its manifest was written
        model = VideoUNet.to_load(read.cfg.stage(stage).unet)
        checkpoint.load_weights(folder / name, model)
    except (OSError, ValueError):
        return None  # moved, gone or damaged: its weights cannot be named
    return model, listed


def _teachers_of_students(
    given: dict[str, Path], base: Any, base_dir: Path | None, known: dict[str, str]
) -> dict[str, str]:
    """{stage: the sha256 of its teacher's weight file} for the distilled runs whose teacher
    no other check placed (an export into another folder than the teacher's distilled/), read
    from the cascade each was distilled from where it still holds that teacher, so that the
    folder, copied into another cascade's distilled/ later, is noticed there as stale. Where
    ``--base`` holds other weights for such a stage than its teacher (its stages then sample
    beside a student of another cascade), a note says so."""
    from ivref import cascade as cascade_lib
    from ivref import distill_plan, shipped

    found: dict[str, str] = {}
    for stage, run in given.items():
        if stage in known or not (run / distill_plan.PLAN).is_file():
            continue
        plan = distill_plan.read_plan(run)
        recorded = plan.get("teacher")
        if recorded is None:
            continue  # a plan from before ivref recorded its teacher
        source = Path(plan["source"]) if plan.get("source") else shipped.shipped_dir()
        same_as_base = base_dir is not None and source.resolve() == base_dir.resolve()
        if same_as_base and stage in base.models:
            listed = cascade_lib.listed_weights(source).get(stage)
            teacher = None if listed is None else (base.models[stage], listed)
        else:
            teacher = _stage_alone(source, stage)  # that stage's file only, not the cascade
        if teacher is not None and distill_plan.teacher_digest(teacher[0]) == recorded:
            found[stage] = teacher[1]
        ours = base.models[stage] if base is not None and stage in base.models else None
        if ours is not None and stage not in base.teachers:  # --base's own stage, a teacher
            if distill_plan.teacher_digest(ours) != recorded:
                print(
                    f"note: {str(run)!r} distilled stage {stage!r} from other weights than "
                    f"--base {str(base_dir)!r} holds for it (its teacher: {str(source)!r}): "
                    "the cascade written joins a student of one cascade to the stages of "
                    "another",
                    file=sys.stderr,
                )
    return found


def _note_stale_students(folder: Path) -> None:
    """After a cascade is written: where its ``distilled/`` folder holds students of stages
    it has just replaced, say so (they were distilled from the old weights; ``--distilled``
    would sample them as the old teachers did)."""
    from ivref import cascade as cascade_lib

    try:
        manifest = json.loads((folder / cascade_lib.DISTILLED / cascade_lib.MANIFEST).read_text())
        teachers = cascade_lib.check_teachers(manifest.get("teachers"), manifest["stages"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # no students, or none that says whose they are
    stale = cascade_lib.stale_students(folder, teachers)
    if stale:
        print(
            f"note: {str(folder / cascade_lib.DISTILLED)!r} holds stages {stale} distilled "
            "from (or copied from) the weights this export replaced: distil them again "
            f"(ivref distill --stage NAME --from {folder}) and export them there; until then "
            "--distilled samples them as the old weights did (and says so)",
            file=sys.stderr,
        )


def _not_a_run(out: Path) -> None:
    """--out may not be a train or distill run's folder: a cascade.json there would make
    every later command read the folder as the cascade, not the run (a mistyped --out)."""
    from ivref import checkpoint, distill_plan

    parts = [p for p in [*checkpoint.run_parts(out), out / distill_plan.PLAN] if p.exists()]
    if parts:
        raise CLIError(
            f"--out {str(out)!r} is a training run's folder (it holds {parts[0].name}): a "
            "cascade there would be read in place of the run; give another folder"
        )


def _describe(run: Path, loaded: RunWeights) -> str:
    """Which checkpoint of ``run`` an export takes, with a note where the run is still
    training (its lock is held): the weights are those of its newest save, not its last."""
    from ivref import checkpoint

    line = f"{loaded.stage}: {str(run)!r} at step {loaded.step} ({loaded.checkpoint.name})"
    ckpt = loaded.checkpoint  # in <run>/checkpoints/, or a legacy <run>/checkpoint
    own = ckpt.parent.parent if ckpt.parent.name == checkpoint.CHECKPOINTS else ckpt.parent
    folders = dict.fromkeys([run, own])  # the folder given (a distillation's), and the run's
    holder = next((h for h in map(files.lock_holder, folders) if h is not None), None)
    if holder is not None:
        print(
            f"note: {str(run)!r} is still training (in use by {holder}): its newest "
            f"checkpoint, step {loaded.step}, is exported; export again once it has finished",
            file=sys.stderr,
        )
    return line


def _differences(mine: DataclassInstance, theirs: object, with_path: bool = False) -> str:
    """The fields of two configs that differ, as 'field: run X, cascade Y'; a text encoder's
    local ``path`` is left out unless ``with_path`` (the same T5 in two folders: the text
    probes check the encoder itself, where every part recorded one)."""
    return "; ".join(
        f"{f.name}: run {getattr(mine, f.name)!r}, cascade {getattr(theirs, f.name)!r}"
        for f in dataclasses.fields(mine)
        if (with_path or f.name != "path") and getattr(mine, f.name) != getattr(theirs, f.name)
    )


def _keep_students(out: Path, given: dict[str, Path], models: dict, base: Path | None) -> None:
    """Refuse a --force export that would replace distilled students in --out with the
    undistilled stages of --base (adding a second student the way the first was added did
    so: the first was gone)."""
    from ivref import cascade as cascade_lib

    try:
        manifest = json.loads((out / cascade_lib.MANIFEST).read_text())
        trained = set(manifest["stages"])
        students = [
            s["name"]
            for s in manifest["config"]["stages"]
            if s["name"] in trained and s["unet"].get("use_guidance_embedding")
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # none, or unreadable
        return
    lost = [
        name
        for name in students
        if name not in given and not (name in models and models[name].cfg.use_guidance_embedding)
    ]
    if lost:
        raise CLIError(
            f"--out {str(out)!r} holds distilled students for {lost}, which this export would "
            f"replace with {'the --base stages' if base else 'nothing'}: give --base "
            f"{out} (its students are kept, the runs' stages join them), or delete them first"
        )


def _students_of_their_cascade(
    out: Path, given: dict[str, Path], base_dir: Path | None = None, base: Any = None
) -> dict[str, str]:
    """A cascade's ``distilled/`` folder holds students of its own stages: a distillation
    exported there must have been distilled from the weights the parent cascade holds for
    its stage (its plan records their digest), or ``--distilled`` would sample another
    teacher's student beside the parent's other stages. ``base``: the ``--base`` cascade
    from ``base_dir``, already loaded (used where it is the parent: ``--base C --out
    C/distilled``). Returns {stage: the sha256 of the parent's weight file} of the students
    checked, for the cascade's ``teachers``."""
    from ivref import cascade as cascade_lib
    from ivref import distill_plan

    parent = out.resolve().parent
    runs = {s: r for s, r in given.items() if (r / distill_plan.PLAN).is_file()}
    if out.resolve().name != cascade_lib.DISTILLED or not runs:
        return {}
    if not (parent / cascade_lib.MANIFEST).is_file():
        return {}  # a folder named distilled/ of no cascade: nothing to compare with
    is_parent = base is not None and base_dir is not None and base_dir.resolve() == parent
    teachers = base if is_parent else cascade_lib.Cascade.from_pretrained(parent)
    listed = cascade_lib.listed_weights(parent)
    checked = {}
    for stage, run in runs.items():
        plan = distill_plan.read_plan(run)
        recorded = plan.get("teacher")
        model = teachers.models[stage] if stage in teachers.models else None
        if recorded is None or model is None:
            continue  # a plan from before ivref recorded it; a stage the parent lacks
        if distill_plan.teacher_digest(model) != recorded:
            source = plan.get("source")
            raise CLIError(
                f"{str(run)!r} distilled stage {stage!r} from other weights than those of the "
                f"cascade {str(parent)!r} (its teacher: {source!r}), so it does not belong in "
                f"{str(out)!r}: export it into its teacher's {cascade_lib.DISTILLED}/ folder, "
                "or distil this cascade's stage (ivref distill --from "
                f"{parent})"
            )
        if stage in listed:
            checked[stage] = listed[stage]
    return checked


def _same_text(probes: dict[str, list[float] | None]) -> list[float] | None:
    """The one text probe of every part of an export; parts trained with different text
    encoders are refused (their stages would each get text the others never saw)."""
    from ivref import text

    known = {where: p for where, p in probes.items() if p is not None}
    if not known:
        return None
    for where in (w for w, p in probes.items() if p is None):
        print(
            f"note: {where} records no text probe (saved before ivref recorded one, or its "
            "encoder could not encode the probe prompt): nothing checks that it was trained "
            "with the same text encoder as the rest",
            file=sys.stderr,
        )
    (first, probe), *rest = known.items()
    for where, other in rest:
        if text.probe_distance(probe, other) > text.PROBE_TOLERANCE:
            raise CLIError(
                f"{where} was trained with another text encoder than {first} (their text "
                "probes differ): a cascade's stages must share one encoder"
            )
    return probe


def export_sampling(
    run: Path,
    run_cfg: configs.CascadeConfig,
    stage: str,
    base_cfg: configs.CascadeConfig | None,
    source: str,
) -> configs.StageConfig:
    """The stage config a train run exports with: its sampling settings from ``source``.

    A run keeps the sampling settings of the preset it started from; a preset or a --base
    cascade tuned since then differs silently. Every difference is reported (stderr), naming
    the value kept. A distilled student keeps its own (its steps and sampler are its training).
    """
    own = run_cfg.stage(stage)
    if own.guidance_w_max is not None:  # a distilled student
        if source != "run":
            print(
                f"note: {str(run)!r} is a distilled student of stage {stage!r}: it keeps its own "
                f"sampling settings (its steps and sampler are what it learnt); --sampling "
                f"{source} applies to undistilled stages only",
                file=sys.stderr,
            )
        return own
    preset = configs.preset(run_cfg.name) if run_cfg.name in configs.PRESETS else None
    others = {
        label: cfg.stage(stage)
        for label, cfg in (("base", base_cfg), ("preset", preset))
        if cfg is not None and stage in {s.name for s in cfg.stages}
    }
    if source != "run" and source not in others:
        where = "the --base cascade" if source == "base" else f"preset {run_cfg.name!r}"
        raise CLIError(f"--sampling {source}: {where} has no stage {stage!r} to take them from")
    chosen = own if source == "run" else configs.with_sampling(own, others[source])
    for label, other in others.items():
        if label == source:
            continue
        diff = configs.sampling_differences(chosen, other)
        if diff:
            fields = ", ".join(
                f"{f} {mine!r} (vs {theirs!r})" for f, (mine, theirs) in diff.items()
            )
            print(
                f"note: {str(run)!r} exports stage {stage!r} with sampling settings that differ "
                f"from the {label}'s: {fields}; --sampling {label} takes the {label}'s",
                file=sys.stderr,
            )
    return chosen
