"""Server-side wrappers around a Flower strategy: tracking, exit levels, polling, the run folder."""
