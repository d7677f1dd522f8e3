"""The study site: `make docs` (build.py) and `make docs-check` (check.py)."""
