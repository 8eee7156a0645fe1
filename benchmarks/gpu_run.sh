#!/usr/bin/env bash
# Issue 6's GPU measurement: the app (a real local deployment, one SuperNode per client) against
# the plain-PyTorch loop, both on one GPU, Fashion-MNIST at the study's shard layout.
#
#   benchmarks/gpu_run.sh prepare            # here: downloads Flower's wheels into .gpu/ (ignored)
#   benchmarks/gpu_run.sh measure OUT [ROUNDS]   # on the GPU machine, with .gpu carried along
#
# Why this shape: the GPU machine lent to sessions has PyTorch but neither Flower nor Ray, no
# internet, and receives at most 64 MiB of files. Ray's wheel alone is 74 MB, so Flower's
# simulation engine cannot run there; a local deployment (SuperLink + SuperNodes, no Ray) can,
# with Flower and the packages it needs carried as wheels (27 MB for Python 3.12). Fashion-MNIST's
# images do not fit as well, so the run uses the real labels with random pixels
# (benchmarks/synthetic_fmnist.py): the same shards and work, meaningless accuracies.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU_DIR=.gpu

prepare() {
    # Flower and what it imports that the GPU machine's image lacks (or holds in another
    # version), pinned to the versions of this checkout's venv; built for CPython 3.12, x86-64.
    local pkgs="flwr grpcio grpcio-health-checking protobuf cryptography cffi pycparser sqlalchemy greenlet
                alembic mako pycryptodome pydantic pydantic-core typing-inspection annotated-types fastapi
                starlette uvicorn prompt-toolkit wcwidth tomli tomli-w iterators typer click rich anyio h11
                typing-extensions"
    local pins=()
    for p in $pkgs; do pins+=("$(python -m pip freeze | grep -i "^${p//-/[-_]}==" | head -1)"); done
    rm -rf "$GPU_DIR/wheels" && mkdir -p "$GPU_DIR/wheels" "$GPU_DIR/labels"
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$GPU_DIR/wheels" "${pins[@]}"
    cp /usr/share/datasets/fashion-mnist/*-labels-idx1-ubyte.gz "$GPU_DIR/labels/"
    du -sh "$GPU_DIR"
}

measure() {
    local out=$1 rounds=${2:-3}
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$GPU_DIR"/wheels/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PATH="/tmp/site/bin:$PATH" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
    python3 -c "import torch, flwr; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'flwr', flwr.__version__)" | tee -a "$out/gpu.txt"
    python3 benchmarks/synthetic_fmnist.py --labels "$GPU_DIR/labels" --out /tmp/fmnist
    python3 benchmarks/app_vs_plain.py --engine deployment --task fmnist --data-dir /tmp/fmnist --clients 24 \
        --rounds "$rounds" --run-config "device='cuda'" --json "$out/app_vs_plain_fmnist_gpu.json" 2>&1 | tee "$out/app_vs_plain.log"
}

case "${1:-}" in
    prepare) prepare ;;
    measure) shift; measure "$@" ;;
    *) echo "usage: $0 prepare | measure OUT [ROUNDS]" >&2; exit 2 ;;
esac
