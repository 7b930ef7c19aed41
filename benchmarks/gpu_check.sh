#!/bin/bash
# Every GPU check in one call, for a device machine (no network; torch, transformers and
# huggingface_hub present, diffusers and sqlalchemy not). Fetch the wheels into .whl/ first, on a
# networked box (transformers is carried to match requirements/ci.txt; if it does not import
# there, the machine's own is used):
#   pip download --no-deps --python-version 3.12 --only-binary=:all: -d .whl \
#       diffusers==0.42.1 sqlalchemy==2.1.9 importlib_metadata transformers==5.24.0
# then run this script from the repository root with .whl/ carried along: about 5 minutes for
# every stage; name stages (train smoke generate train-plain-layout) to run only those.
# Each stage has its own time limit and log ($OUT/NAME.log when OUT is set); a failed stage does
# not stop the next.
only="$*"
OUT=${OUT:-/tmp/tihub-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="/tmp/site:$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
probe='import torch, diffusers, transformers, sqlalchemy, tihub.engine.train; print("torch", torch.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__, "cuda", torch.version.cuda)'
if ! python3 -c "$probe"; then
    echo "the carried transformers does not import here: using the machine's own"
    rm -rf /tmp/site/transformers /tmp/site/transformers-*.dist-info
    python3 -c "$probe" || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true

# stage NAME SECONDS COMMAND...: the command's output is kept whole in $OUT/NAME.log and shown
# here without the libraries' load-time chatter
stage() {
    local name=$1 limit=$2
    shift 2
    [ -z "$only" ] || [[ " $only " == *" $name "* ]] || return 0
    echo "== $name ($(date +%T), limit ${limit} s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v -e '^USDT' -e 'should be kept in float32' -e 'requires torchvision' -e '^\s*warnings.warn' -e 'Writing model shards' -e '^\[transformers\]'
    local rc=${PIPESTATUS[0]}
    [ $rc -eq 0 ] || echo "== $name ended with exit status $rc"
}

stage train 210 python3 benchmarks/gpu_train.py --profile
stage smoke 150 python3 benchmarks/gpu_train.py --smoke
stage generate 130 python3 benchmarks/gpu_generate.py
stage train-plain-layout 50 python3 benchmarks/gpu_train.py --no-channels-last --rounds 1 --steps 20
stage rng 30 python3 benchmarks/gpu_rng.py
echo "== done $(date +%T)"
