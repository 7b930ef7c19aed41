#!/bin/bash
# Every GPU check in one call, for a device machine (no network; torch, transformers and
# huggingface_hub present, diffusers and sqlalchemy not). Fetch the wheels into .whl/ first, on a
# networked box (transformers is carried to match requirements/ci.txt; if it does not import
# there, the machine's own is used):
#   pip download --no-deps --python-version 3.12 --only-binary=:all: -d .whl \
#       diffusers==0.42.1 sqlalchemy==2.1.9 importlib_metadata transformers==5.24.0
# then run this script from the repository root with .whl/ carried along. The default stages fit
# in DEADLINE seconds (default 540, under a 10-minute device call): each stage has its own time
# limit, cut to what is left of the deadline, and its own log ($OUT/NAME.log); a failed or cut
# stage does not stop the next. Name stages to run only those:
#   smoke generate-sd15 generate-sdxl train-fp16 train-sdxl train   (the default set, in this order:
#                                                                   the later ones are cut first)
#   profile train-plain-layout                                       (only when named)
#
#   benchmarks/gpu_check.sh --cpu-smoke [STAGE...]
# runs every stage's script at tiny sizes on the CPU with the current python ($PYTHON, default
# python3), no wheels installed: the same code paths (CUDA graphs emulated; fp16 needs a GPU and
# the torch.compile peer is left out, as compiling on a CPU takes minutes). On the shared 2-core
# development box at a load average of 10-17 the five stages took 14 minutes (one training script:
# 34 s of CPU time in 2 min 50 s of wall time), hence the wide stage limits.
cpu=0
if [ "$1" = "--cpu-smoke" ]; then
    cpu=1
    shift
fi
only="$*"
OUT=${OUT:-/tmp/tihub-gpu-check}
DEADLINE=${DEADLINE:-$([ $cpu = 1 ] && echo 3000 || echo 540)}
mkdir -p "$OUT"
start=$(date +%s)
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [ $cpu = 1 ]; then
    py=${PYTHON:-python3}
    export PYTHONPATH="$PWD"
    "$py" -c 'import torch, diffusers, transformers; print("torch", torch.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__, "(CPU smoke)")' || exit 1
else
    py=python3
    export PYTHONPATH="/tmp/site:$PWD"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    probe='import torch, diffusers, transformers, sqlalchemy, tihub.engine.train; print("torch", torch.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__, "cuda", torch.version.cuda)'
    if ! python3 -c "$probe"; then
        echo "the carried transformers does not import here: using the machine's own"
        rm -rf /tmp/site/transformers /tmp/site/transformers-*.dist-info
        python3 -c "$probe" || exit 1
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
fi

# stage NAME SECONDS [optional] -- ARGS...: benchmarks/ARGS run with a time limit (cut to what is
# left of DEADLINE); the output is kept whole in $OUT/NAME.log and shown here without the
# libraries' load-time chatter. An optional stage runs only when named.
stage() {
    local name=$1 limit=$2 optional=0
    shift 2
    if [ "$1" = optional ]; then optional=1; shift; fi
    shift  # --
    if [ -n "$only" ]; then
        [[ " $only " == *" $name "* ]] || return 0
    elif [ $optional = 1 ]; then
        return 0
    fi
    local left=$((DEADLINE - ($(date +%s) - start) - 5))
    if [ $left -lt 20 ]; then
        echo "== $name skipped: ${left} s left of the ${DEADLINE} s deadline"
        return 0
    fi
    [ $limit -le $left ] || limit=$left
    echo "== $name ($(date +%T), limit ${limit} s): $*"
    timeout "$limit" "$py" "$@" 2>&1 | tee "$OUT/$name.log" | grep --line-buffered -v -e '^USDT' -e 'should be kept in float32' -e 'requires torchvision' -e '^\s*warnings.warn' -e 'Writing model shards' -e '^\[transformers\]'
    local rc=${PIPESTATUS[0]}
    [ $rc -eq 0 ] || echo "== $name ended with exit status $rc$([ $rc -eq 124 ] && echo ' (its time limit)')"
}

if [ $cpu = 1 ]; then
    q="--quick --device cpu"
    stage smoke 600 -- benchmarks/gpu_train.py --smoke --quick --device cpu
    stage generate-sd15 600 -- benchmarks/gpu_generate.py $q --arch sd15 --preview --exact-sampling
    stage generate-sdxl 600 -- benchmarks/gpu_generate.py $q --arch sdxl --preview
    stage train-sdxl 600 -- benchmarks/gpu_train.py $q --rounds 1 --arch sdxl
    stage train 600 -- benchmarks/gpu_train.py $q --rounds 1
    stage profile 120 optional -- benchmarks/gpu_train.py $q --rounds 1 --profile
else
    stage smoke 70 -- benchmarks/gpu_train.py --smoke
    stage generate-sd15 100 -- benchmarks/gpu_generate.py --arch sd15 --rounds 3 --preview --exact-sampling
    stage generate-sdxl 170 -- benchmarks/gpu_generate.py --arch sdxl --rounds 2 --preview
    stage train-fp16 45 -- benchmarks/gpu_train.py --precision fp16 --rounds 2 --steps 20
    stage train-sdxl 80 -- benchmarks/gpu_train.py --arch sdxl --rounds 2 --steps 15
    stage train 60 -- benchmarks/gpu_train.py --rounds 2
    stage profile 60 optional -- benchmarks/gpu_train.py --profile --rounds 1
    stage train-plain-layout 50 optional -- benchmarks/gpu_train.py --no-channels-last --rounds 1 --steps 20
fi
echo "== done $(date +%T), $(($(date +%s) - start)) s"
