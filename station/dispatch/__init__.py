"""Sending series batches to destinations: one module per destination type."""
