"""Declarative cases and runners shared by the tests and `make verify` (no test module imports another)."""
