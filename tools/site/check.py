"""`make docs-check`: the built site (reports/site/) in a real browser (Debian's headless Chromium).

Every internal link of every page resolves (the file, and the #anchor in it); on the pages that hold
math, MathJax typeset it (rendered `mjx-container` elements, no `merror`); every notebook page shows its
plots (images that exist and are not empty). Screenshots of a technique page and of the verification page
go to reports/screenshots/. Usage: python -m tools.site.check
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "reports" / "site"
SHOTS = ROOT / "reports" / "screenshots"
MATH_PAGES = ["reference/agr.html", "reference/tam.html", "reference/came_style.html", "optimized/kernels.html"]
SCREENSHOTS = {"technique-page.png": "techniques/tam.html", "verification-page.png": "verification.html"}


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.links, self.images = set(), [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "img" and attrs.get("src"):
            self.images.append(attrs["src"])


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def broken_links(pages: dict[Path, Page]) -> list[str]:
    broken = []
    for path, page in pages.items():
        for href in page.links:
            url = urlsplit(href)
            if url.scheme or href.startswith("//") or href.startswith("mailto:"):
                continue
            target = (path.parent / unquote(url.path)).resolve() if url.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{path.relative_to(SITE)}: {href} (no file)")
            elif url.fragment and target in pages and unquote(url.fragment) not in pages[target].ids:
                broken.append(f"{path.relative_to(SITE)}: {href} (no anchor)")
    return broken


def missing_images(pages: dict[Path, Page]) -> list[str]:
    out = []
    for path, page in pages.items():
        if "notebooks" not in path.parts or path.name == "index.html":
            continue
        if not page.images:
            out.append(f"{path.relative_to(SITE)}: no image")
        for src in page.images:
            if src.startswith("data:"):
                continue
            image = (path.parent / unquote(urlsplit(src).path)).resolve()
            if not image.is_file() or image.stat().st_size == 0:
                out.append(f"{path.relative_to(SITE)}: {src} missing or empty")
    return out


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit("no Chromium: install Debian's (apt-get install chromium), then run make docs-check again")


def browser(*args: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
               "--virtual-time-budget=20000", *args]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True).stdout


def math_problems(page: str) -> list[str]:
    dom = browser("--dump-dom", (SITE / page).as_uri())
    rendered = len(re.findall(r"<mjx-container", dom))
    errors = len(re.findall(r"<mjx-merror|<merror", dom))
    problems = [] if rendered else [f"{page}: no typeset math"]
    return problems + ([f"{page}: {errors} MathJax errors"] if errors else [])


def main() -> int:
    if not (SITE / "index.html").is_file():
        raise SystemExit("no site: run make docs first")
    pages = {path.resolve(): parse(path) for path in SITE.rglob("*.html")}
    problems = broken_links(pages) + missing_images(pages)
    for page in MATH_PAGES:
        problems += math_problems(page)
    SHOTS.mkdir(parents=True, exist_ok=True)
    for name, page in SCREENSHOTS.items():
        browser(f"--screenshot={SHOTS / name}", "--window-size=1400,1800", (SITE / page).as_uri())
    links = sum(len(p.links) for p in pages.values())
    print(f"{len(pages)} pages, {links} links, math on {len(MATH_PAGES)} pages checked: "
          f"{len(problems)} problems; screenshots in {SHOTS}")  # fmt: skip
    for problem in problems:
        print(" ", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
