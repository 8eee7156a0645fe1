#!/usr/bin/env bash
# Every experiment whose results are committed under results/, in the order they were run on the
# 2-core build machine. Each step is resumable (completed runs are skipped) and commits its
# results as soon as they exist, so an interrupted session loses at most the run in progress.
#
#   FMNIST_DIR=~/.cache/mefl/data HAPT_DIR=/work/shared/data/hapt-shar results/run_all.sh
#
# OUT_REPO: the checkout that receives (and commits) the results; default: this one. Running the
# script from a second, frozen worktree keeps the code of a long campaign fixed while work on
# the main checkout goes on.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_REPO=${OUT_REPO:-$(pwd)}
. "${VENV:-.venv}/bin/activate"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
FMNIST_DIR=${FMNIST_DIR:-$HOME/.cache/mefl/data}
HAPT_DIR=${HAPT_DIR:-/work/shared/data/hapt-shar}
HAR_SETTINGS="data-dir='$HAPT_DIR' learning-rate=0.05 max-grad-norm=1.0"

commit() {  # commit a results folder (retrying while another git command holds the index)
    for _ in 1 2 3 4 5 6; do
        git -C "$OUT_REPO" add "$1" && git -C "$OUT_REPO" commit -q -m "$2" -- "$1" && return 0
        sleep 10
    done
    echo "warning: could not commit $1" >&2
}

campaign() {  # task, out, seeds..., then --run-config value
    local task=$1 out=$2 config=$3; shift 3
    for seed in "$@"; do
        python -m mefl_app.experiments run --task "$task" --seeds "$seed" --out "$OUT_REPO/$out" --run-config "$config"
        commit "$out" "results: $task campaign, seed $seed (ME and SE, 24 clients, 50 rounds)"
    done
}

# Issue 6: the app against the plain-PyTorch loop (needs the machine to itself).
mkdir -p "$OUT_REPO/benchmarks/results"
python benchmarks/app_vs_plain.py --task fmnist --data-dir "$FMNIST_DIR" --clients 24 --rounds 2 --json "$OUT_REPO/benchmarks/results/app_vs_plain_fmnist.json"
python benchmarks/app_vs_plain.py --task har --data-dir "$HAPT_DIR" --clients 24 --rounds 2 \
    --run-config "learning-rate=0.05 max-grad-norm=1.0" --json "$OUT_REPO/benchmarks/results/app_vs_plain_har.json"
commit benchmarks/results "benchmarks: app vs plain PyTorch, measured"

# Issue 7 (first seed), then issues 4 and 8, then the remaining seeds.
campaign fmnist results/fmnist "data-dir='$FMNIST_DIR'" 0
for strategy in "fedprox proximal-mu=0.01" "fedavgm server-momentum=0.9" "fedadam"; do
    name=${strategy%% *}
    python -m mefl_app.experiments run --task fmnist --variants me --seeds 0 --out "$OUT_REPO/results/strategies/$name" \
        --run-config "data-dir='$FMNIST_DIR' num-server-rounds=10 strategy='$name' ${strategy#"$name"}"
    commit "results/strategies/$name" "results: strategy $name, 10 rounds"
done
python -m mefl_app.exit_experiments run --task fmnist --rounds 10 --out "$OUT_REPO/results/exits" --run-config "data-dir='$FMNIST_DIR'"
commit results/exits "results: resource-aware exits comparison, 10 rounds"
campaign har results/har "$HAR_SETTINGS" 0 1 2
campaign fmnist results/fmnist "data-dir='$FMNIST_DIR'" 1 2
