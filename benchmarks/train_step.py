"""Micro-benchmark of one client's local training step: eager vs channels-last vs torch.compile vs
bfloat16 autocast (AMX on recent Xeons), 1 vs 2 torch threads, for the default models. Variants
are interleaved over several repeats (these machines are noisy) and reported as the median ratio
to plain eager in the same run.

    python benchmarks/train_step.py --task fmnist --repeats 5
    python benchmarks/train_step.py --task fmnist --profile     # where one eager step's time goes
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mefl_app.model.loss import multi_exit_loss
from mefl_app.settings import RunSettings
from mefl_app.task import build_model

SHAPES = {"fmnist": ((1, 28, 28), 10), "har": ((151, 3), 12)}


def make_step(task: str, variant: str, batch: int):
    settings = RunSettings(task=task, channels_last=False)  # the variant decides the layout
    shape, classes = SHAPES[task]
    torch.manual_seed(0)
    model = build_model(settings, classes, shape)
    x, y = torch.randn(batch, *shape), torch.randint(0, classes, (batch,))
    if "channels_last" in variant:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if "compile" in variant else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    bf16 = "bf16" in variant

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(x)
        loss = multi_exit_loss([z.float() for z in logits], y, distill_weight=0.5, temperature=3.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_step(step, steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


def profile_step(task: str, batch: int, steps: int) -> None:
    """torch.profiler's self-CPU-time table of ``steps`` eager training steps at 1 thread."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    step = make_step(task, "eager", batch)
    time_step(step, 5)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        time_step(step, steps)
    print(f"task={task} batch={batch} steps={steps} threads=1")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="fmnist", choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--variants", default="eager,channels_last,compile,channels_last+compile,bf16,channels_last+bf16"
    )
    parser.add_argument("--profile", action="store_true", help="print the operator profile of eager steps and stop")
    args = parser.parse_args()
    if args.profile:
        profile_step(args.task, args.batch, args.steps)
        return
    variants = args.variants.split(",")
    results: dict[tuple[str, int], list[float]] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        steps = {v: make_step(args.task, v, args.batch) for v in variants}
        for step in steps.values():  # warm-up (and compilation) outside the timing
            time_step(step, 5)
        for _ in range(args.repeats):
            for v, step in steps.items():
                results.setdefault((v, threads), []).append(time_step(step, args.steps))
    base = statistics.median(results[("eager", 1)])
    print(f"task={args.task} batch={args.batch} steps={args.steps} repeats={args.repeats}")
    for (v, threads), times in results.items():
        median = statistics.median(times)
        print(
            f"{v:>24} threads={threads}: {median / args.batch * 1e6:7.0f} us/sample  "
            f"ratio to eager/1 thread {median / base:.2f}"
        )


if __name__ == "__main__":
    main()
