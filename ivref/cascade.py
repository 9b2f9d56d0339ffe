"""The cascade: a frozen text encoder and its stage models, sampled base first [IV §2.2, Fig. 6].

A ``Cascade`` holds the ``CascadeConfig``, the text encoder and one ``VideoUNet`` per
*trained* stage. ``generate`` encodes the prompts once, samples the base stage from text,
then hands each stage's output to the next SR stage (upsampled and noise-augmented by
``superres``), on whatever device the models are on. One stage is sampled by
``sample_stage`` (stage_sampling.py, re-exported here).

On disk (``save_pretrained`` / ``from_pretrained``) a cascade is a folder::

    cascade.json          {"format": 2, "config": ..., "stages": [...], "files": {name:
                           {"bytes", "sha256"}}, "text_probe", "trained_on": {stage: "toy" or
                           {"videos": folder}}, "teachers": {stage: sha256 of the teacher's
                           weight file}, "digest": sha256 of the rest}; written last
                           (text_probe, trained_on and teachers where known)
    <stage>.safetensors   EMA weights of each trained stage, fp16

Loading checks the manifest against its digest (a manifest saved without one is read as it
is) and every file against the manifest, and refuses damaged or non-finite weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast, overload

import torch
from torch import nn
from tqdm.auto import tqdm

from ivref import checkpoint, configs, files, samplers, stage_checks, tensor_files, text
from ivref.config_checks import is_integer
from ivref.shipped import DISTILLED as DISTILLED  # re-exported: cascade.shipped_dir etc.
from ivref.shipped import SHIPPED_DIR as SHIPPED_DIR  # stay where code finds them
from ivref.shipped import TOY_DISTILL_ARGS as TOY_DISTILL_ARGS
from ivref.shipped import TOY_TRAIN_STEPS as TOY_TRAIN_STEPS
from ivref.shipped import remake_commands as remake_commands
from ivref.shipped import shipped_dir as shipped_dir
from ivref.stage_sampling import (  # re-exported: cascade.sample_stage etc. stay
    MAX_GUIDANCE,
    MAX_STEPS,
    check_guidance,
    check_learnt_guidance,
    check_steps,
    model_device,
    parse_device,
    sample_stage,
    stage_guidance,
)
from ivref.unet3d import VideoUNet

__all__ = [  # with stage_sampling.py's names, which callers know from here
    "FORMAT", "MANIFEST", "DISTILLED", "SHIPPED_DIR", "MAX_STEPS", "MAX_GUIDANCE", "MAX_SEED",
    "CPU_BATCH_VOXELS", "GPU_BATCH_VOXELS",
    "shipped_dir",
    "TOY_TRAIN_STEPS", "TOY_DISTILL_ARGS", "remake_commands", "load_shipped", "check_prompts",
    "check_steps", "check_guidance", "check_learnt_guidance", "parse_device", "model_device",
    "stage_guidance", "sample_stage", "Cascade", "read_manifest", "ManifestRead",
]  # fmt: skip

FORMAT = 2
MANIFEST = "cascade.json"
MAX_SEED = 2**63 - 1
# Output voxels (frames x height x width) per batch that generate() samples at once. On the
# CPU, batches of 16 videos at 16 x 64 x 64 spent more time in the kernel (mapping and
# zeroing fresh memory for activations of hundreds of MiB) than computing; batches of 4
# (2**18 voxels) sampled the same 16 videos 1.4x faster, and 2 or 1 were slower again
# (benchmarks/sampling_batch.py, docs/benchmarks.md). A GPU keeps busy with larger batches.
CPU_BATCH_VOXELS = 2**18
GPU_BATCH_VOXELS = 2**21


def load_shipped(stages: Sequence[str], variant: str | None = None) -> Cascade:
    """The shipped toy cascade (``shipped_dir()``), which must hold ``stages`` trained.

    Raises FileNotFoundError naming the missing stages and the commands that make them; a
    damaged folder raises its error (a ValueError) with the ways back: restore it, or make
    every stage again and replace it.
    """
    _check_variant(variant)
    directory = shipped_dir()
    distilled = variant == "distilled"
    try:
        model = Cascade.from_pretrained(directory, variant=variant)
        have = {s.name for s in model.trained_stages}
        if distilled:  # a stage counts only once its student (which embeds w) is there
            have = {n for n in have if cast(VideoUNet, model.models[n]).cfg.use_guidance_embedding}
    except FileNotFoundError:
        if not stages:  # no stage to name as missing, and no cascade to return
            raise
        model, have = None, set()
    except ValueError as err:  # a damaged manifest or weight file (CheckpointError is one)
        if isinstance(err, ManifestFormatError) and err.whole:  # a newer ivref's: not damaged
            raise
        where = directory / DISTILLED if distilled else directory
        back = (  # the ways back
            f"restore it (in a git clone of ivref: git checkout -- {where}), or make every "
            "stage again and replace it:\n"
            + remake_commands(list(TOY_TRAIN_STEPS), distilled, directory, replace=True)
        )
        if isinstance(err, ManifestFormatError):  # damaged, or a newer ivref's
            raise ManifestFormatError(f"{err}\nif it is damaged, {back}", whole=False) from None
        raise type(err)(f"{err}\nthe cascade in {where} is damaged: {back}") from None
    missing = [name for name in stages if name not in have]
    if missing or model is None:  # (no cascade: every stage asked for is missing)
        kind = "distilled " if distilled else ""
        raise FileNotFoundError(
            f"{directory} has no {kind}weights for stage(s) {missing}; make them with\n"
            + remake_commands(missing, distilled, directory)
        )
    return model


def _no_cascade(manifest_path: Path, shipped: bool) -> str:
    """Why ``from_pretrained`` found no cascade at ``manifest_path``, and what to do."""
    folder = manifest_path.parent
    if folder.name == DISTILLED and folder.parent.name == DISTILLED:  # --distilled given a
        return (  # distilled folder: it would be looked for in DIR/distilled/distilled
            f"{str(folder.parent)!r} is a distilled cascade itself: load it as it is (without "
            "variant='distilled' / --distilled), or give the cascade it was distilled from"
        )
    if folder.name == DISTILLED and (folder.parent / MANIFEST).is_file():
        return (
            f"{str(folder.parent)!r} holds a cascade but no distilled variant (no "
            f"{DISTILLED}/{MANIFEST}): make one with `ivref distill --stage NAME --from "
            f"{folder.parent} --out RUN` per stage, then `ivref export RUN RUN2 ... --base "
            f"{folder.parent} --out {folder}`; or load the cascade itself (without "
            "variant='distilled' / --distilled)"
        )
    why = (
        f"{manifest_path} not found: a cascade folder holds {MANIFEST} and "
        "<stage>.safetensors files (written by Cascade.save_pretrained)"
    )
    if shipped and os.environ.get("IVREF_WEIGHTS"):
        return f"{why}; IVREF_WEIGHTS names it: point it at a copy of the repository's data/toy"
    if shipped:
        return (
            f"{why}. The shipped toy weights are the repository's data/toy folder, which only "
            "an editable install (pip install -e) finds: point IVREF_WEIGHTS at a copy of it, "
            "or give its path (Cascade.from_pretrained(path), ivref generate --checkpoint)"
        )
    return why


def _check_variant(variant: object) -> None:
    if variant not in (None, "distilled"):
        raise ValueError(f"variant={variant!r}; allowed: None or 'distilled'")


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """Validate a prompt list: a non-empty list of non-empty strings."""
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, got one string; wrap it: [prompt]")
    if isinstance(prompts, Mapping | set | frozenset) or not isinstance(prompts, Iterable):
        raise ValueError(
            f"prompts must be a list of strings, got {type(prompts).__name__} (an ordered "
            "sequence: video i is prompt i's)"
        )
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; give at least one prompt")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompts[{i}]={prompt!r} must be a non-empty string")
    return prompts


def _per_stage(value: object, stages: Sequence[configs.StageConfig], name: str) -> dict:
    """A value for every stage: None, one value for all, or a {stage name: value} mapping."""
    if isinstance(value, Mapping):
        names = [s.name for s in stages]  # in cascade order: the same message every run
        unknown = set(value) - set(names)
        if unknown:
            raise ValueError(f"{name} names unknown stages {sorted(unknown)}; stages: {names}")
        return {s.name: value.get(s.name) for s in stages}
    return {s.name: value for s in stages}


def _stage_files(directory: Path) -> list[str]:
    """The weight files and manifest of the cascade in ``directory`` (what a new one replaces)."""
    names = {MANIFEST}
    try:
        stages = json.loads((directory / MANIFEST).read_text())["stages"]
        names.update(f"{name}.safetensors" for name in stages)
    except (OSError, ValueError, KeyError, TypeError):  # unreadable: replace the manifest only
        pass
    return sorted(names)


def _check_listed(listed: object, stages: Sequence[str], manifest_path: Path) -> None:
    """A format-2 manifest's ``files`` gives the size and sha256 of every stage's file."""
    wanted = sorted(f"{name}.safetensors" for name in stages)
    entries = listed.values() if isinstance(listed, dict) else []
    if (
        not isinstance(listed, dict)
        or not set(wanted) <= set(listed)
        or not all(isinstance(e, dict) and {"bytes", "sha256"} <= set(e) for e in entries)
    ):
        raise ValueError(
            f"{manifest_path} is not a valid cascade manifest: 'files' must give the bytes and "
            f"sha256 of every stage's file {wanted}"
        )


class ManifestFormatError(ValueError):
    """A cascade.json of a later format than this ivref reads: a newer ivref wrote it
    (``whole``: its digest matches, or it has none), or it is damaged (not ``whole``)."""

    def __init__(self, message: str, whole: bool = True) -> None:
        super().__init__(message)
        self.whole = whole


@dataclasses.dataclass(frozen=True)
class ManifestRead:
    """A cascade folder's manifest, checked (``read_manifest``): its config, trained stages
    in order, text probe, what each stage trained on and (students) the teachers' sha256."""

    manifest: dict[str, Any]
    cfg: configs.CascadeConfig
    stages: list[str]
    text_probe: list[float] | None
    trained_on: dict[str, Any]
    teachers: dict[str, str]


def read_manifest(directory: str | os.PathLike, shipped: bool = False) -> ManifestRead:
    """The manifest of cascade folder ``directory`` (``cascade.json``), checked, without its
    weights (``Cascade.from_pretrained`` reads and verifies them; ``ivref info --checkpoint``
    describes a cascade from this alone). ``shipped``: the folder is the shipped one (a
    missing one then says where it comes from)."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        files.finish_replace(directory)  # an overwrite killed between its two renames
        if directory.name == DISTILLED:  # or of the cascade folder it is the variant of
            files.finish_replace(directory.parent)
    if not manifest_path.is_file():
        raise FileNotFoundError(_no_cascade(manifest_path, shipped=shipped))
    try:
        manifest = json.loads(manifest_path.read_text())
        _check_manifest(manifest, manifest_path)
        cfg = configs.CascadeConfig.from_dict(manifest["config"])
        stages = [cfg.stage(name).name for name in manifest["stages"]]
        probe = manifest.get("text_probe")
        if probe is not None and not text.is_probe(probe):
            raise ValueError(f"text_probe {probe!r} is not a list of finite numbers")
        trained_on = check_trained_on(manifest.get("trained_on"), stages)
        teachers = check_teachers(manifest.get("teachers"), stages)
    except ManifestFormatError:
        raise
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{manifest_path} is not a valid cascade manifest: {err}") from None
    return ManifestRead(manifest, cfg, stages, probe, trained_on, teachers)


def _check_manifest(manifest: object, manifest_path: Path) -> None:
    """A manifest is a JSON object, whole (its ``digest`` matches, where it has one), of a
    format this ivref reads (1 or ``FORMAT``); checked before its config, which a newer
    format may lay out otherwise. A ValueError (``ManifestFormatError`` for a later
    format) says what is wrong."""
    if not isinstance(manifest, dict):
        raise ValueError(f"it holds {type(manifest).__name__}, not a JSON object")
    whole = "digest" not in manifest or not checkpoint._digest_differs(manifest)  # (NaN: differs)
    found = manifest.get("format")
    reads = f"this ivref reads formats 1 and {FORMAT}"
    if type(found) is int and found > FORMAT:  # (not a bool, not 3.0)
        if whole:
            raise ManifestFormatError(
                f"{manifest_path}: format {found}; {reads} (a newer ivref wrote it: upgrade "
                "ivref to load it)"
            )
        raise ManifestFormatError(  # a newer ivref may digest otherwise: both are possible
            f"{manifest_path}: format {found} and content that does not match its digest: "
            f"damaged, or written by a newer ivref ({reads})",
            whole=False,
        )
    if not (type(found) is int and found in (1, FORMAT)):
        what = f"format {found!r}" if "format" in manifest else "no format entry"
        raise ValueError(f"{what}; {reads}: damaged, or edited by hand")
    if not whole:
        raise ValueError(
            "its content does not match its digest: damaged, or edited by hand (to keep an "
            'edit, delete its "digest" entry; generate(guidance=..., steps=...) and ivref '
            "export --sampling change settings without editing)"
        )


def _stage_record(
    name: str, value: object, stages: Sequence[str], valid: Callable[[object], bool], form: str
) -> dict[str, Any]:
    """A record a cascade keeps per stage: a dict of stages of the cascade whose values are
    ``valid`` (None: {}, nothing known); anything else is a ValueError naming ``form``."""
    if value is None:
        return {}
    if not (isinstance(value, dict) and all(k in stages and valid(v) for k, v in value.items())):
        raise ValueError(
            f"{name}={value!r}: give {form} for stages of the cascade {list(stages)}, or None"
        )
    return dict(value)


def check_trained_on(trained_on: object, stages: Sequence[str]) -> dict[str, Any]:
    """``trained_on`` as ``Cascade`` keeps it: {stage: "toy" or {"videos": folder}}."""
    return _stage_record(
        "trained_on", trained_on, stages,
        lambda d: d == "toy" or (isinstance(d, dict) and isinstance(d.get("videos"), str)),
        "{stage: 'toy' or {'videos': folder}}",
    )  # fmt: skip


def check_teachers(teachers: object, stages: Sequence[str]) -> dict[str, str]:
    """``teachers`` as ``Cascade`` keeps it: {stage: the sha256 (64 hex digits) of the weight
    file its teacher had in the parent cascade}."""
    return _stage_record(
        "teachers", teachers, stages,
        lambda sha: isinstance(sha, str) and len(sha) == 64 and set(sha) <= set("0123456789abcdef"),
        "{stage: sha256 hex of its teacher's weight file}",
    )  # fmt: skip


def listed_weights(folder: Path) -> dict[str, str]:
    """{stage: the sha256 of its weight file} as ``folder``'s manifest lists it ({} where
    there is no readable manifest: nothing to compare with)."""
    try:
        listed = json.loads((folder / MANIFEST).read_text()).get("files") or {}
        return {
            name.removesuffix(".safetensors"): entry["sha256"]
            for name, entry in listed.items()
            if name.endswith(".safetensors") and isinstance(entry.get("sha256"), str)
        }
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def stale_students(parent: Path, teachers: dict[str, str]) -> list[str]:
    """The stages whose recorded teacher (``teachers``: weight-file sha256 by stage) is not
    the weight file that ``parent``'s manifest lists for that stage now: students of weights
    that have been replaced since (a stage the parent no longer has counts as replaced).
    [] where the parent has no readable manifest: nothing to compare with."""
    now = listed_weights(parent) if teachers else {}
    if not now:
        return []
    return [name for name, sha in teachers.items() if now.get(name) != sha]


def video_stages(trained_on: dict[str, Any]) -> dict[str, str]:
    """{stage: its videos' folder} of the stages ``trained_on`` says were trained on videos."""
    return {name: data["videos"] for name, data in trained_on.items() if data != "toy"}


class Cascade(nn.Module):
    """Text encoder + trained stage models of one ``CascadeConfig``; ``generate`` runs them.

    ``text_probe`` (``text.probe`` of the encoder the stages were trained with, recorded in
    cascade.json) is checked against the encoder when it is first used: another encoder of
    the same width (another T5 at the configured path) is an error, not silently wrong
    videos. ``None`` checks nothing: a cascade saved before ivref recorded the probe, or by
    a ``Cascade`` whose encoder was never built nor given (``save_pretrained`` records the
    probe only of an encoder it has, rather than load one to save).

    ``trained_on`` says what each stage was trained on, as ``ivref export`` records it:
    ``"toy"`` (the toy world) or ``{"videos": FOLDER}``; a stage it does not name is unknown
    (``ivref distill`` and ``ivref evaluate`` read it to warn about data that does not fit).

    ``teachers``, in a cascade of distilled students (a ``distilled/`` folder), names the
    weight file each student's teacher had in the parent cascade (its sha256, as the parent's
    manifest lists it): loading the students warns where the parent's stage has been
    replaced since, so ``--distilled`` does not sample an old teacher's students unsaid.
    """

    def __init__(
        self,
        cfg: configs.CascadeConfig,
        models: dict[str, VideoUNet],
        encoder: text.TextEncoder | None = None,
        *,
        text_probe: list[float] | None = None,
        trained_on: dict[str, Any] | None = None,
        teachers: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        names = [s.name for s in cfg.stages]
        unknown = set(models) - set(names)
        if unknown:
            raise ValueError(f"models for unknown stages {sorted(unknown)}; stages: {names}")
        trained = [n for n in names if n in models]
        if trained != names[: len(trained)]:
            raise ValueError(f"trained stages {trained} must be a prefix of the cascade {names}")
        if not trained:
            raise ValueError("a Cascade needs at least the base stage's model")
        for name in trained:  # save_pretrained records cfg: other shapes would not load
            model_cfg = getattr(models[name], "cfg", None)
            stage_checks.check_model_config(name, model_cfg, cfg.stage(name).unet)
        self.cfg = cfg
        self.models = nn.ModuleDict(models)
        self.trained_on = check_trained_on(trained_on, trained)
        self.teachers = check_teachers(teachers, trained)
        if text_probe is not None and not text.is_probe(text_probe):
            raise ValueError(
                f"text_probe={text_probe!r}: give text.probe(encoder), a list of at most "
                f"{text.PROBE_DIMS} finite numbers, or None"
            )
        if encoder is not None and not isinstance(encoder, text.TextEncoder):
            raise ValueError(
                f"encoder={encoder!r} is not a text encoder (name, dim, max_length and "
                "encode(prompts)): give one built by text.build_encoder(cfg.text), or None to "
                "build it from the config on first use"
            )
        if encoder is not None and encoder.dim != cfg.text.dim:
            raise ValueError(
                f"encoder {encoder.name!r} makes {encoder.dim}-wide embeddings; this cascade's "
                f"stages take text.dim={cfg.text.dim}"
            )
        self._encoder = encoder
        self.text_probe = text_probe
        self._probed: object = None  # the encoder that passed the probe check
        self.timings: dict[str, float] = {}  # seconds per stage of the last ``generate``
        self.last_seed: int | None = None  # the seed of the last ``generate`` (drawn if None)

    @property
    def trained_stages(self) -> list[configs.StageConfig]:
        return [s for s in self.cfg.stages if s.name in self.models]

    @property
    def encoder(self) -> text.TextEncoder:
        """The text encoder, built from ``cfg.text`` on first use and checked once against
        ``text_probe``."""
        if self._encoder is None:
            self._encoder = text.build_encoder(self.cfg.text)
        if self.text_probe is not None and self._probed is not self._encoder:
            now = text.probe(self._encoder)
            text.check_probe(self.text_probe, now, self._encoder.name, "this cascade")
            self._probed = self._encoder
        return self._encoder

    def default_batch_size(self) -> int:
        """Videos sampled at once, from 1 to 64: about ``CPU_BATCH_VOXELS`` output voxels per
        batch where the last stage's model is on the CPU, ``GPU_BATCH_VOXELS`` elsewhere."""
        last = self.trained_stages[-1]
        on_cpu = model_device(self.models[last.name]).type == "cpu"
        voxels = CPU_BATCH_VOXELS if on_cpu else GPU_BATCH_VOXELS
        return max(1, min(64, voxels // (last.num_frames * last.height * last.width)))

    @overload
    def generate(
        self,
        prompts: Sequence[str],
        *,
        seed: int | None = None,
        steps: int | Mapping[str, int] | None = None,
        guidance: float | Mapping[str, float] | None = None,
        return_stages: Literal[False] = False,
        progress: bool = False,
        batch_size: int | None = None,
    ) -> torch.Tensor: ...

    @overload
    def generate(
        self,
        prompts: Sequence[str],
        *,
        seed: int | None = None,
        steps: int | Mapping[str, int] | None = None,
        guidance: float | Mapping[str, float] | None = None,
        return_stages: Literal[True],
        progress: bool = False,
        batch_size: int | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]: ...

    @overload
    def generate(
        self,
        prompts: Sequence[str],
        *,
        seed: int | None = None,
        steps: int | Mapping[str, int] | None = None,
        guidance: float | Mapping[str, float] | None = None,
        return_stages: bool = False,
        progress: bool = False,
        batch_size: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]: ...

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        seed: int | None = None,
        steps: int | Mapping[str, int] | None = None,
        guidance: float | Mapping[str, float] | None = None,
        return_stages: bool = False,
        progress: bool = False,
        batch_size: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Videos for ``prompts``: (B, C, F, H, W) in [-1, 1] on the CPU, from the last stage.

        ``steps`` and ``guidance`` (w) override the stages' defaults: one value for every
        stage or a {stage name: value} mapping. Video i is drawn from seed ``seed + i``
        alone, so it does not depend on the other prompts or on ``batch_size`` (prompts
        sampled together; default ``default_batch_size()``) up to float rounding (a batch's
        kernels may sum in another order: ~1e-6); ``seed=None`` draws a fresh
        seed. With ``return_stages`` also returns every stage's output, base first.
        ``self.timings`` holds the seconds each stage took.
        """
        prompts = check_prompts(prompts)
        stages = self.trained_stages
        steps_of = _per_stage(steps, stages, "steps")
        w_of = _per_stage(guidance, stages, "guidance")
        for s in stages:  # every stage's settings checked before any is sampled
            per_stage = f"[{s.name!r}]"  # named where a mapping gave it
            if steps_of[s.name] is not None:
                check_steps(steps_of[s.name], "steps" + per_stage * isinstance(steps, Mapping))
            if w_of[s.name] is not None:
                check_guidance(w_of[s.name], "guidance" + per_stage * isinstance(guidance, Mapping))
            check_learnt_guidance(s, s.guidance_w if w_of[s.name] is None else w_of[s.name])
        if seed is None:
            seed = secrets.randbelow(MAX_SEED + 1)
        if not is_integer(seed) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed={seed!r} must be an integer from 0 to 2**63 - 1")
        seed = int(seed)  # NumPy's integers too
        batch_size = self.default_batch_size() if batch_size is None else batch_size
        if not is_integer(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
        batch_size = int(batch_size)
        for name, flag in (("return_stages", return_stages), ("progress", progress)):
            if not isinstance(flag, bool):  # "no" is truthy: refused, not taken for True
                raise TypeError(f"{name}={flag!r} must be True or False")
        self.last_seed = seed
        self.timings = {s.name: 0.0 for s in stages}
        outputs: list[list[torch.Tensor]] = [[] for _ in stages]
        chunks = range(0, len(prompts), batch_size)
        for start in tqdm(chunks, desc="batches", disable=not progress or len(chunks) < 2):
            end = min(start + batch_size, len(prompts))
            text_emb, text_mask = self.encoder.encode(prompts[start:end])  # per batch, too
            gens = [
                torch.Generator().manual_seed((seed + i) % (MAX_SEED + 1))
                for i in range(start, end)
            ]
            video = None
            for k, stage in enumerate(stages):
                began = time.perf_counter()
                video = self._sample(
                    stage,
                    text_emb,
                    text_mask,
                    video,
                    gens,
                    steps_of[stage.name],
                    w_of[stage.name],
                    progress,
                )
                if return_stages or k == len(stages) - 1:  # keep only what is returned
                    outputs[k].append(video.float().cpu())  # also waits for an async device
                self.timings[stage.name] += time.perf_counter() - began
        # every stage's videos, or (return_stages=False) the last stage's alone
        videos = [torch.cat(chunks_k) for chunks_k in outputs if chunks_k]
        return (videos[-1], videos) if return_stages else videos[-1]

    def _sample(
        self,
        stage: configs.StageConfig,
        text_emb: torch.Tensor,
        text_mask: torch.Tensor,
        previous: torch.Tensor | None,
        gens: list[torch.Generator],
        steps: int | None,
        w: float | None,
        progress: bool,
    ) -> torch.Tensor:
        """One stage for one batch; each video's noise from its own generator."""
        model = cast(VideoUNet, self.models[stage.name])  # sampled in eval mode, its own kept
        shape = (len(gens), model.cfg.out_channels, stage.num_frames, stage.height, stage.width)
        noise = samplers.randn(shape, gens, torch.float32, "cpu")  # row i from gens[i]
        aug_noise = None
        if stage.kind != "base":
            aug_noise = samplers.randn(shape, gens, torch.float32, "cpu")
        return sample_stage(
            model,
            stage,
            self.cfg.diffusion,
            text_emb,
            text_mask,
            cond_video=previous,
            steps=steps,
            guidance_w=w,
            generator=gens,  # a stochastic sampler's step noise, too, per video
            noise=noise,
            aug_noise=aug_noise,
            progress=progress,
        )

    def save_pretrained(
        self,
        dir: str | os.PathLike,  # noqa: A002 (the public name of the documented API)
        *,
        overwrite: bool = False,
    ) -> Path:
        """Write one fp16 ``<stage>.safetensors`` per trained stage, then ``cascade.json``.

        Refuses a folder that already holds a cascade unless ``overwrite``; refuses
        non-finite weights. The manifest, written last, records each file's size and sha256.
        ``overwrite`` builds the new cascade beside the old one, keeping what else the folder
        holds (logs, ``distilled/``) but the old stage files, and swaps the two
        (``files.replace_folder``): interrupted, the old cascade stays whole.
        """
        directory = files.finish_replace(dir)  # an earlier overwrite killed mid-swap
        if directory.exists() and not directory.is_dir():
            raise FileExistsError(
                f"{str(directory)!r} is a file; save_pretrained writes a folder: give its path"
            )
        if (directory / MANIFEST).exists() and not overwrite:
            raise FileExistsError(
                f"{str(directory)!r} already holds a cascade ({MANIFEST}); pass overwrite=True "
                "(--force) to replace it, or choose another folder"
            )
        names = [f"{s.name}.safetensors" for s in self.trained_stages]
        taken = [n for n in names if (directory / n).exists()]
        if taken and not overwrite:  # not ours (no manifest), or a save killed before it
            raise FileExistsError(
                f"{str(directory)!r} holds {taken} but no {MANIFEST}: files this save would "
                "overwrite; pass overwrite=True (--force) to replace them, or choose another folder"
            )
        if (directory / MANIFEST).exists():  # beside it, then swapped: never half replaced
            return files.replace_folder(directory, self._write, _stage_files(directory))
        directory.mkdir(parents=True, exist_ok=True)
        self._write(directory)
        return directory

    def _write(self, directory: Path) -> None:
        stages = [s.name for s in self.trained_stages]
        for name in stages:
            checkpoint.save_weights(
                directory / f"{name}.safetensors", self.models[name].state_dict()
            )
        names = [f"{name}.safetensors" for name in stages]
        manifest = {
            "format": FORMAT,
            "config": self.cfg.to_dict(),
            "stages": stages,
            "files": tensor_files.file_manifest(directory, names),
        }
        probe = self.text_probe
        if probe is None and self._encoder is not None:  # built already: cheap to record
            probe = text.probe(self._encoder)
        if probe is not None:
            manifest["text_probe"] = probe
        known = {name: data for name, data in self.trained_on.items() if name in stages}
        if known:
            manifest["trained_on"] = known
        teachers = {name: sha for name, sha in self.teachers.items() if name in stages}
        if teachers:
            manifest["teachers"] = teachers
        manifest["digest"] = checkpoint.config_digest(manifest)  # of everything above
        files.atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=2) + "\n")

    @classmethod
    def from_pretrained(
        cls,
        dir: str | os.PathLike | None = None,  # noqa: A002 (the public name of the documented API)
        *,
        encoder: text.TextEncoder | None = None,
        variant: str | None = None,
    ) -> Cascade:
        """Load a cascade folder; ``None`` loads the toy cascade shipped in ``data/toy`` (or
        the folder the environment variable ``IVREF_WEIGHTS`` names).

        ``variant="distilled"`` loads the distilled cascade kept in the folder's
        ``distilled/`` subfolder (8 sampling steps per stage, one pass each) [IV §2.7].
        """
        if dir is not None and not isinstance(dir, str | os.PathLike):
            raise TypeError(f"dir={dir!r} must be a folder's path (str or Path), or None")
        directory = shipped_dir() if dir is None else Path(dir)
        if directory.is_file():
            raise NotADirectoryError(
                f"{str(directory)!r} is a file; give the cascade folder (it holds {MANIFEST})"
            )
        _check_variant(variant)
        if variant == "distilled":
            directory = directory / DISTILLED
        manifest_path = directory / MANIFEST
        read = read_manifest(directory, shipped=dir is None)
        manifest, cfg, stages = read.manifest, read.cfg, read.stages
        probe, trained_on, teachers = read.text_probe, read.trained_on, read.teachers
        if manifest["format"] == 1:
            warnings.warn(
                f"{manifest_path}: format 1 has no checksums; files are not verified", stacklevel=2
            )
        else:
            _check_listed(manifest.get("files"), stages, manifest_path)
            tensor_files.verify_files(directory, manifest["files"], str(manifest_path))
        stale = stale_students(directory.resolve().parent, teachers)
        if stale and directory.resolve().name == DISTILLED:
            parent = directory.resolve().parent
            warnings.warn(
                f"{str(directory)!r}: the stages {stale} were distilled from (or copied from) "
                f"weights that the cascade {str(parent)!r} no longer holds (its stage was "
                "replaced since): they sample as the old weights did; distil them again (ivref "
                f"distill --stage NAME --from {parent}) and export them here",
                stacklevel=2,
            )
        models = {}
        for name in stages:
            model = VideoUNet.to_load(cfg.stage(name).unet)
            checkpoint.load_weights(directory / f"{name}.safetensors", model)
            models[name] = model.eval()
        return cls(cfg, models, encoder, text_probe=probe, trained_on=trained_on, teachers=teachers)
