"""Tiny offline models for tests, benchmarks and the demo. Never imported by the runtime path."""
