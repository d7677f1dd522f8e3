"""`make docs`: the study site, built from the repository alone into reports/site/.

Per paper entry of papers/index.json a page (citation, what is implemented, deviations, the reference
functions linked into their annotated module, the fast functions' source, the test, the notebook, the
verification rows); every reference and optimized module annotated side by side (comments as typeset math
beside the code); every notebook executed now (notebooks.run_all: the build fails if one fails); the
specification (docs/spec/) with an anchor per id; the verification and benchmark reports where `make verify`
and `make bench` wrote them. Sources are generated into build/site/; Sphinx (myst-nb, offline MathJax) renders
them with warnings as errors. Usage: python -m tools.site.build [--no-execute]
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import papers as paper_index

from .annotate import anchor_id, annotate

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "build" / "site"
OUT = ROOT / "reports" / "site"
REPORTS = ROOT / "reports"
SPEC_IDS = re.compile(r"^(#{2,3}) (I-\d{2}|T\d{1,2}[a-z]?|T\d{1,2}\.\d{1,2}|O\d{1,2})[.:]? ", re.M)
CITED_ID = re.compile(r"\[?\b(I-\d{2}[a-z]?)\b\]?")


def _headed_ids() -> set[str]:
    return {m[2] for path in (ROOT / "docs" / "spec").glob("*.md") for m in SPEC_IDS.finditer(path.read_text("utf-8"))}


def label(spec_id: str) -> str:
    """The Sphinx label of a spec id's paragraph: I-05 → spec-i-05, T4a → spec-t4a, T16.3 → spec-t16-3; an id
    that is an item rather than a heading (T9a, T27.4, I-11a) → its section's."""
    if spec_id not in HEADED:
        spec_id = re.match(r"I-\d{2}|T\d{1,2}|O\d{1,2}", spec_id)[0]
    return "spec-" + spec_id.lower().replace(".", "-")


HEADED = _headed_ids()


def cite(text: str) -> str:
    """`[I-nn]` and `I-nn` in MyST text → a link to the id's paragraph in the specification."""
    return CITED_ID.sub(lambda m: f"{{ref}}`{m[0]} <{label(m[1])}>`", text)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def module_file(dotted_module: str) -> Path:
    return ROOT / (dotted_module.replace(".", "/") + ".py")


def split_dotted(dotted: str) -> tuple[str, str]:
    """reference.agr.agr → ("reference.agr", "agr"); optimized.hina_adamw.Class.method → (…hina_adamw, Class.method)."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 1, -1):
        if module_file(".".join(parts[:cut])).is_file():
            return ".".join(parts[:cut]), ".".join(parts[cut:])
    for path in sorted((ROOT / parts[0]).glob("*.py")):  # a name the package re-exports: where it is defined
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(getattr(node, "name", None) == parts[1] for node in tree.body):
            return f"{parts[0]}.{path.stem}", ".".join(parts[1:])
    raise ValueError(f"{dotted}: no module file")


def defined_as(module: str, name: str) -> str:
    """The def or class that holds `name`'s code: itself, or for `main_pass = compiled(_main_pass)` the wrapped one."""
    for node in ast.parse(module_file(module).read_text(encoding="utf-8")).body:
        if not (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]):
            continue
        call = node.value
        if isinstance(call, ast.Call) and call.args and isinstance(call.args[0], ast.Name):
            return call.args[0].id
    return name


def code_link(dotted: str) -> str:
    module, name = split_dotted(dotted)
    name = defined_as(module, name)
    package, stem = module.split(".", 1)
    return f'<a href="../{package}/{stem}.html#{anchor_id(f"{module}.{name}")}"><code>{dotted}</code></a>'


def literal(path: Path, pyobject: str | None, caption: str) -> str:
    rel = Path("/") / Path("../..") / path.relative_to(ROOT)  # from the source dir (build/site) to the repo
    option = f":pyobject: {pyobject}\n" if pyobject else ""
    return f"```{{literalinclude}} {rel.as_posix()}\n:language: python\n{option}:caption: {caption}\n```\n"


# --- the verification report ---------------------------------------------------------------------------


def verification_rows() -> list[list[str]]:
    path = REPORTS / "verification.md"
    if not path.is_file():
        return []
    rows = [line.strip().strip("|").split(" | ") for line in path.read_text(encoding="utf-8").splitlines()
            if line.startswith("| ") and not line.startswith("| check") and not line.startswith("| ---")]  # fmt: skip
    return [[cell.strip() for cell in row] for row in rows if len(row) == 6]


def row_paper(row: list[str], papers: list[dict]) -> str | None:
    """The paper entry a verification row checks: by its technique case, else by the technique id it names."""
    name = row[0]
    for entry in papers:
        if entry.get("case") and name.endswith(entry["case"]):
            return entry["key"]
    ids = set(re.findall(r"\bT\d{1,2}[a-z]?\b", f"{row[0]} {row[1]}"))
    for entry in papers:
        if entry["technique"] in ids:
            return entry["key"]
    return None


def spec_link(source: str) -> str:
    """`optimizers.md O6, T19c` → the cells' ids linked into the specification."""
    return re.sub(r"\b(O\d{1,2}|T\d{1,2}[a-z]?)\b", lambda m: f"{{ref}}`{m[1]} <{label(m[1])}>`", source)


def table(rows: list[list[str]], papers: list[dict], page_prefix: str) -> str:
    """The report's rows, the verdict and the figures it rests on first (the page is narrower than the table)."""
    out = ["| check | result | max rel err | tolerance | max abs err | paper / source |", "|" + " --- |" * 6]
    for row in rows:
        key = row_paper(row, papers)
        check = f"[{row[0]}]({page_prefix}{key}.md)" if key else row[0]
        abs_err, rel_err, tolerance, result = row[2:]
        out.append("| " + " | ".join([check, result, rel_err, tolerance, abs_err, spec_link(row[1])]) + " |")
    return "\n".join(out) + "\n"


# --- pages ------------------------------------------------------------------------------------------------


def paper_page(entry: dict, rows: list[list[str]], papers: list[dict]) -> str:
    key, technique = entry["key"], entry["technique"]
    techniques = re.findall(r"T\d{1,2}[a-z]?", technique)
    spec = ", ".join(f"{{ref}}`{t} <{label(t)}>`" for t in techniques) or technique
    byline = f"**Technique** {spec} · {', '.join(entry['authors'])} · {entry['venue']} {entry['year']}"
    lines = [f"(paper-{key})=", f"# {entry['title'].split(' (later')[0]}", "", f"{byline} · <{entry['url']}>", "",
             "## Implemented", "", cite(entry["implemented"]), "", "## Deviations", ""]  # fmt: skip
    lines += [f"- {cite(d)}" for d in entry["deviations"]]
    lines += ["", "## Reference (annotated)", ""] + [f"- {code_link(d)}" for d in entry["reference"]]
    if entry.get("paper_algorithm"):
        own = f"The paper's own algorithm: {cite(entry['paper_algorithm'])}"
        lines += ["", f"{own}; oracle: {entry.get('oracle', '')}."]
    lines += ["", "## Fast path", ""]
    if entry["optimized"]:
        for dotted in entry["optimized"]:
            module, name = split_dotted(dotted)
            source = literal(module_file(module), defined_as(module, name), dotted)
            lines += [f"{code_link(dotted)} (annotated)", "", source]
    else:
        lines.append(entry.get("optimized_not_needed", ""))
    lines += ["", "## Test", ""]
    for field in ("test", "optimized_test", "oracle_test"):
        if entry.get(field):
            path, _, func = entry[field].partition("::")
            lines.append(literal(ROOT / path, func, entry[field]))
    notebooks = [entry["notebook"]] + ([entry["paper_notebook"]] if entry.get("paper_notebook") else [])
    lines += ["", "## Notebook", ""] + [f"- {{doc}}`../notebooks/{Path(n).stem}`" for n in notebooks]
    mine = [row for row in rows if row_paper(row, papers) == key]
    lines += ["", "## Verification", ""]
    lines.append(table(mine, papers, "") if mine else "No row of `make verify`'s report names this technique yet"
                 + (" (run `make verify`)." if not rows else "."))  # fmt: skip
    return "\n".join(lines) + "\n"


def module_page(path: Path) -> str:
    package, name = path.parent.name, path.stem
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    first = docstring.split("\n\n")[0].replace("\n", " ")
    html = annotate(path, f"{package}.{name}")
    return f"# `{package}/{name}.py`\n\n{cite(first)}\n\n```{{raw}} html\n{html}\n```\n"


def index_page(title: str, intro: str, entries: list[tuple[str, str]]) -> str:
    toc = "\n".join(doc for doc, _ in entries)
    listing = "\n".join(f"- {{doc}}`{doc}`{(' — ' + text) if text else ''}" for doc, text in entries)
    return f"# {title}\n\n{intro}\n\n{listing}\n\n```{{toctree}}\n:hidden:\n\n{toc}\n```\n"


def spec_page(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    text = SPEC_IDS.sub(lambda m: f"({label(m[2])})=\n{m[0]}", text)
    # citations inside the spec link to their paragraph too (not inside code spans or the heading labels)
    out = []
    for line in text.splitlines():
        if line.startswith("(spec-") or line.startswith("#"):
            out.append(line)
        else:
            parts = line.split("`")
            out.append("`".join(cite(p) if i % 2 == 0 else p for i, p in enumerate(parts)))
    return "\n".join(out) + "\n"


def build_sources(papers: list[dict]) -> int:
    if SRC.exists():
        shutil.rmtree(SRC)
    rows = verification_rows()
    for entry in papers:
        write(SRC / "techniques" / f"{entry['key']}.md", paper_page(entry, rows, papers))
    write(SRC / "techniques" / "index.md", index_page(
        "Techniques", "One page per paper entry of `papers/index.json`: paper → annotated code → test → notebook → "
        "verification.", [(e["key"], e["title"].split(" (later")[0]) for e in papers]))  # fmt: skip
    for package in ("reference", "optimized"):
        modules = sorted(p for p in (ROOT / package).glob("*.py") if p.name != "__init__.py")
        for path in modules:
            write(SRC / package / f"{path.stem}.md", module_page(path))
        intro = (
            "Readable, paper by paper: each comment beside the lines it explains, equations typeset."
            if package == "reference"
            else "The fast path: the compiled passes and their host side."
        )
        write(SRC / package / "index.md", index_page(f"`{package}/`", intro, [(p.stem, "") for p in modules]))
    executed = sorted((REPORTS / "notebooks").glob("*.ipynb"))
    for nb in executed:
        (SRC / "notebooks").mkdir(parents=True, exist_ok=True)
        shutil.copy(nb, SRC / "notebooks" / nb.name)
    write(SRC / "notebooks" / "index.md", index_page(
        "Notebooks", "Every notebook, executed by this build (`python -m notebooks.run_all`).",
        [(nb.stem, "") for nb in executed]))  # fmt: skip
    specs = sorted((ROOT / "docs" / "spec").glob("*.md"))
    for path in specs:
        write(SRC / "spec" / path.name, spec_page(path))
    write(SRC / "spec" / "layout.md", (ROOT / "docs" / "layout.md").read_text(encoding="utf-8"))
    write(SRC / "spec" / "index.md", index_page(
        "Specification", "What the code cites: `Tn` techniques, `On` optimizer classes, `[I-nn]` upstream issues.",
        [(p.stem, "") for p in specs] + [("layout", "the fast path's data layout")]))  # fmt: skip
    verification = (table(rows, papers, "techniques/") if rows else "`make verify` has not written "
                    "reports/verification.md in this checkout: run it, then `make docs`.\n")  # fmt: skip
    write(SRC / "verification.md", "# Verification report\n\nOptimized vs reference, from `make verify` "
          "(reports/verification.md); each row links to its technique's page.\n\n" + verification)  # fmt: skip
    bench = REPORTS / "bench.md"
    bench_text = bench.read_text(encoding="utf-8").split("\n", 1)[1] if bench.is_file() else (
        "`make bench` has not written reports/bench.md in this checkout.\n")  # fmt: skip
    if (REPORTS / "bench.png").is_file():
        shutil.copy(REPORTS / "bench.png", SRC / "bench.png")
        bench_text += "\n![make bench](bench.png)\n"
    write(SRC / "bench.md", "# Benchmarks\n\n" + bench_text)
    readme_intro = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## ")[0].split("\n", 1)[1]
    write(SRC / "index.md", index_page("cameamp-lab", readme_intro.strip(), [
        ("techniques/index", "paper → annotated code → fast kernel → test → notebook → verification"),
        ("reference/index", "the readable implementation, annotated"), ("optimized/index", "the fast path"),
        ("notebooks/index", "executed notebooks"), ("spec/index", "the specification"),
        ("verification", "make verify"), ("bench", "make bench")]))  # fmt: skip
    return sum(1 for _ in SRC.rglob("*.md")) + len(executed)


def main(argv: list[str]) -> int:
    if "--no-execute" not in argv:
        subprocess.run([sys.executable, "-m", "notebooks.run_all"], cwd=ROOT, check=True)
    pages = build_sources(paper_index.load())
    if OUT.exists():
        shutil.rmtree(OUT)
    subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q", "-c",
                    str(Path(__file__).parent), str(SRC), str(OUT)], cwd=ROOT, check=True)  # fmt: skip
    print(f"{pages} pages: {OUT / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
