#!/usr/bin/env bash
# Every check and timing of one lent-GPU session, in one run of at most ~8 minutes:
#
#   OUT=results bash benchmarks/cuda_session.sh [TEXT_CACHE]
#   DEVICE=cpu TINY=1 bash benchmarks/cuda_session.sh   # a dry run at ci sizes, any machine
#
# Run from the repository root on a CUDA machine whose python3 has torch. The toy text
# encoder's embeddings come from TEXT_CACHE (made beforehand with
# `python benchmarks/cuda_checks.py --prepare-text-cache DIR`) where the MiniLM package is
# missing. The benchmarks' peers (diffusers, video-diffusion-pytorch) must be importable.
# `ivref generate` writes its video with mediapy, which needs IPython and imageio-ffmpeg there.
# Each step has its own time limit, and a failing step does not stop the others. Results, five
# files (a lent machine returns few): OUT/cuda_checks.json, OUT/unet_step_cuda.json,
# OUT/train_throughput_cuda.json, OUT/generate_ci.gif and OUT/log.txt (docs/benchmarks.md,
# "On a CUDA GPU").
set -u
OUT=${OUT:-cuda_results}
CACHE=${1:-}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
dev=${DEVICE:-cuda}
cache=()
[ -n "$CACHE" ] && cache=(--text-cache "$CACHE")
tiny=()
[ -n "${TINY:-}" ] && tiny=(--tiny)
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
    # The CLI on the device, at ci scale (random tiny-t5 text encoder: nothing to load)
    step 60 "ivref train --device $dev" $py -m ivref.cli train --scale ci --stage base \
        --steps 6 --eval-every 3 --eval-samples 4 --device $dev --out "$tmp/base"
    step 30 "ivref export" $py -m ivref.cli export "$tmp/base" --out "$tmp/cascade"
    step 60 "ivref evaluate --device $dev" $py -m ivref.cli evaluate --checkpoint "$tmp/cascade" \
        --split heldout --steps 4 --device $dev
    step 60 "ivref generate --device $dev" $py -m ivref.cli generate "a red circle moving left" \
        --checkpoint "$tmp/cascade" --steps 2 --device $dev --out "$OUT/generate_ci.gif"
    step 60 "ivref distill --device $dev" $py -m ivref.cli distill --stage base \
        --from "$tmp/cascade" --out "$tmp/distill" --guided-steps 4 --halving-steps 4 --device $dev
    # The library on the device, with the shipped toy cascade
    step 200 "cuda_checks equivalence attention evaluate" $py benchmarks/cuda_checks.py \
        --device $dev --out "$OUT" "${cache[@]}" "${tiny[@]}" --parts equivalence attention evaluate
    step 120 "unet_step" $py benchmarks/unet_step.py --device $dev "${tiny[@]}" \
        --json "$OUT/unet_step_cuda.json"
    step 90 "train_throughput" $py benchmarks/train_throughput.py --device $dev \
        --matmul-size 8192 --paper-base 16 "${tiny[@]}" --json "$OUT/train_throughput_cuda.json"
    step 75 "cuda_checks distill" $py benchmarks/cuda_checks.py --device $dev --out "$OUT" \
        "${cache[@]}" "${tiny[@]}" --parts distill --distill-steps 100
    step 150 "cuda_checks train" $py benchmarks/cuda_checks.py --device $dev --out "$OUT" \
        "${cache[@]}" "${tiny[@]}" --parts train --train-seconds 120 --eval-every 500
    rm -rf "$tmp"
} 2>&1 | tee "$OUT/log.txt"
