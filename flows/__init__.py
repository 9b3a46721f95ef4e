"""Prefect flows that wire the DVC stages together."""
