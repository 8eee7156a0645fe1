"""Alias: ``python -m mefl_app.experiments run|report|compare`` is ``mefl study|report|compare``."""

if __name__ == "__main__":
    import mefl.aliases

    mefl.aliases.run_alias({"run": "study", "report": "report", "compare": "compare"})
