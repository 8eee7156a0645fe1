#!/usr/bin/env bash
# Runs every campaign under results/ (results/README.md lists them) with the run-config file of
# each in conf/. Resumable: a run whose folder already holds a completed results.json is skipped,
# and one that stopped part-way continues from its last finished round, so running the script
# again after an interruption loses at most one round. It never runs git.
#
#   results/run_all.sh                   # study, tuning and ablations, in that order
#   results/run_all.sh study ablations   # only these sections (also: tuning, benchmarks)
#
# Data: the conf files name data-dir. Fashion-MNIST: ~/.cache/mefl/data (downloaded there on
# first use, or Debian's dataset-fashion-mnist package). HAR: the conf/*/har*.toml and
# conf/tuning/har/*.toml files point at the HAPT windows in UniMiB-SHAR's layout that the
# project's own campaigns used (/work/shared/data/hapt-shar); edit their data-dir to point at
# your UniMiB-SHAR `data` folder. HAPT_DIR does the same for the benchmarks section.
#
# Model checkpoints (*.pt) and logs are not kept in git; a completed results.json is what makes
# a run count as done, so a fresh clone skips every run and only rewrites the reports. To
# regenerate a run's checkpoint, delete its runs/<variant>-seed<seed>/ folder and run again.
set -euo pipefail
cd "$(dirname "$0")/.."
. "${VENV:-.venv}/bin/activate"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
HAPT_DIR=${HAPT_DIR:-/work/shared/data/hapt-shar}
SECTIONS=${*:-study tuning ablations}
wants() { [[ " $SECTIONS " == *" $1 "* ]]; }

if wants study; then
    # The study's scale: 24 clients, Dirichlet alpha 0.2, 50 rounds, 5 local epochs.
    # HAR with distillation (C = 0.5), then without (C = 0: the final HAR campaign, seeds 0-6).
    mefl study --task har --seeds 0 1 2 --out results/study/har-distill-0.5 \
        --run-config conf/study/har-distill-0.5.toml
    mefl study --task har --seeds 0 1 2 3 4 5 6 --out results/study/har-no-distill \
        --run-config conf/study/har-no-distill.toml
    # Early exits at half weight; the single-exit model ignores loss weights, so its runs are
    # those of results/study/har-no-distill.
    mefl study --task har --variants me --seeds 0 1 2 --out results/study/har-no-distill-exit-weights-0.5-0.5-1 \
        --run-config conf/study/har-no-distill-exit-weights-0.5-0.5-1.toml --se-from results/study/har-no-distill
    # Why the multi-exit LSTM trailed with C = 0.5: how hard gradient clipping bites each model
    # (needs the two runs' model.pt).
    [ -f results/study/har-distill-0.5/grad_clipping.json ] || python benchmarks/grad_clipping.py \
        results/study/har-distill-0.5/runs/me-seed0 results/study/har-distill-0.5/runs/se-seed0 \
        --json results/study/har-distill-0.5/grad_clipping.json
    # Fashion-MNIST with pyproject's defaults (C = 0.5): multi-exit seed 0, single-exit seeds 0-3
    # (the single-exit runs of both Fashion-MNIST campaigns).
    mefl study --task fmnist --seeds 0 --out results/study/fmnist-distill-0.5 \
        --run-config conf/study/fmnist-distill-0.5.toml
    mefl study --task fmnist --variants se --seeds 1 2 3 --out results/study/fmnist-distill-0.5 \
        --run-config conf/study/fmnist-distill-0.5.toml
    # Without distillation (C = 0): the final Fashion-MNIST campaign, multi-exit seeds 0-3.
    mefl study --task fmnist --variants me --seeds 0 1 2 3 --out results/study/fmnist-no-distill \
        --run-config conf/study/fmnist-no-distill.toml --se-from results/study/fmnist-distill-0.5
fi

if wants tuning; then
    # Settings chosen on validation data (validation-fraction = 0.2), seed 0, never the central
    # test set. HAR, 50 rounds: clipping at norm 1 (both models) and 3, then C = 0, C = 0 with
    # the early exits at half weight, and C = 0 again on the code that aggregates replies in
    # partition order (the reference for the half weights; the first C = 0 run predates it).
    # (clip-1 and clip-3 first ran 15 rounds and were extended to 50 from their round-15
    # checkpoints; a fresh run goes to 50 directly.)
    mefl study --task har --seeds 0 --out results/tuning/har/clip-1 --run-config conf/tuning/har/clip-1.toml
    for name in clip-3 no-distill no-distill-exit-weights-0.5-0.5-1 no-distill-partition-order; do
        mefl study --task har --variants me --seeds 0 --out "results/tuning/har/$name" \
            --run-config "conf/tuning/har/$name.toml"
    done
    # Fashion-MNIST, 20 rounds: C = 0 and C = 0.5, the single-exit reference, then C = 0 with the
    # early exits at half weight.
    for name in no-distill distill-0.5; do
        mefl study --task fmnist --variants me --seeds 0 --out "results/tuning/fmnist/$name" \
            --run-config "conf/tuning/fmnist/$name.toml"
    done
    mefl study --task fmnist --variants se --seeds 0 --out results/tuning/fmnist/single-exit \
        --run-config conf/tuning/fmnist/single-exit.toml
    mefl study --task fmnist --variants me --seeds 0 --out results/tuning/fmnist/no-distill-exit-weights-0.5-0.5-1 \
        --run-config conf/tuning/fmnist/no-distill-exit-weights-0.5-0.5-1.toml
    mefl compare results/tuning/fmnist/no-distill results/tuning/fmnist/distill-0.5 \
        results/tuning/fmnist/no-distill-exit-weights-0.5-0.5-1 results/tuning/fmnist/single-exit \
        --out results/tuning/fmnist/comparison.md
    # DepthFL on Fashion-MNIST, 20 rounds, a third of the clients at each exit level: mefl's SGD,
    # DepthFL's own (lr 0.1, no momentum, weight decay 1e-3), and its loss aggregated by FedAvg.
    for name in depthfl depthfl-own-sgd depthfl-fedavg; do
        mefl study --task fmnist --variants me --seeds 0 --out "results/tuning/fmnist/$name" \
            --run-config "conf/tuning/fmnist/$name.toml"
    done
fi

if wants ablations; then
    # Four of Flower's strategies, Fashion-MNIST, multi-exit, seed 0, 10 rounds of 2 local epochs
    # (not the study's 5, to fit one session on a 2-core machine). FedAvgM and FedAdam keep server
    # state that a checkpoint lacks: a stopped run of theirs starts over.
    for name in fedavg fedprox-mu-0.01 fedavgm-momentum-0.9 fedadam; do
        mefl study --task fmnist --variants me --seeds 0 --out "results/ablations/strategies/$name" \
            --run-config "conf/ablations/strategies/$name.toml"
    done
    mefl compare results/ablations/strategies/fedavg results/ablations/strategies/fedprox-mu-0.01 \
        results/ablations/strategies/fedavgm-momentum-0.9 results/ablations/strategies/fedadam \
        --out results/ablations/strategies/comparison.md
    # Resource-aware exits: all clients at the deepest exit, a third at each exit level (partial
    # training and upload), and only the deepest third training; 10 rounds, 2 local epochs.
    mefl exits --task fmnist --rounds 10 --out results/ablations/resource-aware-exits \
        --run-config conf/ablations/resource-aware-exits.toml
fi

if wants benchmarks; then
    # The app against the plain-PyTorch loop (needs the machine to itself; benchmarks/RESULTS.md).
    mkdir -p benchmarks/results
    [ -f benchmarks/results/app_vs_plain_fmnist.json ] || python benchmarks/app_vs_plain.py --task fmnist \
        --data-dir ~/.cache/mefl/data --clients 24 --rounds 2 --json benchmarks/results/app_vs_plain_fmnist.json
    [ -f benchmarks/results/app_vs_plain_har.json ] || python benchmarks/app_vs_plain.py --task har \
        --data-dir "$HAPT_DIR" --clients 24 --rounds 2 --compare-polling \
        --run-config "learning-rate=0.05 max-grad-norm=1.0" --json benchmarks/results/app_vs_plain_har.json
fi
