"""Tiny local checkpoints for the quickstart and tests (no hub access needed)."""
