"""Several processes, one run: data-parallel training under ``torchrun`` [DDP].

``torchrun --nproc_per_node=N -m ivref.train ...`` starts N copies of ``ivref train``. Each
finds its rank in the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK), joins the
process group (NCCL between GPUs, gloo between CPU processes) and trains a replica of the
model wrapped in ``DistributedDataParallel``, which averages the gradients over the
processes during the backward pass:

    batch      ``batch_size`` is the global batch: each of N processes draws B / N samples
    streams    rank r draws its data and noise from its own generators, seeded by
               stream_seed(seed, r); rank 0's are those of a single-process run, so a run of
               one process is exactly the run it always was
    weights    initialised from ``seed`` on every rank, so the replicas and their EMAs start
               equal; AdamW steps on the same averaged gradient keep them equal
    agreement  the loss and "a signal arrived" are summed over the processes in one
               all-reduce a step, so every rank logs the mean loss and skips, stops and
               saves at the same step
    files      rank 0 alone holds the run lock and writes the log and the checkpoints; a
               checkpoint holds every rank's random states, so ``--resume`` with the same
               number of processes continues exactly (another number is refused)

With ``--fsdp`` the model, its gradients, the AdamW state and the EMA are sharded between the
processes instead of copied (FSDP2, ``torch.distributed.fsdp.fully_shard``, one unit per
U-Net block) [FSDP]: each holds 1/N of them and gathers a block's weights only while it
runs. The step computes the same numbers as DDP's; checkpoints are written in the
single-process format, so they load anywhere, one whole tensor at a time (sharded_state.py).

On a single process every function here is a no-op or returns the trivial answer.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist

WORLD_SIZE_KEY = "world_size"  # in a checkpoint's RNG states: the processes that wrote it
_STREAM_STRIDE = 0x9E3779B97F4A7C15  # an odd 64-bit constant: distinct seeds per rank
_F = TypeVar("_F", bound=Callable[..., object])  # what ``on_every_rank`` marks, kept as typed


@dataclass(frozen=True)
class Context:
    """This process's place in the run: ``rank`` of ``world_size``, GPU ``local_rank``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0


def current() -> Context:
    """The context of this process (rank 0 of 1 unless a process group is initialised)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return Context()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return Context(dist.get_rank(), dist.get_world_size(), local)


def launched_by_torchrun() -> bool:
    """True when the environment says this process is one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group torchrun describes, if any; returns this process's device.

    A CUDA run gives every process its own GPU, ``cuda:LOCAL_RANK`` (so ``--device cuda``,
    not ``cuda:N``); a CPU run uses gloo. Without torchrun: nothing happens, ``device`` back.
    """
    if not launched_by_torchrun():
        return device
    if device.type == "cuda":
        if device.index is not None:
            raise ValueError(
                f"device {str(device)!r} under torchrun: give --device cuda, and each process "
                "takes the GPU of its LOCAL_RANK"
            )
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local}, but only {torch.cuda.device_count()} CUDA device(s): "
                "start at most one process per GPU (--nproc_per_node)"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"device {str(device)!r} under torchrun; allowed: cpu or cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def torchrun_command(context: Context, command: str) -> str:
    """How to start ``command`` (``-m ivref.cli distill ...``) on as many processes, laid out
    on nodes as this run's are: ``torchrun --nproc_per_node=N`` on one node; on several,
    ``torchrun --nnodes=K --nproc_per_node=N/K`` (N/K from torchrun's LOCAL_WORLD_SIZE, this
    node's processes), run on each node with the rendezvous options the run was given."""
    world = context.world_size
    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE") or world)
    except ValueError:
        local = world
    if not 0 < local < world or world % local:  # one node (or a layout it cannot tell)
        return f"torchrun --nproc_per_node={world} {command}"
    nodes = world // local
    return (
        f"torchrun --nnodes={nodes} --nproc_per_node={local} {command} (on each of the "
        f"{nodes} nodes, with the rendezvous options, such as --rdzv-endpoint, it started with)"
    )


def uneven_batch(batch: int, world: int, spelled: str) -> str | None:
    """Why a global batch does not split evenly between ``world`` processes (None where it
    does); ``spelled`` names it as the caller's user wrote it ("batch_size=3", "--batch-size
    3")."""
    if batch % world == 0:
        return None
    return (
        f"{spelled} must be a multiple of the {world} processes: it is the global batch, "
        "split evenly between them"
    )


def check_fsdp(fsdp: object, context: Context, what: str) -> bool:
    """``fsdp`` checked: a bool, True only with several processes (it shards ``what``
    between them)."""
    if not isinstance(fsdp, bool):
        raise TypeError(f"fsdp={fsdp!r}; allowed: True or False")
    if fsdp and context.world_size == 1:
        raise ValueError(
            f"fsdp=True shards {what} between processes, and this is the only one: "
            "start it with torchrun --nproc_per_node=N (N >= 2), or drop --fsdp (on a "
            "resume of a sharded run: --no-fsdp)"
        )
    return fsdp


def shutdown() -> None:
    """Leave the process group (at the end of a command that joined it).

    Objects that hold the group's communication threads (DDP's reducer, FSDP's state) are
    collected first: left in reference cycles until the interpreter exits, their C++
    destructors ran after the group was gone and aborted the process now and then
    ("terminate called without an active exception": exit status -6 after a finished run;
    on 2 gloo processes, 2 of 12 runs of benchmarks/data_parallel.py --tiny, and 0 of 20 with
    the collection). Drop your own references (a trainer) before calling it."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def run_in_group(device: torch.device, work: Callable[[torch.device, Context], int]) -> int:
    """A command's ``work(device, context)`` in the process group torchrun describes (none
    without torchrun); a group joined here is left at the end, whatever happens."""
    joined = not (dist.is_available() and dist.is_initialized())
    try:
        device = init_from_env(device)
        return work(device, current())
    finally:
        if joined:
            shutdown()


def stream_seed(seed: int, rank: int) -> int:
    """The seed of stream ``rank`` of ``seed``: (seed + rank * S) mod 2**63. A rank's data
    and noise generators use it, and so does each video of an evaluation (its row for rank).

    ``seed`` itself on rank 0 (seeds are below 2**63). S is odd, so multiplying by it is a
    bijection mod 2**63 and no two ranks share a seed."""
    return (seed + rank * _STREAM_STRIDE) % 2**63


def wrap(model: torch.nn.Module, context: Context, device: torch.device) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` when there are several processes, else itself.
    DDP broadcasts rank 0's parameters and buffers, then averages gradients in backward."""
    if context.world_size == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sum_over_ranks(values: torch.Tensor, context: Context) -> torch.Tensor:
    """The elementwise sum of ``values`` over every process (one all-reduce)."""
    if context.world_size > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather(obj: Any, context: Context) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if context.world_size == 1:
        return [obj]
    out: list[Any] = [None] * context.world_size
    dist.all_gather_object(out, obj)
    return out


def share(n: int, context: Context) -> tuple[list[int], int]:
    """This rank's part of n rows, for work every rank does side by side (evaluation).

    Every rank gets ceil(n / N) consecutive rows, so all run the same number of equal-size
    forwards (FSDP needs that: a sharded forward is collective); a part the rows run out
    for is padded with row n - 1. Returns the row indices and how many are real (not
    padding). One process: every row, all real.
    """
    if n < 1:
        raise ValueError(f"n={n} rows to share; give at least one")
    per = -(-n // context.world_size)
    real = list(range(min(context.rank * per, n), min((context.rank + 1) * per, n)))
    return real + [n - 1] * (per - len(real)), len(real)


def gather_rows(rows: torch.Tensor, real: int, context: Context) -> torch.Tensor:
    """Every rank's first ``real`` rows of ``rows`` (a tensor), concatenated in rank order, on
    every rank: what each rank computed for its ``share``, put back together."""
    parts = gather((rows.cpu(), real), context)
    return torch.cat([part[:count] for part, count in parts])


def on_every_rank(function: _F) -> _F:
    """Mark ``function`` (a ``Trainer`` evaluator) as collective: with several processes the
    trainer calls it on every rank, and it shares the work between them (``share``)."""
    cast(Any, function).on_every_rank = True  # a mark: an attribute no callable type declares
    return function


def runs_on_every_rank(function: Callable | None) -> bool:
    """Whether ``function`` was marked by ``on_every_rank``."""
    return bool(getattr(function, "on_every_rank", False))


def barrier(context: Context) -> None:
    """Wait until every process gets here."""
    if context.world_size > 1:
        dist.barrier()


class MainFailed(ValueError):
    """Rank 0 could not enter what ``main_only`` gave it (the run folder's lock): the other
    processes stop with it, and say so, instead of going on to fail in their own words."""


@contextlib.contextmanager
def main_only(context: Context, manager: contextlib.AbstractContextManager) -> Iterator[None]:
    """``manager`` entered on rank 0 alone (e.g. the run folder's lock); every rank learns
    whether it was, so where rank 0 fails (the folder is another run's) the others stop
    at once with ``MainFailed`` rather than each meet the folder in its own way."""
    with contextlib.ExitStack() as stack:
        failure: Exception | None = None
        if context.is_main:
            try:
                stack.enter_context(manager)
            except Exception as err:  # a signal (BaseException) ends rank 0 at once: the
                failure = err  # others, waiting below, are ended by torchrun
        if broadcast(failure is not None, context):
            if failure is not None:
                raise failure
            raise MainFailed(
                "stopped with rank 0, which could not start the work (its own message says why)"
            )
        yield


def pack_rng(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One checkpoint's RNG tensors from every rank's: rank 0's under their own names (what a
    single process saves), rank r's as ``rank<r>/<name>``, and the number of ranks."""
    packed = dict(states[0])
    for r, state in enumerate(states[1:], start=1):
        packed |= {f"rank{r}/{k}": v for k, v in state.items()}
    if len(states) > 1:
        packed[WORLD_SIZE_KEY] = torch.tensor([len(states)], dtype=torch.int64)
    return packed


def saved_world_size(packed: dict[str, torch.Tensor]) -> int:
    """The number of processes whose RNG states a checkpoint holds (``pack_rng``)."""
    return int(packed[WORLD_SIZE_KEY]) if WORLD_SIZE_KEY in packed else 1


def unpack_rng(packed: dict[str, torch.Tensor], context: Context) -> dict[str, torch.Tensor]:
    """This rank's RNG states from a checkpoint's; a ValueError if another number of processes
    wrote it (their random streams cannot be split or merged exactly)."""
    saved = saved_world_size(packed)
    if saved != context.world_size:
        how = (  # the nodes they ran on are not recorded: their number in all is
            "one process"
            if saved == 1
            else f"{saved} processes in all (torchrun --nproc_per_node={saved} on one node)"
        )
        raise ValueError(
            f"this run was trained by {saved} process(es) and is resumed by "
            f"{context.world_size}: each process has its own data and noise streams, so "
            f"resume it with {how} to continue them exactly, or add --new-streams "
            "(Trainer.resume(new_streams=True)) to go on with new ones"
        )
    if context.rank == 0:
        return {k: v for k, v in packed.items() if "/" not in k and k != WORLD_SIZE_KEY}
    prefix = f"rank{context.rank}/"
    return {k.removeprefix(prefix): v for k, v in packed.items() if k.startswith(prefix)}


def broadcast(obj: Any, context: Context) -> Any:
    """Rank 0's ``obj`` (picklable), on every rank."""
    if context.world_size == 1:
        return obj
    box = [obj if context.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def scalar(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor from one that may be a DTensor (a sharded model's gradient norm)."""
    full = getattr(value, "full_tensor", None)
    return full() if full is not None else value


# -- FSDP: sharded model, gradients, optimizer state and EMA ------------------------------------


def broadcast_module(module: torch.nn.Module, context: Context) -> None:
    """Every rank's parameters and buffers become rank 0's (before sharding, which assumes
    equal weights everywhere; DDP does this itself)."""
    if context.world_size > 1:
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)


def reshard(module: torch.nn.Module) -> None:
    """Free the gathered weights of every FSDP unit in ``module`` (each back to its shard).
    A forward outside training (sampling the sharded EMA to evaluate it) leaves the root
    unit gathered, as if a backward were to follow: its parameters are then plain tensors,
    and the next EMA update, which mixes them with the model's sharded ones, fails. A module
    that is not sharded is left as it is."""
    from torch.distributed.fsdp import FSDPModule

    for sub in module.modules():
        if isinstance(sub, FSDPModule):
            sub.reshard()


def shard(
    module: torch.nn.Module, units: tuple[type[torch.nn.Module], ...], device: torch.device
) -> None:
    """FSDP2 in place: each submodule of a ``units`` type is one unit (its weights gathered
    while it runs, then freed), the rest of ``module`` the root unit [FSDP]. The mesh is
    ``device``'s type, so CPU processes shard over gloo on a machine with GPUs too."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for sub in module.modules():
        if sub is not module and isinstance(sub, units):
            fully_shard(sub, mesh=mesh)
    fully_shard(module, mesh=mesh)
