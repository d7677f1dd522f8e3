"""The paper index: which paper each technique implements, where, how it deviates, and where its code,
test and notebook are (papers/index.json)."""

from __future__ import annotations

import json
from pathlib import Path

INDEX = Path(__file__).with_name("index.json")


def load() -> list[dict]:
    return json.loads(INDEX.read_text(encoding="utf-8"))["papers"]


def by_key() -> dict[str, dict]:
    return {entry["key"]: entry for entry in load()}
