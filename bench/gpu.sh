#!/usr/bin/env bash
# Every GPU figure of docs/ (benchmarks, scaling) in one go, within a time budget (default 450 s of the 8 minutes
# a device check gets), each step bounded by `timeout`: `make bench-gpu` or
#
#     bash bench/gpu.sh [--tiny] [--budget SECONDS] [--archs "densenet121 resnet50"] [OUT_DIR]
#
# OUT_DIR (default $OUT, else reports/bench-gpu) gets one file per step (its whole output) and
# results.txt (every RESULT line, then the summary: data-parallel scaling efficiency, compile
# cache cold vs warm). A step that the budget cannot fit is written as "skipped"; the figures a
# one-GPU host cannot give are written as "pending: one GPU". The steps, most wanted first:
#   feed         the input pipeline alone: threads and processes, 1, 2, 4, ... workers
#   b32-fp32     both backbones, batch 32, float32: model alone, project, naive loader; JAX's
#                compilation cache empty (cold)
#   cache-warm   ResNet50 again, same shapes, the cache now filled by b32-fp32 (warm)
#   b32-bf16     batch 32, mixed_bfloat16
#   b128-fp32, b128-bf16
#   dp-N         train.distribution: data_parallel over all N GPUs, global batch 32 x N, against
#                b32-fp32's one-device rate (several GPUs only)
# No TensorFlow is needed: KERAS_BACKEND=jax. Where Keras is missing (a bare GPU image), wheels
# in .whl/ (make bench-gpu-wheels, on a machine with the index) are installed into a temporary
# folder first. --tiny runs every step at 32 px on a few images, with 10x the time limits (a CPU
# check of this script: `bash bench/gpu.sh --tiny --archs resnet50 /tmp/gpu-tiny`).
set -uo pipefail
cd "$(dirname "$0")/.."

budget="" tiny=0 archs="densenet121 resnet50" out=""
while (($#)); do
    case $1 in
        --tiny) tiny=1 ;;
        --budget) budget=$2; shift ;;
        --archs) archs=$2; shift ;;
        -*) echo "bench/gpu.sh: unknown option $1" >&2; exit 2 ;;
        *) out=$1 ;;
    esac
    shift
done
out=${out:-${OUT:-reports/bench-gpu}}
mkdir -p "$out"
py=${PYTHON:-python3}
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
if ! $py -c "import keras" 2>/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/bench-site \
        .whl/*.whl || { echo "bench/gpu.sh: Keras is missing and .whl/ could not provide it" >&2; exit 2; }
    export PYTHONPATH=/tmp/bench-site${PYTHONPATH:+:$PYTHONPATH}
fi
if ((tiny)); then
    size=32 images=48 small=8 large=16 workers=2 epochs=1
    stretch=10 budget=${budget:-7200}  # a CPU compiles for minutes where a GPU takes seconds
    # CPU: XLA's quickest compile (the tests' flags); a GPU host never runs --tiny
    export XLA_FLAGS=${XLA_FLAGS:-"--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"}
else
    size=224 images=2048 small=32 large=128 workers=$(nproc) epochs=1
    stretch=1 budget=${budget:-450}
fi
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
cache=$(mktemp -d)  # JAX's persistent cache, empty at b32-fp32: cold, then warm
data=$(mktemp -d)   # the synthetic images, drawn by the first step, read by the others
trap 'rm -rf "$cache" "$data"' EXIT
started=$SECONDS
results=$out/results.txt
: >"$results"
echo "bench/gpu.sh $(date -u +%FT%TZ) gpus=${gpus:-0} cpus=$(nproc) size=$size images=$images" \
    "budget=${budget}s commit=$(git rev-parse --short HEAD 2>/dev/null || echo -)" | tee -a "$results"

# step NAME MAX_SECONDS ARGS...: the bench under `timeout`, or "skipped" when the budget is out
step() {
    local name=$1 limit=$(($2 * stretch)) left
    shift 2
    left=$((budget - (SECONDS - started)))
    if ((left < 20)); then
        echo "$name: skipped (budget ${budget}s spent)" | tee -a "$results"
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $name (at most ${limit}s)"
    timeout --kill-after=10 "$limit" $py bench/train_throughput.py --size "$size" \
        --epochs "$epochs" --data-dir "$data" "$@" >"$out/$name.txt" 2>&1
    local code=$?
    grep '^RESULT' "$out/$name.txt" | sed "s/^RESULT /$name /" | tee -a "$results"
    ((code == 0)) || echo "$name: exit $code$( ((code == 124)) && echo ' (timed out)')" | tee -a "$results"
}

# the training's loader: processes, leaving cores to JAX's dispatch and the main thread
loader_workers=$((workers > 4 ? workers - 4 : workers))
train=(--loader processes --workers "$loader_workers" --feed-kinds processes)
step feed 120 --images "$images" --batch "$small" --workers "$workers" --feed-scaling --archs
step b32-fp32 200 --images "$images" --batch "$small" "${train[@]}" --archs $archs \
    --compile-cache "$cache"
step cache-warm 90 --images "$images" --batch "$small" "${train[@]}" --archs resnet50 --no-naive \
    --compile-cache "$cache"
step b32-bf16 150 --images "$images" --batch "$small" "${train[@]}" --archs $archs --no-naive \
    --dtype-policy mixed_bfloat16
step b128-fp32 180 --images "$images" --batch "$large" "${train[@]}" --archs $archs --no-naive
step b128-bf16 180 --images "$images" --batch "$large" "${train[@]}" --archs $archs --no-naive \
    --dtype-policy mixed_bfloat16
if ((gpus > 1)); then
    step "dp-$gpus" 200 --images "$images" --batch $((small * gpus)) "${train[@]}" \
        --archs resnet50 --no-naive --distribution data_parallel
else
    echo "dp: pending: one GPU (train.distribution: data_parallel needs a host with several)" \
        | tee -a "$results"
fi

# the summary: compile cold vs warm, and data-parallel scaling efficiency against one device
awk -v gpus="$gpus" '
    function field(name,   i, kv) { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == name) return kv[2] } }
    $1 == "b32-fp32" && field("arch") == "resnet50" { cold = field("compile_s"); cold1 = field("first_epoch_s"); one = field("project") }
    $1 == "cache-warm" { warm = field("compile_s"); warm1 = field("first_epoch_s") }
    $1 ~ /^dp-/ { many = field("project") }
    END {
        if (cold != "" && warm != "") printf "summary: resnet50 first step (compile) cache cold %.1f s, warm %.1f s; first epoch %.1f s, %.1f s\n", cold, warm, cold1, warm1
        if (many != "" && one > 0) printf "summary: data_parallel %d GPUs %.1f images/s = %.2f x one GPU, efficiency %.2f\n", gpus, many, many / one, many / (gpus * one)
    }' "$results" | tee -a "$results"
echo "bench/gpu.sh: $((SECONDS - started)) s; $results"
