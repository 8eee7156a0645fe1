"""Alias: ``python -m mefl_app.deploy`` is ``mefl deploy``."""

if __name__ == "__main__":
    import mefl.aliases

    mefl.aliases.run_alias("deploy")
