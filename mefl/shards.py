"""``mefl shards``: write the shards of a run config, one file per client plus a manifest, so that
each real device can be handed just its own data (node config ``shard-file=...``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mefl_app.data.shards import write_shards
from mefl_app.settings import RunSettings, SettingsError
from mefl_app.task import load_task_data

from . import APP_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-partitions", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for client_NNN.npz and manifest.json")
    parser.add_argument(
        "--run-config", default="", help="overrides as for flwr run, e.g. \"task='har' dirichlet-alpha=0.5\""
    )
    parser.add_argument(
        "--app-dir", default=str(APP_DIR), help="the app's folder, whose pyproject.toml holds the defaults"
    )


def main(args: argparse.Namespace) -> int:
    """Write every client's shard file and manifest.json."""
    if args.num_partitions < 1:
        raise SettingsError(f"--num-partitions must be >= 1, got {args.num_partitions}")
    settings = RunSettings.from_app_dir(args.app_dir, args.run_config)
    data = load_task_data(settings)
    manifest = write_shards(data, settings, args.num_partitions, args.out)
    print(f"wrote {args.num_partitions} shards and {manifest}")
    return 0
