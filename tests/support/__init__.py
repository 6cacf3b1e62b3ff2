"""Test support: the in-process stack, the real-process stack, the Temporal harness, helpers."""
