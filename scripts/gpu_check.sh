#!/usr/bin/env bash
# The GPU check for the NVIDIA machine that is lent from time to time (docs/BENCHMARKS.md, GPU).
# That machine has CUDA 13, PyTorch (cu130), ONNX Runtime (CPU build) and nvidia-ml-py, but no
# TensorRT and no package registry. Budget: under 8 minutes.
#
#   bash scripts/gpu_check.sh --wheels      here, once: fetch the pure-Python packages that machine
#                                           lacks (pydantic and its needs) into .whl/ for Python 3.12
#   bash scripts/gpu_check.sh [OUT_DIR]     there: install .whl/ into /tmp/site, then run
#     1. the gpu-marked tests that need no TensorRT: NVML against the real GPU, the torch backend
#        on CUDA in bf16 with and without CUDA graphs, the parity test on CUDA (TensorRT's own
#        test skips with its reason);
#     2. the throughput run: ViT-B/16 and ViT-S/16 at batch 256 (scripts/gpu_throughput.py).
# Results go to OUT_DIR (default $OUT, else a temporary directory): pytest.log, throughput.json,
# nvidia-smi.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5)

if [ "${1:-}" = "--wheels" ]; then
    exclude="$(git rev-parse --git-path info/exclude)"
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    ls .whl
    exit 0
fi

out="${1:-${OUT:-$(mktemp -d)}}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 SPOKE_ENGINE_CACHE="$out/engines"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || echo "gpu_check: nvidia-smi failed" >&2
"$PY" -c 'import torch; assert torch.cuda.is_available(), "torch sees no GPU"; print(torch.__version__, torch.cuda.get_device_name(0))'

status=0
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs \
    tests/models/test_gpu.py tests/models/test_backends.py tests/health/test_nvml.py \
    2>&1 | tee "$out/pytest.log" || status=1
timeout 200 "$PY" -m scripts.gpu_throughput --batch 256 --seconds 8 \
    --out "$out/throughput.json" || status=1
exit "$status"
