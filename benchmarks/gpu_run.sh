#!/usr/bin/env bash
# The GPU measurements: the app (a real local deployment, one SuperNode per client) against
# the plain-PyTorch loop, both on one GPU, Fashion-MNIST at the study's shard layout.
#
#   benchmarks/gpu_run.sh prepare            # here: downloads Flower's wheels into .gpu/ (ignored)
#   benchmarks/gpu_run.sh measure OUT [ROUNDS]   # on the GPU machine, with .gpu carried along
#
# The study itself on the GPU machine (the real app through Flower's simulation engine, real
# Fashion-MNIST). A call carries at most 64 MiB, the checkout included (results/ grows with every
# committed run), so the files travel in parts, one call each, on the same warm machine:
#   benchmarks/gpu_run.sh prepare-study      # here: .gpu/site.tar.xz (Flower + Ray for CPython 3.12,
#                                            # Ray without its Java jars and dashboard UI) and
#                                            # .gpu/fmnist-xz (the real images, xz-compressed), cut
#                                            # into .gpu/carry/part-KK-of-NN, each fitting a call
#                                            # beside the checkout; it prints the calls to make
#   (calls 1 .. N-1: carry one part each, command `ls .gpu/carry`; the machine keeps them)
#   benchmarks/gpu_run.sh study OUT SECONDS VARIANT SEED GPUS_PER_CLIENT
#                                            # call N, carrying the last part: joins the parts into
#                                            # .gpu/site.tar.xz and .gpu/data, then one run of
#                                            # `python -m mefl_app.experiments run` on the GPU for at
#                                            # most SECONDS; a stopped run can be continued anywhere
#                                            # (DEVICE=cpu with GPUS_PER_CLIENT 0: the same on CPUs)
#                                            # RUN_CONFIG="cohort-size=-1": further run-config
#                                            # overrides, here cohorts sized from the GPU's memory
#   benchmarks/gpu_run.sh step OUT           # a later call on the warm machine, carrying nothing:
#                                            # benchmarks/cohort_step.py on the GPU (one client's
#                                            # training step against a cohort's, eager and as a CUDA graph)
#                                            # (STEP_SIZES="8 24 96": the cohort sizes)
#
# Rehearsal on a CPU machine whose Python is not 3.12: GPU_PYTHON=3.11 builds the same files for
# that Python; then study with DEVICE=cpu runs here as it would run there.
#
# Why this shape: the GPU machine lent to sessions has PyTorch but neither Flower nor Ray, no
# internet, and receives at most 64 MiB of files a call, the checkout included. `measure`
# carries Flower's wheels (27 MB for Python 3.12) and runs a local deployment (SuperLink +
# SuperNodes, no Ray: Ray's wheel alone is 74 MB), on the real labels with random pixels
# (benchmarks/synthetic_fmnist.py: the same shards and work, meaningless accuracies). `study`
# carries Ray too, stripped and xz-compressed with Flower into 29 MB, and the real images, in parts,
# so that the run is the app's real one: simulation engine, real data.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU_DIR=.gpu
# Wheels for the GPU machine's CPython (3.12) on x86-64.
PLATFORM=(--only-binary=:all: --python-version "${GPU_PYTHON:-3.12}" --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
          --platform manylinux1_x86_64)

pins() {  # NAME==VERSION of each named package as this checkout's venv holds it
    local frozen
    frozen=$(python -m pip freeze)
    for p in "$@"; do grep -i "^${p//-/[-_]}==" <<< "$frozen" | head -1; done
}

prepare() {
    # Flower and what it imports that the GPU machine's image lacks (or holds in another
    # version), pinned to the versions of this checkout's venv; built for CPython 3.12, x86-64.
    local pkgs="flwr grpcio grpcio-health-checking protobuf cryptography cffi pycparser sqlalchemy greenlet
                alembic mako pycryptodome pydantic pydantic-core typing-inspection annotated-types fastapi
                starlette uvicorn prompt-toolkit wcwidth tomli tomli-w iterators typer click rich anyio h11
                typing-extensions"
    rm -rf "$GPU_DIR/wheels" && mkdir -p "$GPU_DIR/wheels" "$GPU_DIR/labels"
    # shellcheck disable=SC2086  # one package name per word
    python -m pip download -q --no-deps "${PLATFORM[@]}" -d "$GPU_DIR/wheels" $(pins $pkgs)
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

prepare_study() {
    local wheels site
    wheels=$(mktemp -d) site=$(mktemp -d)
    [ -d "$GPU_DIR/wheels" ] || prepare
    cp "$GPU_DIR"/wheels/*.whl "$wheels/"
    # Ray and what it needs that the GPU machine's image lacks, at this venv's versions.
    python -m pip download -q --no-deps "${PLATFORM[@]}" -d "$wheels" \
        $(pins ray jsonschema jsonschema-specifications referencing rpds-py)
    python -m pip install -q --no-deps --no-compile "${PLATFORM[@]}" --target "$site" "$wheels"/*.whl
    # What the simulation engine never loads: Ray's Java jars, dashboard UI and ML libraries.
    rm -rf "$site"/ray/{jars,dashboard/client,rllib,data,serve,tune,train,llm}
    # Symbol tables no program reads (dynamic symbols stay): a quarter of Ray's binaries, so that
    # the archive and the checkout (results/ grows with every run) fit one call's 64 MiB together.
    find "$site" -type f \( -name '*.so' -o -path '*/ray/core/src/*' \) -exec strip --strip-unneeded {} + 2> /dev/null || true
    tar cf - -C "$site" . | xz -9 -T0 > "$GPU_DIR/site.tar.xz"
    rm -rf "$wheels" "$site" "$GPU_DIR/fmnist-xz" && mkdir -p "$GPU_DIR/fmnist-xz"
    for f in /usr/share/datasets/fashion-mnist/*-idx?-ubyte.gz; do
        zcat "$f" | xz -9 -T0 > "$GPU_DIR/fmnist-xz/$(basename "$f" .gz).xz"; done
    du -sh "$GPU_DIR/site.tar.xz" "$GPU_DIR/fmnist-xz"
    cut_into_parts
}

cut_into_parts() {  # .gpu/carry/part-KK-of-NN: site.tar.xz and fmnist-xz in pieces that each fit one call
    local checkout budget count
    # What a call copies besides what it carries: tracked files and untracked ones git does not ignore.
    checkout=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | du -cb --files0-from=- | tail -1 | cut -f1)
    budget=$(( (62 << 20) - checkout ))  # 2 MiB to spare
    (( budget >= 4 << 20 )) || { echo "the checkout ($(( checkout >> 20 )) MiB) leaves no room in a call's 64 MiB" >&2; exit 1; }
    rm -rf "$GPU_DIR/carry" && mkdir -p "$GPU_DIR/carry"
    tar cf - -C "$GPU_DIR" site.tar.xz fmnist-xz | split -b "$budget" -d -a 2 - "$GPU_DIR/carry/part-"
    count=$(find "$GPU_DIR/carry" -name 'part-*' | wc -l)
    for f in "$GPU_DIR"/carry/part-*; do mv "$f" "$f-of-$(printf %02d "$count")"; done
    echo "the checkout takes $(( checkout >> 20 )) MiB of a call's 64: $count calls, each carrying one of"
    ls -la "$GPU_DIR/carry"
    echo "the last of them runs \`benchmarks/gpu_run.sh study ...\`, the others \`ls .gpu/carry\`"
}

join_parts() {  # on the GPU machine, once every part has arrived: .gpu/site.tar.xz and .gpu/data
    [ -f "$GPU_DIR/site.tar.xz" ] && [ -d "$GPU_DIR/data/FashionMNIST/raw" ] && return
    local parts expected
    parts=$(find "$GPU_DIR/carry" -name 'part-*-of-*' 2> /dev/null | sort)
    [ -n "$parts" ] || { echo "no .gpu/carry/part-*: carry them first (prepare-study says how)" >&2; exit 1; }
    expected=${parts##*-of-}
    if (( $(wc -l <<< "$parts") != 10#$expected )); then
        echo "only $(wc -l <<< "$parts") of $expected parts are here:" $parts >&2; exit 1
    fi
    cat $parts | tar xf - -C "$GPU_DIR"
    stage_data
}

stage_data() {  # where torchvision's FashionMNIST(root) looks first: root/FashionMNIST/raw
    local raw="$GPU_DIR/data/FashionMNIST/raw"
    mkdir -p "$raw"
    for f in "$GPU_DIR"/fmnist-xz/*.xz; do xz -dc "$f" > "$raw/$(basename "$f" .xz)"; done
    ls -la "$raw"
}

site_venv() {  # /tmp/venv: the image's Python and packages, with Flower and Ray from .gpu/site.tar.xz
    # A venv that sees the image's packages (PyTorch, NumPy, ...), so that Flower's and Ray's
    # programs sit beside the Python that runs them (mefl_app.processes.BIN). The image's python3
    # is itself a venv, which --system-site-packages would skip: a .pth file adds its packages,
    # after the venv's own (Flower's pins win).
    python3 -m venv --clear --without-pip /tmp/venv  # --clear: a second call on the same machine
    local site
    site=$(/tmp/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/image-packages.pth"
    xz -dc "$GPU_DIR/site.tar.xz" | tar xf - -C "$site"
    for f in "$site"/bin/*; do
        { echo "#!/tmp/venv/bin/python"; tail -n +2 "$f"; } > "/tmp/venv/bin/$(basename "$f")"
        chmod +x "/tmp/venv/bin/$(basename "$f")"
    done
    export PYTHONUNBUFFERED=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
}

study() {
    local out=$1 seconds=$2 variant=$3 seed=$4 gpus=$5
    join_parts
    site_venv
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; nproc
      /tmp/venv/bin/python -c "import torch, flwr, ray; print('torch', torch.__version__, 'flwr', flwr.__version__, 'ray', ray.__version__)"
    } 2>&1 | tee "$out/machine.txt"
    local dmon=""
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi dmon -s u -d 5 > "$out/gpu_utilization.txt" 2>&1 &
        dmon=$!
    fi
    timeout "$seconds" /tmp/venv/bin/python -m mefl_app.experiments run --task fmnist --seeds "$seed" --variants "$variant" \
        --gpus-per-client "$gpus" --out /tmp/study --run-config "data-dir='$PWD/$GPU_DIR/data' device='${DEVICE:-cuda}' ${RUN_CONFIG:-}" 2>&1 | tee "$out/experiments.log" \
        || echo "stopped after $seconds s (or failed): the run folder holds every finished round" | tee -a "$out/experiments.log"
    [ -z "$dmon" ] || kill "$dmon" || true
    tar czf "$out/study.tar.gz" --exclude .work -C /tmp study  # the run folder, checkpoint included
}

step() {
    local out=$1
    join_parts
    site_venv
    timeout 420 /tmp/venv/bin/python benchmarks/cohort_step.py --device "${DEVICE:-cuda}" --sizes ${STEP_SIZES:-8 24 96} \
        --modes eager reduce-overhead --repeats 5 --json "$out/cohort_step_gpu.json" 2>&1 | tee "$out/cohort_step.log"
}

case "${1:-}" in
    prepare) prepare ;;
    measure) shift; measure "$@" ;;
    prepare-study) prepare_study ;;
    stage-data) stage_data ;;
    study) shift; study "$@" ;;
    step) shift; step "$@" ;;
    *) echo "usage: $0 prepare | measure OUT [ROUNDS] | prepare-study | stage-data | study OUT SECONDS VARIANT SEED GPUS_PER_CLIENT | step OUT" >&2; exit 2 ;;
esac
