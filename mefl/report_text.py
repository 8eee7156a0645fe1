"""Wording shared by every report: the three kinds of accuracy, and the tuning-mode warning."""

from __future__ import annotations

KIND_TITLES = {
    "personalized": "personalized (each client's model after local training, its local test part)",
    "global_local": "global model on the clients' local test parts",
    "central": "global model on the central test set",
}


def tuning_note(run_config: dict) -> list[str]:
    """Runs in tuning mode score validation parts, not test parts: the report must say so."""
    if float(run_config.get("validation-fraction", 0.0)) <= 0:
        return []
    return [
        "**Tuning runs** (`validation-fraction` > 0): wherever the tables below say *local test part*, read"
        " the client's *validation part*, cut from its local training data; the central test set is not"
        " scored. These numbers choose settings; they are not results on test data.",
        "",
    ]
