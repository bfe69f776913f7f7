"""Processor adapters: one module per processor behind the types in `base`."""
