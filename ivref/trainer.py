"""One readable training loop for any stage of the cascade: ``Trainer``.

The loop owns what every run needs: AdamW [ADAMW] with linear warm-up and gradient
clipping, an EMA of the weights [EMA] (what gets sampled and shipped; both schedules in
optimization.py), the log, whole-folder checkpoints and exact resume
(trainer_checkpoints.py), and clean stops (clean_stops.py). What a step
optimises comes from an *objective* (objectives.py): base, TSR and SSR stages by default,
distillation (distill.py) by plug-in.
The ``ivref train`` command around it is train.py, which re-exports everything here.

Safety: every random draw (data, t, eps, text and model dropout, crops, augmentation) comes
from generators saved in the checkpoint (model_rng.py for the model's dropout), an
evaluator's from torch's global generator seeded from them at its step, so ``resume``
continues exactly and leaves the caller's global generator alone; the run folder is locked
while a trainer writes it; a non-finite loss or gradient stops the run naming the last good
checkpoint (or skips the step, ``on_nonfinite="skip"``) and non-finite weights are never
saved; Ctrl-C or SIGTERM saves at the end of the current step. Data-parallel over N
processes under ``torchrun``: distributed.py says what each process does.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import math
import signal
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import torch
from tqdm.auto import tqdm

from ivref import (
    cascade,
    checkpoint,
    clean_stops,
    configs,
    devices,
    distributed,
    evaluate,
    files,
    objectives,
    trainer_checkpoints,
)
from ivref.arguments import check_count, check_seed
from ivref.compiling import check_compile as check_compile  # re-exported: train.py and
from ivref.compiling import compile_options as compile_options  # earlier code find them here
from ivref.compiling import text_padding as text_padding
from ivref.model_rng import ModelRNG
from ivref.optimization import ema_decay_at as ema_decay_at
from ivref.optimization import ema_update as ema_update
from ivref.optimization import learning_rate as learning_rate
from ivref.optimization import warmup_lr as warmup_lr

LOG = checkpoint.RUN_LOG
Evaluator = Callable[["Trainer"], dict[str, float]]
OnNonFinite = Literal["stop", "skip"]
MAX_SKIPPED = 10  # consecutive non-finite steps that end a run even with on_nonfinite="skip"
MAX_SEED = cascade.MAX_SEED

TextCache = objectives.TextCache  # where earlier code found it
caption_evaluator = evaluate.stage_evaluator  # base and SR stages alike


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss or gradient."""


def check_evaluation(evaluate: Any, every: int, given_later_ok: bool = False) -> None:
    """``evaluate`` is an evaluator (``trainer -> {name: number}``), not the factory that makes
    one, and ``evaluate_every`` > 0 has one to call (``given_later_ok``: the constructor,
    after which ``trainer.evaluate`` may still be set). A mistake here used to surface only
    at the first evaluation."""
    if evaluate is caption_evaluator:
        raise TypeError(
            "evaluate=train.caption_evaluator is the factory that makes an evaluator: call it, "
            "evaluate=train.caption_evaluator() (options: prompts=, steps=, guidance_w=)"
        )
    if evaluate is not None and not callable(evaluate):
        raise TypeError(
            f"evaluate={evaluate!r:.60} must be callable: trainer -> {{name: number}}, or None"
        )
    if every and evaluate is None and not given_later_ok:
        raise ValueError(
            f"evaluate_every={every} but no evaluator: give evaluate= (e.g. "
            "train.caption_evaluator()), or evaluate_every=0"
        )


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a training log (a run folder or its log.jsonl); a torn last line is dropped.
    A row without an integer "step" is a ValueError naming it (an edited or damaged log)."""
    rows = files.read_log(path, name=LOG)
    for number, row in enumerate(rows, start=1):
        step = row.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            where = Path(path) / LOG if Path(path).is_dir() else Path(path)
            raise ValueError(
                f"{str(where)!r}: row {number} has no integer 'step' (it holds {sorted(row)}): "
                "an edited or damaged log; mend or remove that row"
            )
    return rows


def check_bf16(bf16: Any) -> None:
    """``bf16`` of ``Trainer`` and ``distill_stage``: None (the stage's setting), True or False."""
    if bf16 is not None and not isinstance(bf16, bool):
        raise TypeError(f"bf16={bf16!r}; allowed: None (the stage's setting), True or False")


def resolve_bf16(
    forced: bool | None, configured: bool, device: torch.device, warn: bool = True
) -> bool:
    """Whether a run uses bf16 autocast: ``forced`` if given (True or False), else the stage's
    ``configured`` setting where ``device`` computes bf16 natively; a warning (where ``warn``)
    where it does not (``devices.native_bf16``)."""
    check_bf16(forced)
    if forced is not None:
        return forced
    if configured and not devices.native_bf16(device):
        if warn:
            forcing = ""
            if device.type != "mps":  # there torch itself turns bf16 autocast off
                forcing = (
                    " Trainer(bf16=True), or --bf16 of ivref train and ivref distill, forces it"
                )
            warnings.warn(
                f"bf16 autocast is off for this run: this {device.type} device has no native "
                f"bf16 ({devices.NO_NATIVE_BF16[device.type]}); training in float32.{forcing}",
                stacklevel=3,
            )
        return False
    return configured


def _with_batch_size(config: configs.CascadeConfig, stage: str, batch_size: int) -> Any:
    """``config`` with stage ``stage`` training at ``batch_size``."""
    stages = tuple(
        dataclasses.replace(s, train=dataclasses.replace(s.train, batch_size=batch_size))
        if s.name == stage
        else s
        for s in config.stages
    )
    return dataclasses.replace(config, stages=stages)


class Trainer:
    """Trains stage ``stage`` of ``config``; writes ``out/log.jsonl`` and ``out/checkpoints/``.

    By default the model is a fresh ``VideoUNet`` (seeded by ``seed``) and the objective the
    stage's diffusion loss on the toy world, painted on ``device`` (``dataset`` and
    ``text_encoder`` replace its parts: an encoder that ``config.text`` does not describe,
    in width, max_length or kind, is a ValueError, since the run records the config); pass
    ``model`` and ``objective`` to train anything else with the same loop.

    ``compile=True`` compiles the model's forward and backward in place with
    ``torch.compile`` (``nn.Module.compile``: state dicts keep their names), with CUDA graphs
    on a GPU (``mode="reduce-overhead"``), where a small model's step is otherwise bound by
    kernel launches; a dict is passed to ``nn.Module.compile`` as its options instead. Shapes
    are static (``dynamic=False``), so the default objective pads text to the encoder's
    ``max_length`` tokens and every batch has one shape; a custom objective whose
    shapes vary compiles once per shape. The first step includes the compilation. On a CPU
    it does not pay for the toy stages (docs/benchmarks.md).

    ``batch_size`` (None: the stage's ``train.batch_size``) is written into the run's config,
    so a resume that gives another says so (``ConfigChangedWarning``), as for any change.

    In a process group of N (``torchrun``, see distributed.py) the trainer is data-parallel:
    ``batch_size`` is the global batch, each process draws ``batch_size / N`` samples from
    its own streams (seeded by ``distributed.stream_seed(seed, rank)``; a ``dataset`` you
    pass is used as it is, so seed it per rank), the model is wrapped in
    ``DistributedDataParallel``, and rank 0 alone writes the log and the checkpoints.
    ``fsdp=True`` shards the model, gradients, AdamW state and EMA between the processes
    instead (FSDP2, one unit per ``SpaceTimeBlock``). ``evaluate`` runs on rank 0 alone,
    unless it is marked ``distributed.on_every_rank`` (``evaluate.stage_evaluator`` is: the
    ranks share its prompts) or the model is sharded: then every rank calls it.

    ``bf16``: bf16 autocast for the training steps and the evaluator's sampling. None (the
    default) takes the stage's ``train.bf16``, but only where the device computes bf16
    natively (``devices.native_bf16``): on a CPU without AVX-512, AMX or Arm bf16, autocast
    would emulate bf16 far slower than float32, so the run trains in float32 and says so.
    True or False forces it; the checkpoints keep a forced setting, and ``resume`` restores it
    into a trainer made with ``bf16=None`` (with a warning where that changes the setting; as
    ``ivref train --resume`` without ``--bf16`` / ``--no-bf16`` does), while a trainer made
    with True or False keeps its own.
    ``self.bf16`` is what the steps use.

    ``progress``: a tqdm bar of the steps on rank 0, labelled with the stage's name (a string:
    with that label, e.g. a distillation's phase).
    """

    def __init__(
        self,
        config: configs.CascadeConfig,
        stage: str,
        out: str | Path,
        *,
        objective: objectives.Objective | None = None,
        model: torch.nn.Module | None = None,
        dataset: objectives.Dataset | None = None,
        text_encoder: Any = None,
        batch_size: int | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        checkpoint_every: int = 500,
        keep_checkpoints: int = 2,
        evaluate: Evaluator | None = None,
        evaluate_every: int = 0,
        on_nonfinite: OnNonFinite = "stop",
        progress: bool | str = True,
        compile: bool | dict[str, Any] = False,
        fsdp: bool = False,
        bf16: bool | None = None,
    ) -> None:
        if not isinstance(config, configs.CascadeConfig):
            hint = f": configs.preset({config!r})" if isinstance(config, str) else ""
            raise TypeError(f"config must be a configs.CascadeConfig{hint}; got {config!r:.60}")
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite={on_nonfinite!r}; allowed: 'stop' or 'skip'")
        check_compile(compile)
        seed = check_seed("seed", seed)  # each a Python int from here (NumPy's are taken)
        batch_size = check_count("batch_size", batch_size, none="the stage's")
        # an int: check_count returns None only where ``none`` says what None means
        checkpoint_every = cast(int, check_count("checkpoint_every", checkpoint_every))
        keep_checkpoints = cast(int, check_count("keep_checkpoints", keep_checkpoints))
        evaluate_every = cast(int, check_count("evaluate_every", evaluate_every, minimum=0))
        check_evaluation(evaluate, evaluate_every, given_later_ok=True)
        device = cascade.parse_device(device)
        self.context = context = distributed.current()
        self.fsdp = distributed.check_fsdp(fsdp, context, "the model")
        if context.world_size > 1 and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", context.local_rank)  # one GPU per process
        if batch_size is not None and batch_size != config.stage(stage).train.batch_size:
            config = _with_batch_size(config, stage, batch_size)  # saved: a resume compares it
        config = trainer_checkpoints.absolute_text_path(config)
        self.config, self.stage = config, config.stage(stage)
        self.train_cfg, self.diffusion = self.stage.train, config.diffusion
        self.out, self.device = Path(out), device
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"out={str(out)!r} is a file; give a folder for the run")
        self.batch_size = batch_size or self.train_cfg.batch_size
        self.bf16 = resolve_bf16(bf16, self.train_cfg.bf16, device, warn=context.is_main)
        self.bf16_given = bf16  # saved with each checkpoint: a resume restores it
        uneven = distributed.uneven_batch(
            self.batch_size, context.world_size, f"batch_size={self.batch_size}"
        )
        if uneven:
            raise ValueError(uneven)
        self.local_batch_size = self.batch_size // context.world_size
        stream = distributed.stream_seed(seed, context.rank)  # this rank's data and noise
        self.checkpoint_every, self.keep_checkpoints = checkpoint_every, keep_checkpoints
        self.evaluate, self.evaluate_every = evaluate, evaluate_every
        if not isinstance(progress, bool | str):
            raise TypeError(f"progress={progress!r} must be True, False or a label (str)")
        self.on_nonfinite, self.progress = on_nonfinite, progress
        self.compiled = compile is not False
        if objective is None:
            from ivref import text

            if text_encoder is None:
                text_encoder = text.build_encoder(config.text)
            text.check_described(text_encoder, config.text, "the Trainer")
            if dataset is None:  # not ``or``: an empty dataset must not become the toy world
                dataset = objectives.toy_dataset(self.stage, stream, self.device)
            cache = objectives.TextCache(text_encoder, pad_multiple=text_padding(config, compile))
            objective = objectives.DiffusionObjective(config, self.stage, dataset, cache)
        trainer_checkpoints.check_objective_rng(objective)
        self.objective = objective
        if model is None:
            from ivref.unet3d import VideoUNet

            with torch.random.fork_rng(devices=[]):  # initial weights from ``seed``; the
                torch.manual_seed(seed)  # global RNG is restored afterwards
                model = VideoUNet(self.stage.unet)
        self._place(model.to(self.device), compile)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=self.train_cfg.lr,
            weight_decay=self.train_cfg.weight_decay,
            fused=True,  # one kernel for all parameters: ~3x cheaper than the per-tensor loop
        )
        self.generator = torch.Generator().manual_seed(stream + 1)  # t, eps, text drop, crops
        self.model_rng = ModelRNG(self.model, stream + 2, self.device)  # the model's dropout
        self.step = 0
        self.signal: int | None = None  # set by Ctrl-C / SIGTERM during ``fit``
        self._stop_agreed = False  # several processes: a signal reached one of them
        self._skipped = 0
        self._log_open = False  # the first ``fit`` of a fresh run starts a new log
        self._total: int | None = None  # the step ``fit`` trains to (for lr decay)
        self._saved_step: int | None = None  # the step of the last checkpoint written
        self._row: dict[str, Any] | None = None  # this step's log row, kept in its checkpoint
        self._checkpoint_seen: str | None = None  # the newest it saved or resumed (step name)

    def _place(self, model: torch.nn.Module, compile: bool | dict[str, Any]) -> None:
        """``self.model`` and ``self.ema``: sharded (FSDP), compiled, DDP-wrapped as asked."""
        context = self.context
        if self.fsdp:  # sharding assumes equal weights everywhere: rank 0's
            distributed.broadcast_module(model, context)
        self.model = model
        self.ema = copy.deepcopy(model).requires_grad_(False).eval()
        if self.fsdp:  # the EMA is sharded like the model: each rank averages its shard
            from ivref.unet3d import SpaceTimeBlock

            for module in (self.model, self.ema):
                distributed.shard(module, (SpaceTimeBlock,), self.device)
        if self.compiled:  # after the EMA copy, which stays eager
            self.model.compile(
                **(compile if isinstance(compile, dict) else compile_options(self.device))
            )
        # several processes, no FSDP: DDP around the model (it broadcasts rank 0's weights)
        self._ddp = self.model if self.fsdp else distributed.wrap(model, context, self.device)
        if context.world_size > 1 and not self.fsdp:  # the EMA from the broadcast weights
            self.ema.load_state_dict(self.model.state_dict())

    # The default objective's parts, where notebooks and evaluators look for them (another
    # objective's attributes of those names, if it has them; else an AttributeError).
    @property
    def text(self) -> objectives.TextCache:
        return cast(objectives.DiffusionObjective, self.objective).text

    @property
    def data(self) -> objectives.Dataset:
        return cast(objectives.DiffusionObjective, self.objective).data

    @property
    def step_model(self) -> torch.nn.Module:
        """What a training step calls: the model, or (several processes) DDP around it."""
        if self.context.world_size == 1:
            return self.model
        if self._ddp is self.model or self._ddp.module is self.model:  # FSDP, DDP
            return self._ddp
        raise RuntimeError(
            "Trainer.model was replaced after the trainer wrapped it in "
            "DistributedDataParallel; pass the model as Trainer(model=...) instead"
        )

    @property
    def interrupted(self) -> bool:
        return self.signal is not None

    # -- one step ---------------------------------------------------------------------

    def loss(self, x: torch.Tensor, captions: list[str], is_image: torch.Tensor) -> torch.Tensor:
        """The objective's mean loss of one batch, drawing from the loop's generator."""
        batch = objectives.Batch(x, list(captions), is_image)
        return self.objective.loss(self.step_model, batch, self.generator, self.device, self.bf16)

    def _nonfinite(self, what: str, value: float) -> None:
        last = checkpoint.latest(self.out)
        where = f"the last good checkpoint is {str(last)!r}" if last else "no checkpoint yet"
        message = f"non-finite {what} ({value}) at step {self.step + 1}; {where}"
        self._skipped += 1
        if self.on_nonfinite == "stop":
            raise NonFiniteLossError(message + " (lower --lr, or --on-nan skip to skip steps)")
        if self._skipped >= MAX_SKIPPED:
            raise NonFiniteLossError(f"{message}: {self._skipped} non-finite steps in a row")
        warnings.warn(message + ": step skipped", stacklevel=3)

    def train_step(self) -> dict[str, float]:
        """Sample a batch, one AdamW step with warm-up and clipping, then the EMA update."""
        batch = self.objective.sample(self.local_batch_size)
        lr = learning_rate(self.step, self.train_cfg, self._total)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        if self.compiled:  # a new step: CUDA-graph outputs of the last one may be reused
            torch.compiler.cudagraph_mark_step_begin()
        # the last step's gradients go before the forward, not after it: its activations and
        # a second copy of the gradients are never held at once
        self.optimizer.zero_grad(set_to_none=True)
        with self.model_rng.scope():  # dropout masks from this run's stream
            loss = self.loss(batch.x, batch.captions, batch.is_image)
            loss.backward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, self.train_cfg.grad_clip)
        # one wait for the device a step (both numbers at once), not one per number
        loss_value, grad_norm = self._agree(loss.detach().float(), distributed.scalar(norm))
        row = {"loss": loss_value, "lr": lr}
        if not math.isfinite(loss_value):  # its gradients are not used either
            self.optimizer.zero_grad(set_to_none=True)
            self._nonfinite("loss", loss_value)
            self.step += 1
            return row | {"skipped": 1}
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self._nonfinite("gradient norm", grad_norm)
            self.step += 1
            return row | {"grad_norm": grad_norm, "skipped": 1}
        self._skipped = 0
        self.optimizer.step()
        ema_update(self.ema, self.model, ema_decay_at(self.step, self.train_cfg.ema_decay))
        self.step += 1
        return row | {"grad_norm": grad_norm}

    def _agree(self, loss: torch.Tensor, norm: torch.Tensor) -> tuple[float, float]:
        """(loss, gradient norm) as numbers; with several processes the loss is their mean
        and ``_stop_agreed`` says whether any was signalled, from one all-reduce (the norm,
        of the averaged gradients, is the same on every rank)."""
        world = self.context.world_size
        if world == 1:
            loss_value, grad_norm = torch.stack([loss, norm.float()]).tolist()
            return loss_value, grad_norm
        own = self.signal  # None, SIGINT or SIGTERM (the two that save_on_signal takes)
        flags = [float(own == signal.SIGINT), float(own is not None and own != signal.SIGINT)]
        mine = torch.cat([loss.reshape(1), loss.new_tensor(flags)])
        total = distributed.sum_over_ranks(mine, self.context)
        numbers = torch.stack([total[0] / world, norm.float(), total[1], total[2]])
        loss_value, grad_norm, interrupts, terms = numbers.tolist()
        if interrupts + terms > 0:  # every rank stops after this step, signalled itself or
            # not, and all by the same signal (a Ctrl-C anywhere: SIGINT), so that their
            # messages and exit statuses agree
            self._stop_agreed = True
            self.signal = signal.SIGINT if interrupts > 0 else signal.SIGTERM
        return loss_value, grad_norm

    def _stopping(self) -> bool:
        """Stop after this step: this process was signalled (several: all of them agreed)."""
        return self._stop_agreed if self.context.world_size > 1 else self.signal is not None

    # -- checkpoints and the log ------------------------------------------------------

    def save(self) -> Path | None:
        """Write out/checkpoints/step-<step>/ whole; older ones beyond ``keep_checkpoints`` go.

        What a killed save left behind (a ``.step-N.tmp-*`` folder) is cleared first. With
        several processes every rank calls it; rank 0 writes every rank's random states.
        Returns the folder; on the other ranks, the run's newest checkpoint as they see it
        (None where they see none: a run folder that is not shared between the machines).
        """
        self._saved_step = self.step
        path = trainer_checkpoints.save(self)
        self._checkpoint_seen = None if path is None else checkpoint.step_name(path)
        return path

    def resume(self, new_streams: bool = False, *, announce: bool = True) -> int:
        """Restore everything from the newest checkpoint that verifies; cut the log to its step.

        A damaged newest checkpoint (bit flips, a truncated copy) is reported and the one
        before it is used; the damaged one is renamed ``step-N.damaged-<hex>`` (kept, but no
        longer taken for the run's newest). With FSDP, rank 0 reads it and shards it to the
        others.

        The random streams (data, noise, dropout) continue exactly when as many processes
        resume the run as trained it; another number is refused. ``new_streams=True``
        restores the weights, EMA, optimizer state and step alike, but starts new streams,
        seeded from the checkpoint (``trainer_checkpoints.seed_new_streams``): for any number of
        processes, and the same run whenever it is resumed so. ``announce=False`` leaves out
        the note that says so, and the warning on a config that differs from the
        checkpoint's (a caller that loads a finished run for its weights alone).
        """
        if not isinstance(new_streams, bool):
            raise TypeError(f"new_streams={new_streams!r}; allowed: True or False")
        # the folder is this process's while it sets aside damaged checkpoints and cuts the
        # log: another trainer at work there would lose the rows past the checkpoint
        lock = files.RunLock(self.out)
        trainer_checkpoints.on_main(self.context, lambda: trainer_checkpoints.take(self, lock))
        try:
            self.step = trainer_checkpoints.restore(self, new_streams, announce)
            returned = self._cut_log() if self.context.is_main else False
            if distributed.broadcast(returned, self.context):
                self._evaluate_returned_row()
        finally:
            if self.context.is_main:
                lock.release()
        self._log_open = True
        distributed.barrier(self.context)  # nobody trains on before every rank has loaded
        return self.step

    def _evaluated(self) -> dict[str, Any]:
        """``evaluate(self)`` with the global random state left as it was: the checkpoint of
        this step is saved before it, so an evaluator drawing from torch's global generator
        would otherwise make a resumed run differ from one that went on. Inside, that
        generator is seeded from the run's own state at this step (``_evaluation_seed``), so
        such an evaluator draws the same in a resumed run as in one that went on, and the
        caller's generator is not part of the run (a resume leaves it alone)."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            seed = self._evaluation_seed()
            torch.default_generator.manual_seed(seed)
            if devices:  # this device's generator alone (torch.manual_seed would seed all)
                index = devices[0].index  # None: the current device, as fork_rng takes it
                index = torch.cuda.current_device() if index is None else index
                torch.cuda.default_generators[index].manual_seed(seed)
            try:
                return cast(Evaluator, self.evaluate)(self)  # called only where it is set
            finally:
                if self.fsdp:  # the EMA sampled whole: back to its shards for the next update
                    distributed.reshard(self.ema)

    def _evaluation_seed(self) -> int:
        """A seed for this step's evaluation: a hash of this rank's noise generator's state,
        which the checkpoint keeps, so a resumed run evaluates as one that went on."""
        state = self.generator.get_state().numpy().tobytes()
        return int.from_bytes(hashlib.sha256(state).digest()[:8], "little") % 2**63

    @property
    def _evaluate_everywhere(self) -> bool:
        """Whether every rank calls ``evaluate``: a collective evaluator (one that shares its
        work between the ranks, ``distributed.on_every_rank``), or any evaluator under FSDP,
        where sampling the sharded EMA takes every rank; otherwise rank 0 alone."""
        return self.fsdp or distributed.runs_on_every_rank(self.evaluate)

    def _cut_log(self) -> bool:
        """The log as at the resumed step: rows past it go; the step's own row, where the
        log lacks it (most often: the process was killed after the save, while it evaluated
        the step), comes back from the checkpoint. Returns whether that row awaits an
        evaluation due at its step (``_evaluate_returned_row``)."""
        log = self.out / LOG
        rows = [r for r in read_log(log) if r["step"] <= self.step] if log.is_file() else []
        kept = self._row  # restored from the checkpoint (None: saved by an ivref before)
        returned = kept is not None and (not rows or rows[-1]["step"] < self.step)
        due = self.evaluate is not None and self.evaluate_every > 0
        due = due and self.step > 0 and self.step % self.evaluate_every == 0
        if returned and kept is not None:  # (``returned`` says it is not None)
            rows.append({"step": kept["step"], **kept})  # the step first, as logged
            print(
                f"resume: step {self.step}'s log row came back from its checkpoint (the log "
                "lacked it: the run stopped after saving the step, before its row was logged, "
                "or the log was cut or deleted)"
                + ("; the evaluation due then runs again now" if due else ""),
                file=sys.stderr,
            )
        if log.is_file() or rows:
            files.write_log(log, rows)
        return returned and due

    def _evaluate_returned_row(self) -> None:
        """Evaluate the resumed step again, its evaluation lost with the process that ran it,
        and add the scores to its row (every rank calls it). The weights, and the generator
        state the evaluator's seed comes from (``_evaluation_seed``), are the checkpoint's,
        as they were then: the scores are those the run would have logged."""
        scores = None
        if self.context.is_main or self._evaluate_everywhere:
            scores = evaluate.score_fields(self._evaluated())
        if self.context.is_main and scores is not None:
            log = self.out / LOG
            rows = read_log(log)
            rows[-1].update(scores)  # the step's row, last since _cut_log
            files.write_log(log, rows)

    def _log(self, row: dict[str, Any]) -> None:
        if not self.context.is_main:
            return
        if not self._log_open:  # a fresh run: a log left in the folder is not ours
            files.write_log(self.out / LOG, [])
            self._log_open = True
        files.append_log(self.out / LOG, row)

    # -- the loop ---------------------------------------------------------------------

    def fit(self, steps: int) -> list[dict[str, Any]]:
        """Train until ``self.step == steps``; returns this call's log rows.

        Ctrl-C or SIGTERM: finish the step, save, return with ``self.signal`` set (a second
        Ctrl-C raises KeyboardInterrupt at once); the next ``fit`` trains on. It trains only
        on from the folder's newest checkpoint if that is the one it saved or resumed last: a
        fresh trainer refuses a folder that holds checkpoints (``resume()`` first), and any
        trainer refuses one where another trainer went on with the run since.
        """
        steps = cast(int, check_count("steps", steps, minimum=0))  # an int (no ``none``)
        check_evaluation(self.evaluate, self.evaluate_every)  # it may be set after __init__
        rows: list[dict[str, Any]] = []
        self._total = steps
        self.signal, self._stop_agreed = None, False  # a Ctrl-C of an earlier fit is handled
        main = self.context.is_main  # the one process that locks, logs, prints
        with contextlib.ExitStack() as stack:
            lock = files.RunLock(self.out)  # rank 0 holds it and checks the folder, for all
            claim = functools.partial(trainer_checkpoints.claim, self, lock, steps)
            trainer_checkpoints.on_main(self.context, claim)
            if main:
                stack.callback(lock.release)
            stack.enter_context(clean_stops.save_on_signal(self))
            stack.enter_context(clean_stops.name_last_good(self))
            bar = stack.enter_context(
                tqdm(total=steps, initial=self.step, disable=not (self.progress and main))
            )  # closed before an error is reported, so the message is not lost in the bar
            bar.set_description(
                self.progress if isinstance(self.progress, str) else self.stage.name
            )
            start, start_step = time.perf_counter(), self.step
            while self.step < steps and not self._stopping():
                row = {"step": self.step + 1, **self.train_step()}
                row["steps_per_s"] = (self.step - start_step) / (time.perf_counter() - start)
                self._row = row  # a save keeps it: a process killed while it evaluates the
                # step (before its row is logged) gets it back on resume
                if self.step % self.checkpoint_every == 0 or self.step == steps:
                    self.save()  # before evaluating: an evaluator that fails loses no steps
                due = self.evaluate_every and self.step % self.evaluate_every == 0
                if self.evaluate and due and (main or self._evaluate_everywhere):
                    try:
                        row.update(evaluate.score_fields(self._evaluated()))
                    except BaseException:
                        self._log(row)  # the step's own numbers, before the error goes on
                        raise
                self._log(row)
                rows.append(row)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", it_s=f"{row['steps_per_s']:.2f}")
            if self.signal is not None:
                if self._saved_step != self.step:  # not saved at this step already
                    self.save()
                path = checkpoint.latest(self.out)
                name = signal.Signals(self.signal).name
                if main:
                    bar.write(f"{name}: checkpoint saved at step {self.step} in {path}", sys.stderr)
        return rows
