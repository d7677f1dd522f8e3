"""A Python module as labml-style side-by-side HTML: each run of full-line comments beside the code under it,
the equations among them typeset (MathJax), every function and class an anchor `module-qualname`."""

from __future__ import annotations

import ast
import html
import re
from pathlib import Path

from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

# Unicode math as written in our comments → LaTeX
SYMBOLS = {
    "α": r"\alpha", "β": r"\beta", "γ": r"\gamma", "δ": r"\delta", "ε": r"\varepsilon", "ζ": r"\zeta",
    "η": r"\eta", "θ": r"\theta", "κ": r"\kappa", "λ": r"\lambda", "μ": r"\mu", "ν": r"\nu", "ξ": r"\xi",
    "π": r"\pi", "ρ": r"\rho", "σ": r"\sigma", "τ": r"\tau", "φ": r"\varphi", "χ": r"\chi", "ψ": r"\psi",
    "ω": r"\omega", "Γ": r"\Gamma", "Δ": r"\Delta", "Θ": r"\Theta", "Λ": r"\Lambda", "Π": r"\Pi",
    "Σ": r"\sum", "Φ": r"\Phi", "Ψ": r"\Psi", "Ω": r"\Omega", "∇": r"\nabla", "·": r"\cdot ", "×": r"\times ",
    "←": r"\leftarrow ", "→": r"\rightarrow ", "⇒": r"\Rightarrow ", "≤": r"\le ", "≥": r"\ge ", "≠": r"\ne ",
    "≈": r"\approx ", "≪": r"\ll ", "≫": r"\gg ", "−": "-", "⊙": r"\odot ", "⊘": r"\oslash ", "∘": r"\circ ",
    "‖": r"\|", "⟨": r"\langle ", "⟩": r"\rangle ", "∞": r"\infty ", "∈": r"\in ", "∉": r"\notin ",
    "∀": r"\forall ", "∑": r"\sum ", "∏": r"\prod ", "…": r"\ldots ", "±": r"\pm ", "⌈": r"\lceil ",
    "⌉": r"\rceil ", "⌊": r"\lfloor ", "⌋": r"\rfloor ", "∧": r"\wedge ", "∨": r"\vee ", "¬": r"\neg ",
    "𝒢": r"\mathcal{G}", "ℓ": r"\ell ", "∂": r"\partial ", "⊤": r"\top ", "ᵀ": r"^{\top}", "½": r"\tfrac{1}{2}",
    "{": r"\{", "}": r"\}", "%": r"\%", "#": r"\#", "&": r"\&", "$": r"\$", "~": r"\sim ", "^": r"\hat{}",
    "_": r"\_", "\\": r"\backslash ",
}  # fmt: skip
SUPERSCRIPTS = dict(zip("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺ⁿᵗ", "0123456789-+nt", strict=True))
SUBSCRIPTS = dict(zip("₀₁₂₃₄₅₆₇₈₉ₜₖᵢ", "0123456789tki", strict=True))
ACCENTS = {"\u0303": r"\tilde", "\u0302": r"\hat", "\u0304": r"\bar", "\u0307": r"\dot"}
MATH_MARKS = set("←=≤≥Σ√⊙·‖∇²") | {"rsqrt("}
IDENT = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*")
PROSE = re.compile(r"[A-Za-z]{2,}(?: [A-Za-z']{2,})+\b")  # two or more words: upright text, spaces kept


def _identifier(word: str) -> str:
    """x → x; x1 → x_{1}; v_t → v_{t}; a word → \\mathrm{word}."""
    head, sep, tail = word.partition("_")
    if len(head) == 1 and sep and tail and "_" not in tail:
        return f"{head}_{{{_identifier(tail) if len(tail) > 1 else tail}}}"
    if len(word) == 1:
        return word
    letters = re.fullmatch(r"([A-Za-z])(\d+)", word)
    if letters:
        return f"{letters[1]}_{{{letters[2]}}}"
    return r"\mathrm{" + word.replace("_", r"\_") + "}"


def _script_run(text: str, i: int) -> tuple[str, int]:
    """The run of superscript (or subscript) characters at text[i] as ^{…} (_{…}), and where it ends."""
    table, marker = (SUPERSCRIPTS, "^") if text[i] in SUPERSCRIPTS else (SUBSCRIPTS, "_")
    j = i
    while j < len(text) and text[j] in table:
        j += 1
    return marker + "{" + "".join(table[c] for c in text[i:j]) + "}", j


def to_latex(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        prose, word = PROSE.match(text, i), IDENT.match(text, i)
        if ch in "_^" and text[i + 1 : i + 2] == "{":  # LaTeX-style group already written: v_{t−1}
            depth, j = 0, i + 1
            while j < len(text):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    break
                j += 1
            out.append(f"{ch}{{{to_latex(text[i + 2 : j])}}}")
            i = j + 1
        elif prose and (i == 0 or not text[i - 1].isalnum()):
            out.append(r"\text{ " + prose[0] + " }")
            i = prose.end()
        elif word:
            out.append(_identifier(word[0]))
            i = word.end()
        elif ch in SUPERSCRIPTS or ch in SUBSCRIPTS:
            latex, i = _script_run(text, i)
            out.append(latex)
        elif ch in ACCENTS and out:
            out[-1] = f"{ACCENTS[ch]}{{{out[-1]}}}"
            i += 1
        elif ch == "√":  # √(…) or √x̄: the radicand is the group or the token that follows
            j = i + 1
            if text[j : j + 1] == "(":
                depth = 0
                while j < len(text):
                    depth += {"(": 1, ")": -1}.get(text[j], 0)
                    j += 1
                    if depth == 0:
                        break
                radicand = text[i + 2 : j - 1]
            else:
                word = IDENT.match(text, j)
                j = word.end() if word else j + 1
                while j < len(text) and text[j] in ACCENTS:
                    j += 1
                radicand = text[i + 1 : j]
            out.append(rf"\sqrt{{{to_latex(radicand)}}}")
            i = j
        elif ch.isdigit() and out and out[-1] in {SYMBOLS[g] for g in "αβγδεηθλμρστ"}:
            j = i
            while j < len(text) and text[j].isdigit():
                j += 1
            out.append("_{" + text[i:j] + "}")
            i = j
        else:
            out.append(SYMBOLS.get(ch, ch if ord(ch) < 128 else rf"\text{{{ch}}}"))
            i += 1
    return "".join(out)


def _is_math(segment: str) -> bool:
    return any(mark in segment for mark in MATH_MARKS)


def render_note(text: str) -> str:
    """One comment line: its equations (segments split at ';') as inline math, the rest as text."""
    parts = []
    for segment in re.split(r"(;\s+)", text):
        if not _is_math(segment) or segment.startswith(";"):
            parts.append(html.escape(segment))
            continue
        label, colon, rest = segment.partition(": ")
        if colon and not _is_math(label):  # "T13: v ← …" or "confidence: U = …"
            parts.append(html.escape(label + colon))
            segment = rest
        parts.append(r'<span class="math notranslate nohighlight">\(' + html.escape(to_latex(segment)) + r"\)</span>")
    return "".join(parts)


def _anchors(tree: ast.Module, module: str) -> dict[int, str]:
    """First line of each def/class → its anchor id (module-Class-method)."""
    out = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}.{child.name}"
                out[min([child.lineno] + [d.lineno for d in child.decorator_list])] = anchor_id(name)
                visit(child, name)

    visit(tree, module)
    return out


def anchor_id(dotted: str) -> str:
    return dotted.replace(".", "-").lower()


def annotate(path: Path, module: str) -> str:
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    anchors = _anchors(tree, module)
    lines = source.splitlines()
    blocks: list[tuple[list[str], list[tuple[int, str]]]] = []  # (comment lines, numbered code lines)
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        is_comment = stripped.startswith("#") and not stripped.startswith("#!")
        if is_comment and (not blocks or blocks[-1][1]):
            blocks.append(([], []))
        if not blocks:
            blocks.append(([], []))
        if is_comment:
            blocks[-1][0].append(stripped.lstrip("#").strip())
        else:
            blocks[-1][1].append((number, line))
    rows = []
    for notes, code in blocks:
        note_html = "<br>".join(render_note(n) for n in notes if n and not n.startswith("fmt:"))
        code_html = []
        for number, line in code:
            body = highlight(line, PythonLexer(), HtmlFormatter(nowrap=True)).rstrip("\n") or " "
            ident = f' id="{anchors[number]}"' if number in anchors else ""
            code_html.append(f'<span class="line"{ident}>{body}</span>')
        rows.append(f'<div class="note">{note_html}</div><div class="code"><pre>{"".join(code_html)}</pre></div>')
    return '<div class="annotated">' + "".join(f'<div class="row">{r}</div>' for r in rows) + "</div>"
