"""The ``python -m mefl_app.<module>`` commands that results/ records as provenance, mapped onto
``mefl <verb>`` so that they keep working (the alias modules are left out of the app bundle)."""

from __future__ import annotations

import sys

from .cli import main


def run_alias(verbs: dict[str, str] | str) -> None:
    """Exit with ``mefl``'s result for this process's arguments: ``verbs`` maps the old module's
    sub-command to a verb (``{"run": "study"}``), or names the one verb the module was."""
    argv = sys.argv[1:]
    if isinstance(verbs, str):
        sys.exit(main([verbs, *argv]))
    old, *rest = argv or ["--help"]
    verb = verbs.get(old)
    if verb is None:
        sys.exit(f"use one of {', '.join(verbs)} (now: mefl {' | '.join(verbs.values())})")
    sys.exit(main(verb.split() + rest))
