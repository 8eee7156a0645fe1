"""``mefl <verb>``: the command line of mefl's tools (``mefl <verb> --help`` for each verb).

    mefl study    run the study's campaign (multi-exit vs single-exit per seed), then its report
    mefl report   rewrite a study campaign's report.md and plots from its results files
    mefl compare  one Markdown table of several campaign folders' final accuracies
    mefl exits    resource-aware exit configurations side by side (all-deep / mixed / exclusive)
    mefl methods  the field's methods (DepthFL, ScaleFL, ...) side by side at mixed exit levels
    mefl shards   write one shard file per client, for real devices
    mefl deploy   a real local deployment: SuperLink + SuperNodes as separate processes
    mefl certs    a test CA, a SuperLink certificate and SuperNode key pairs
    mefl export   a trained run as TorchScript and ONNX files per exit level, plus an early-exit model
    mefl predict  an exported model's predictions, with the exit each one used
    mefl status   one line per run; exit code 0 only if every run completed

A user's mistake (a bad setting, missing data) ends with one line on stderr and exit code 2; a
campaign some of whose runs did not complete exits with code 1; one stopped by Ctrl-C or SIGTERM
says so in one line and exits with code 130.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from mefl_app.data.tensors import DataError
from mefl_app.settings import SettingsError

from . import compare, exits, export, methods, predict, report, shards, study
from .campaigns import VARIANTS, add_campaign_options, add_task_and_seeds, run_configs, run_status
from .runtime import certificates, deployment
from .runtime.processes import interrupt_on_termination


def _add_se_from(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--se-from",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="report the single-exit runs of this campaign folder (one that differs only in the"
        " distillation settings, which the single-exit model does not use)",
    )


def _campaign(args: argparse.Namespace, configs: dict[str, dict], write_report: Callable[[], Path]) -> int:
    """Run the configurations (unless ``--report-only``), then the report if any run completed."""
    failed = []
    if not getattr(args, "report_only", False):
        interrupt_on_termination()  # `kill` stops the campaign's Ray cluster and SuperLink too
        failed = run_configs(
            configs,
            args.out,
            args.clients,
            args.cpus_per_client,
            gpus_per_client=args.gpus_per_client,
            command=args.command_line,
        )
    if len(failed) < len(configs):
        print(f"report: {write_report()}")
    return _not_completed(failed)


def _study(args: argparse.Namespace) -> int:
    if args.se_from is not None and "se" in args.variants:
        raise SettingsError("--se-from takes the single-exit runs from another folder: use --variants me")
    configs = study.configs_for(args.task, args.seeds, args.variants, args.run_config)
    return _campaign(args, configs, lambda: report.write_report(args.out, args.se_from))


def _methods(args: argparse.Namespace) -> int:
    configs = methods.configs_for(args.task, args.seeds, args.methods, args.clients, args.run_config)
    return _campaign(args, configs, lambda: methods.write_report(args.out))


def _exits(args: argparse.Namespace) -> int:
    configs = exits.configs_for(args.task, args.rounds, args.clients, args.run_config)
    return _campaign(args, configs, lambda: exits.write_report(args.out))


def _not_completed(failed: list[str]) -> int:
    """Exit code 1 (and a line saying which) when some runs of a campaign did not complete."""
    if failed:
        print(f"mefl: {len(failed)} run(s) did not complete: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _status(args: argparse.Namespace) -> int:
    """One line per run; exit code 0 only if every run completed."""
    runs = []
    for folder in args.folders:
        if (folder / "runs").is_dir():  # a campaign folder: each configuration's newest attempt
            runs += sorted(p for p in (folder / "runs").iterdir() if p.is_dir())
        elif (folder / "results.json").is_file() or not any(folder.glob("*/results.json")):
            runs.append(folder)
        else:  # an output-dir: every run folder in it
            runs += sorted(p.parent for p in folder.glob("*/results.json"))
    statuses = [run_status(run) for run in runs]
    for _, line in statuses:
        print(line)
    return 0 if statuses and all(status == "completed" for status, _ in statuses) else 1


def _report(args: argparse.Namespace) -> int:
    print(f"report: {report.write_report(args.out, args.se_from)}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    print(f"comparison: {compare.write_comparison(args.folders, args.out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mefl", description="mefl's tools around the Flower app (mefl VERB --help).")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    run = verbs.add_parser(
        "study",
        help="run ME and SE for every seed (skips completed runs), then report",
        description=study.__doc__.splitlines()[0],
    )
    add_task_and_seeds(run)
    run.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    add_campaign_options(run)
    _add_se_from(run)
    run.set_defaults(handler=_study)

    rep = verbs.add_parser(
        "report",
        help="write report.md and plots from existing results (no training)",
        description=report.__doc__.splitlines()[0],
    )
    rep.add_argument("--out", type=Path, required=True, help="the campaign folder")
    _add_se_from(rep)
    rep.set_defaults(handler=_report)

    cmp = verbs.add_parser(
        "compare",
        help="one Markdown table of the final accuracies of several campaign folders",
        description=compare.__doc__.splitlines()[0],
    )
    cmp.add_argument("folders", type=Path, nargs="+", help="campaign folders")
    cmp.add_argument("--out", type=Path, required=True, help="the Markdown file to write")
    cmp.set_defaults(handler=_compare)

    ex = verbs.add_parser(
        "exits",
        help="all-deep, mixed-level and exclusive exit configurations, then their report",
        description=exits.__doc__.splitlines()[0],
    )
    ex.add_argument("--task", choices=["fmnist", "har"], default="fmnist")
    ex.add_argument("--rounds", type=int, default=10)
    add_campaign_options(ex)
    ex.add_argument("--report-only", action="store_true", help="only rewrite the report from existing results")
    ex.set_defaults(handler=_exits)

    status = verbs.add_parser(
        "status", help="one line per run; exit code 0 only if every run completed", description=_status.__doc__
    )
    status.add_argument("folders", type=Path, nargs="+", help="run folders, output-dirs or campaign folders")
    status.set_defaults(handler=_status)

    me = verbs.add_parser(
        "methods",
        help="the field's methods side by side, a third of the clients at each exit level, then the report",
        description=methods.__doc__.splitlines()[0],
    )
    methods.add_arguments(me)
    me.set_defaults(handler=_methods)

    for name, module, summary in (
        ("shards", shards, "write one shard file per client plus a manifest"),
        ("deploy", deployment, "a local deployment: SuperLink + SuperNodes as real processes"),
        ("certs", certificates, "a test CA, SuperLink certificate and SuperNode keys"),
        ("export", export, "TorchScript and ONNX files per exit level, and an early-exit model"),
        ("predict", predict, "an exported model's predictions, with the exit each one used"),
    ):
        verb = verbs.add_parser(name, help=summary, description=(module.main.__doc__ or summary).splitlines()[0])
        module.add_arguments(verb)
        verb.set_defaults(handler=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = "mefl " + shlex.join(argv)
    try:
        return args.handler(args)
    except (SettingsError, DataError) as error:
        print(f"mefl {args.verb}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM / SIGHUP (interrupt_on_termination): processes already stopped
        print(
            f"mefl {args.verb}: stopped; completed runs are kept, a stopped one is recorded as interrupted "
            "(run the same command again to continue)",
            file=sys.stderr,
        )
        return 130
