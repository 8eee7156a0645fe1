"""Alias: ``python -m mefl_app.certificates`` is ``mefl certs``."""

if __name__ == "__main__":
    import mefl.aliases

    mefl.aliases.run_alias("certs")
