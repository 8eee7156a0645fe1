"""Alias: ``python -m mefl_app.exit_experiments run|report`` is ``mefl exits [--report-only]``."""

if __name__ == "__main__":
    import mefl.aliases

    mefl.aliases.run_alias({"run": "exits", "report": "exits --report-only"})
