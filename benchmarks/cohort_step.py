"""One training step of the Fashion-MNIST ResNet per client: a client alone (the app's per-client
step: its model, ``multi_exit_loss``, PyTorch's SGD) against its share of a cohort's step
(``cohort.CohortResNet``, ``cohort_multi_exit_loss``, the cohort's stacked SGD), eager and under
``torch.compile`` -- on a GPU also ``mode="reduce-overhead"``, which replays the step as a CUDA
graph. Every client has a full batch (no padding, no data gathering), so this is the batched
step's own speed; ``cohort_train.py`` measures whole epochs on the study's ragged shards.

    python benchmarks/cohort_step.py --sizes 4 8 24 --json OUT.json            # the CPU, 1 thread
    python benchmarks/cohort_step.py --device cuda --sizes 8 24 96 --json OUT.json
    python benchmarks/cohort_step.py --profile 8      # where a cohort of 8's eager step spends its time

Arms are interleaved over the repeats (these machines are noisy); medians; compilation happens
in the warm-up, outside the timing, and its seconds are reported beside.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance, write_json  # noqa: E402

from mefl_app.cohort import CohortResNet, cohort_multi_exit_loss, sgd_step  # noqa: E402
from mefl_app.model.loss import multi_exit_loss  # noqa: E402
from mefl_app.settings import RunSettings  # noqa: E402
from mefl_app.task import initial_model  # noqa: E402

SHAPE, CLASSES = (1, 28, 28), 10


def client_step(settings: RunSettings, device: torch.device) -> Callable[[], None]:
    """``train.train_local``'s step on one batch."""
    model = initial_model(settings, CLASSES, SHAPE).to(device)
    model.train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.learning_rate, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    x = torch.randn(settings.batch_size, *SHAPE, device=device)
    y = torch.randint(0, CLASSES, (settings.batch_size,), device=device)
    weights = settings.loss_weights(model.num_exits)

    def step() -> None:
        loss = multi_exit_loss(
            model(x),
            y,
            distill_weight=settings.distill_weight,
            temperature=settings.distill_temperature,
            teacher=settings.distill_teacher,
            exit_weights=weights,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()

    return step


def cohort_step(settings: RunSettings, k: int, device: torch.device, mode: str) -> Callable[[], None]:
    """``cohort.train_cohort``'s step for K clients with full batches; ``mode``: eager, or a
    ``torch.compile`` mode for the whole step (forward, loss, backward, SGD)."""
    cohort = CohortResNet([initial_model(settings, CLASSES, SHAPE) for _ in range(k)]).to(device)
    cohort.train()
    params = list(cohort.parameters())
    buffers = [torch.zeros_like(p) for p in params]
    x = torch.randn(k, settings.batch_size, *SHAPE, device=device)
    y = torch.randint(0, CLASSES, (k, settings.batch_size), device=device)
    mask = torch.ones(k, settings.batch_size, device=device)
    weights = settings.loss_weights(cohort.num_exits)

    def step() -> None:
        losses = cohort_multi_exit_loss(
            cohort(x),
            y,
            mask,
            distill_weight=settings.distill_weight,
            temperature=settings.distill_temperature,
            teacher=settings.distill_teacher,
            exit_weights=weights,
        )
        for p in params:
            p.grad = None
        losses.sum().backward()
        with torch.no_grad():
            sgd_step(params, buffers, settings)

    return step if mode == "eager" else torch.compile(step, mode=None if mode == "default" else mode)


def seconds_per_step(step: Callable[[], None], steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def profile(step: Callable[[], None], steps: int, device: torch.device) -> None:
    """torch.profiler's self-time table of ``steps`` steps, after a warm-up."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    seconds_per_step(step, 3, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profiler(activities=activities) as prof:
        seconds_per_step(step, steps, device)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 24], help="cohort sizes K")
    parser.add_argument("--modes", nargs="+", help="eager, default (torch.compile), reduce-overhead (CUDA graphs)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=int, metavar="K", help="print the operator profile of a cohort of K and stop")
    args = parser.parse_args()
    device = torch.device(args.device)
    modes = args.modes or (["eager", "default", "reduce-overhead"] if device.type == "cuda" else ["eager", "default"])
    if device.type == "cpu":
        torch.set_num_threads(1)  # the app's layout: one thread per simulated client
    torch.manual_seed(0)
    settings = RunSettings.from_run_config({})
    if args.profile:
        profile(cohort_step(settings, args.profile, device, "eager"), args.steps, device)
        return 0
    arms: dict[str, tuple[Callable[[], None], int]] = {"one client": (client_step(settings, device), 1)}
    for k in args.sizes:
        for mode in modes:
            arms[f"cohort of {k}, {mode}"] = (cohort_step(settings, k, device, mode), k)
    warmup = {}
    for name, (step, _) in arms.items():
        started = time.perf_counter()
        seconds_per_step(step, 3, device)
        warmup[name] = time.perf_counter() - started
        print(f"warm-up {name}: {warmup[name]:.1f} s", flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    for repeat in range(args.repeats):
        for name, (step, _) in arms.items():
            seconds[name].append(seconds_per_step(step, args.steps, device))
        print(f"repeat {repeat + 1} of {args.repeats} done", flush=True)
    per_client_ms = {name: 1000 * statistics.median(seconds[name]) / k for name, (_, k) in arms.items()}
    base = per_client_ms["one client"]
    rows = {
        name: {
            "clients": k,
            "ms_per_client_step": per_client_ms[name],
            "ratio_to_one_client": per_client_ms[name] / base,
            "warmup_s": warmup[name],
        }
        for name, (_, k) in arms.items()
    }
    print(f"{'arm':<32} {'ms per client-step':>18} {'ratio':>6} {'warm-up s':>9}")
    for name, row in rows.items():
        ms, ratio, warm = row["ms_per_client_step"], row["ratio_to_one_client"], row["warmup_s"]
        print(f"{name:<32} {ms:>18.2f} {ratio:>6.2f} {warm:>9.1f}")
    if args.json:
        result = {
            **provenance(f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""),
            "batch": settings.batch_size,
            "seconds_per_step": seconds,
            "arms": rows,
        }
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
