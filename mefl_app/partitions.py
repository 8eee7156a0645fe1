"""Alias: ``python -m mefl_app.partitions`` is ``mefl shards``."""

if __name__ == "__main__":
    import mefl.aliases

    mefl.aliases.run_alias("shards")
