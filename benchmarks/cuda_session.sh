#!/usr/bin/env bash
# Every check and timing that needs a CUDA GPU, in runs of at most ~10 minutes each:
#
#   OUT=results bash benchmarks/cuda_session.sh [TEXT_CACHE]             # every part
#   ONLY="throughput compiled" OUT=results bash benchmarks/cuda_session.sh [TEXT_CACHE]
#   DEVICE=cpu TINY=1 bash benchmarks/cuda_session.sh   # a dry run at ci sizes, any machine
#
# ONLY picks parts by name, in this order: cli (the CLI on the device at ci scale), checks
# (cuda_checks equivalence, attention, evaluate), peers (unet_step), peers-compiled (the same at
# the toy base and TSR with every model compiled: CUDA graphs for all), throughput (the toy
# base's step eager and compiled, paper base MFU), distill (the toy base's phases eager;
# `ivref distill --compile` at ci scale), compiled (the toy base
# trained 3,000 steps with --compile: the 60 s target), cascade (the whole toy cascade trained
# from scratch, compiled, then scored), eager (the toy base trained without --compile, 120 s).
# What no GPU has run yet: ONLY="cli throughput compiled" (~8 min) and ONLY=cascade (~10 min:
# four compilations of ~1 min, 290 s of training, scoring). 15 minutes on a GPU machine,
# start-up included (2-4 min), hold one of them: ONLY="cli compiled" (~7 min) answers the
# 3,000-step target and the CLI on the device; ONLY=cascade also times every stage's
# compiled steps (the base's rate gives its 3,000-step time) and scores the cascade.
# Run from the repository root on a CUDA machine whose python3 has torch. The toy
# text encoder's embeddings come from TEXT_CACHE (made beforehand with
# `python benchmarks/cuda_checks.py --prepare-text-cache DIR`) where the MiniLM package is
# missing. The benchmarks' peers (diffusers, video-diffusion-pytorch) must be importable.
# `ivref generate` writes its video with mediapy, which needs IPython and imageio-ffmpeg there:
# a folder .whl of wheels in the repository root (carried to the machine) is installed first.
# Fill it where pip reaches PyPI (Python 3.12 there; matplotlib, numpy, Pillow, psutil and
# Pygments are already on the machine), ~35 MB:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform any -d .whl mediapy imageio-ffmpeg==0.7.0 \
#     ipython ipython-pygments-lexers jedi parso matplotlib-inline traitlets pexpect ptyprocess \
#     prompt_toolkit wcwidth stack_data executing asttokens pure_eval
# Each step has its own time limit, and a failing step does not stop the others. Results:
# OUT/cuda_checks.json, OUT/unet_step_cuda.json, OUT/train_throughput_cuda.json,
# OUT/generate_ci.gif and OUT/log.txt (docs/benchmarks.md, "On a CUDA GPU").
set -u
OUT=${OUT:-cuda_results}
CACHE=${1:-}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then  # carried wheels (above) into their own folder
    site=$(mktemp -d)
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
        .whl/*.whl && export PYTHONPATH=$PYTHONPATH:$site
fi
dev=${DEVICE:-cuda}
cache=()
[ -n "$CACHE" ] && cache=(--text-cache "$CACHE")
tiny=()
[ -n "${TINY:-}" ] && tiny=(--tiny)
parts="cli checks peers peers-compiled throughput distill compiled cascade eager"
for part in ${ONLY:-}; do  # a misspelt part would run nothing and waste the device's time
    [[ " $parts " == *" $part "* ]] || { echo "unknown part '$part'; allowed: $parts" >&2; exit 2; }
done
want() {  # want PART: is PART in ONLY (or ONLY unset)?
    [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]
}
step() {  # step SECONDS NAME COMMAND...: run with a limit, report the exit status and time
    local limit=$1 name=$2 start=$SECONDS
    shift 2
    echo "== $(date +%T) $name (limit ${limit}s)"
    timeout --signal=TERM --kill-after=15 "$limit" "$@"
    echo "== $name: exit $? after $((SECONDS - start)) s"
}
{
    [ "$dev" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    $py -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
    tmp=$(mktemp -d)
    checks=($py benchmarks/cuda_checks.py --device $dev --out "$OUT" "${cache[@]}" "${tiny[@]}")
    if want cli; then  # the CLI on the device, at ci scale (random tiny-t5 text encoder)
        step 60 "ivref train --device $dev" $py -m ivref.cli train --scale ci --stage base \
            --steps 6 --eval-every 3 --eval-samples 4 --device $dev --out "$tmp/base"
        step 30 "ivref export" $py -m ivref.cli export "$tmp/base" --out "$tmp/cascade"
        step 60 "ivref evaluate --device $dev" $py -m ivref.cli evaluate \
            --checkpoint "$tmp/cascade" --split heldout --steps 4 --device $dev
        step 60 "ivref generate --device $dev" $py -m ivref.cli generate \
            "a red circle moving left" --checkpoint "$tmp/cascade" --steps 2 --device $dev \
            --out "$OUT/generate_ci.gif"
        step 60 "ivref distill --device $dev" $py -m ivref.cli distill --stage base \
            --from "$tmp/cascade" --out "$tmp/distill" --guided-steps 4 --halving-steps 4 \
            --device $dev
    fi
    want checks && step 200 "cuda_checks equivalence attention evaluate" "${checks[@]}" \
        --parts equivalence attention evaluate
    want peers && step 120 "unet_step" $py benchmarks/unet_step.py --device $dev "${tiny[@]}" \
        --json "$OUT/unet_step_cuda.json"
    want peers-compiled && step 300 "unet_step, every model compiled" $py benchmarks/unet_step.py \
        --device $dev --sizes base tsr --compile "${tiny[@]}" \
        --json "$OUT/unet_step_cuda_compiled.json"
    want throughput && step 180 "train_throughput, base eager and compiled" \
        $py benchmarks/train_throughput.py --device $dev --matmul-size 8192 --paper-base 16 \
        --stages base --compile "${tiny[@]}" --json "$OUT/train_throughput_cuda.json"
    if want distill; then  # the toy base, eager; then the CLI's --compile at ci scale
        step 75 "cuda_checks distill" "${checks[@]}" --parts distill --distill-steps 100
        step 60 "ivref train (ci, a teacher)" $py -m ivref.cli train --scale ci \
            --stage base --steps 2 --device $dev --out "$tmp/teacher"
        step 30 "ivref export" $py -m ivref.cli export "$tmp/teacher" --out "$tmp/teachers"
        step 300 "ivref distill --compile --device $dev" $py -m ivref.cli distill --stage base \
            --from "$tmp/teachers" --out "$tmp/distill-compiled" --to-steps 8 --guided-steps 50 \
            --halving-steps 50 --device $dev --compile
        for phase in guided halve-0016-0008; do  # steps/s per phase, the first one compiled
            cp "$tmp/distill-compiled/$phase/log.jsonl" "$OUT/distill_compiled_$phase.jsonl"
        done
    fi
    want compiled && step 330 "cuda_checks train, compiled, 3000 steps" "${checks[@]}" \
        --parts train --compile --train-steps 3000 --train-seconds 180 --eval-every 3000
    want cascade && step 580 "cuda_checks cascade, compiled" "${checks[@]}" --parts cascade \
        --compile --cascade-seconds 290
    want eager && step 150 "cuda_checks train, eager" "${checks[@]}" --parts train \
        --train-seconds 120 --eval-every 500
    rm -rf "$tmp"
} 2>&1 | tee "$OUT/log.txt"
