"""mefl's tools around the Flower app: campaigns, reports, shard files, local deployment, certificates.

Installed by the same ``pip install`` as the app, never shipped in the app bundle that ``flwr run``
sends. One command, ``mefl <verb>`` (see cli.py).
"""

from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[1]  # the Flower app (its pyproject.toml) the tools run
