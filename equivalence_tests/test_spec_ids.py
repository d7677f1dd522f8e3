"""Every specification id the repository cites resolves inside it (docs/spec/), so a clone stands alone.

Ids: `I-nn` (and `I-nnx`, item (x) of I-nn) in upstream-issues.md; `Tn`, `Tna`, `Tn.m` in techniques.md (a
heading, a bold item `**Tna.`, or item m of Tn's numbered list); `On` in optimizers.md; the source ids
`S1`…`S5` (`S1e`, `S2o`, …) and `D4` in techniques.md's source table.
"""

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "docs" / "spec"
CITING = ("reference", "optimized", "equivalence_tests", "tools", "notebooks", "papers", "docs", "README.md",
          "Makefile")  # fmt: skip
ISSUE = re.compile(r"\bI-(\d{2})([a-z])?\b")
TECHNIQUE = re.compile(r"\bT(\d{1,2})(?:\.(\d{1,2})|([a-z]))?\b")
CLASS = re.compile(r"\bO(\d{1,2})\b")
SOURCE = re.compile(r"\b(S[1-5][eo]?|D4)\b")


def _spec(name: str) -> str:
    return (SPEC / name).read_text(encoding="utf-8")


def _sections(text: str, heading: re.Pattern) -> dict[str, str]:
    """Heading id → the text up to the next heading of the same pattern."""
    marks = [(m.group(1), m.start()) for m in heading.finditer(text)]
    return {key: text[start : (marks[i + 1][1] if i + 1 < len(marks) else len(text))]
            for i, (key, start) in enumerate(marks)}  # fmt: skip


ISSUES = _sections(_spec("upstream-issues.md"), re.compile(r"^### (I-\d{2}):", re.M))
TECHNIQUES_TEXT = _spec("techniques.md")
TECHNIQUES = _sections(TECHNIQUES_TEXT, re.compile(r"^## (T\d{1,2})\.", re.M))
CLASSES = set(re.findall(r"^## (O\d{1,2})\.", _spec("optimizers.md"), re.M))
SOURCES = set(re.findall(r"^\| (S\d[a-z]?|D\d) \|", TECHNIQUES_TEXT, re.M))


def _cited_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", *CITING], cwd=ROOT, capture_output=True, text=True, check=True)
    files = [ROOT / name for name in listed.stdout.split()]
    own = Path(__file__).resolve()  # its resolver cases cite ids that must not resolve
    return [f for f in files if SPEC not in f.parents and f != own and f.suffix in {".py", ".md", ".json", ""}
            and f.is_file()]  # fmt: skip


def _resolves(match: re.Match) -> bool:
    text = match.group(0)
    if text.startswith("I-"):
        section = ISSUES.get(f"I-{match.group(1)}")
        return section is not None and (match.group(2) is None or f"({match.group(2)})" in section)
    if text.startswith("T"):
        number, item, letter = match.groups()
        section = TECHNIQUES.get(f"T{number}")
        if section is None:
            return False
        if letter:  # a sub-heading or a bold item
            return re.search(rf"(^### T{number}{letter}\.|\*\*T{number}{letter}\.)", section, re.M) is not None
        if item:  # a numbered sub-heading or item m of the section's list
            return re.search(rf"(^### T{number}\.{item} |^{item}\. )", section, re.M) is not None
        return True
    if text.startswith("O"):
        return text in CLASSES
    return text in SOURCES


def citations() -> dict[str, list[str]]:
    """Unresolved id → the files that cite it."""
    missing: dict[str, list[str]] = {}
    for path in _cited_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for pattern in (ISSUE, TECHNIQUE, CLASS, SOURCE):
            for match in pattern.finditer(text):
                if not _resolves(match):
                    missing.setdefault(match.group(0), []).append(str(path.relative_to(ROOT)))
    return missing


def test_the_spec_is_inside_the_repository():
    assert len(ISSUES) >= 50 and len(TECHNIQUES) >= 27 and len(CLASSES) >= 9 and {"S1", "S5", "D4"} <= SOURCES


def test_every_cited_id_resolves():
    assert len(_cited_files()) > 100  # the scan reads the tree (~1,100 citations in 160 files on 2026-12-04)
    missing = citations()
    assert not missing, {key: sorted(set(files))[:3] for key, files in sorted(missing.items())}


def test_the_papers_map_points_into_the_spec():
    source = json.loads((ROOT / "papers" / "index.json").read_text(encoding="utf-8"))["source"]
    cited = re.findall(r"docs/spec/[\w-]+\.md", source)
    assert cited and all((ROOT / path).is_file() for path in cited)


@pytest.mark.parametrize(
    "text,resolves",
    [("[I-05]", True), ("I-11a", True), ("I-11z", False), ("I-99", False), ("T4c", True), ("T4z", False),
     ("T16.3", True), ("T27.8", True), ("T27.40", False), ("T99", False), ("O6", True), ("O42", False),
     ("S2o", True), ("S4", True)],
)  # fmt: skip
def test_the_resolver_rejects_what_the_spec_lacks(text, resolves):
    matches = [m for pattern in (ISSUE, TECHNIQUE, CLASS, SOURCE) for m in pattern.finditer(text)]
    assert len(matches) == 1 and _resolves(matches[0]) is resolves
