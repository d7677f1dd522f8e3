"""Execute every notebook (jupytext percent-format .py) in a fresh kernel; fail if any fails.

One notebook per core at a time (most of a notebook's time is its kernel starting and importing torch),
each kernel with one torch thread: two kernels of two threads each on two cores ran the heavier notebooks
5–9× slower than alone (OpenMP threads spinning for a core).
Executed copies go to reports/notebooks/. Usage: python -m notebooks.run_all [name ...]
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = ROOT / "reports" / "notebooks"
SKIP = {"run_all.py", "__init__.py"}


def notebooks(names=()):
    paths = sorted(p for p in HERE.glob("*.py") if p.name not in SKIP)
    return [p for p in paths if not names or p.stem in names]


def execute(path: Path) -> float:
    nb = jupytext.read(path)
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    OUT.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, OUT / f"{path.stem}.ipynb")
    return time.perf_counter() - start


def main() -> int:
    os.environ["PYTHONPATH"] = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the kernels
    paths = notebooks(sys.argv[1:])
    failed = []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        runs = {pool.submit(execute, path): path for path in paths}
        for run in as_completed(runs):
            path = runs[run]
            try:
                print(f"notebook {path.stem:28} {run.result():6.1f} s", flush=True)
            except Exception:
                failed.append(path.stem)
                print(f"notebook {path.stem:28} FAILED\n{traceback.format_exc()}", flush=True)
    print(f"{len(paths) - len(failed)} passed, {len(failed)} failed {failed if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
