#!/bin/sh
# Every GPU check in one call, for a device machine (no network; torch and transformers present,
# diffusers and sqlalchemy not). Fetch the missing wheels into .whl/ first, on a networked box:
#   pip download --no-deps --python-version 3.12 --only-binary=:all: -d .whl \
#       diffusers==0.42.1 sqlalchemy==2.1.9 importlib_metadata
# then run this script from the repository root with .whl/ carried along. About 9 minutes.
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "== training smoke: SD1/SDXL/v-prediction in every precision; --cuda-graphs against eager"
timeout 150 python3 benchmarks/gpu_train.py --smoke
echo "== training throughput: tihub eager, tihub --cuda-graphs, diffusers-example loop"
timeout 240 python3 benchmarks/gpu_train.py
echo "== generation throughput: tihub Engine.run against a plain diffusers pipeline"
timeout 180 python3 benchmarks/gpu_generate.py
