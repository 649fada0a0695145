"""Run the notebooks top to bottom and store them with their outputs, free of what changes from run to run.

    python notebooks/execute.py [--fast] [--timeout SECONDS] [NAME ...]

Full mode (the default) loads the models ``bench/saliency_results.py`` trained, where it did, and trains the others
in the notebook for seconds (each notebook says which); ``--fast`` is the test suite's mode (``CVATTN_NOTEBOOK_FAST=1``).
NAMEs (``bird_focus`` or ``bird_focus.ipynb``) pick notebooks; default: every ``notebooks/*.ipynb``.

A stored notebook keeps its cells' outputs and their execution counts and nothing else that varies: no widget state,
no per-cell timings, no output metadata, consecutive prints in one stream. Its metadata records the mode and a hash
of each code cell's source, so that ``tests/test_notebooks.py`` can tell outputs of the current code from stale ones.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from PIL import Image

NOTEBOOKS = Path(__file__).resolve().parent
ROOT = NOTEBOOKS.parent
MAX_BYTES = 2_000_000   # a stored notebook's size limit, figures included
WIDGET = "application/vnd.jupyter.widget-view+json"


def source_hashes(notebook: nbformat.NotebookNode) -> list[str]:
    """A short hash of each code cell's source, in order: what the stored outputs were computed from."""
    return [hashlib.sha256(cell.source.encode()).hexdigest()[:16] for cell in notebook.cells
            if cell.cell_type == "code"]


def environment(fast: bool) -> dict[str, str]:
    """The kernel's environment: the mode, one thread per process when fast (2 threads on 2 shared cores run
    several times slower), and this checkout first on the import path; the variables that point a notebook at
    other data or checkpoints are left out, so that a stored notebook shows what the repository computes."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("CVATTN_NOTEBOOK_FAST", "CVATTN_CHECKPOINTS", "CVATTN_IMAGE_FOLDER", "CVATTN_DATA_DIR")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    if fast:
        env["CVATTN_NOTEBOOK_FAST"] = "1"
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def execute(path: Path, fast: bool, timeout: int = 1800) -> nbformat.NotebookNode:
    """``path`` executed in ``notebooks/`` in the given mode (the file is not written)."""
    notebook = nbformat.read(path, as_version=4)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environment(fast))     # the kernel inherits this process's environment
    try:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3", coalesce_streams=True,
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return notebook


def clean(notebook: nbformat.NotebookNode, mode: str) -> nbformat.NotebookNode:
    """``notebook`` without what varies between runs of the same code (module docstring), marked with ``mode``."""
    language = notebook.metadata.get("language_info", {}).get("name", "python")
    notebook.metadata = nbformat.NotebookNode(
        kernelspec=notebook.metadata.get("kernelspec", {"display_name": "Python 3", "language": "python",
                                                        "name": "python3"}),
        language_info={"name": language},
        cvattn={"mode": mode, "sources": source_hashes(notebook)})
    for cell in notebook.cells:
        cell.metadata = nbformat.NotebookNode()
        for output in cell.get("outputs", []):
            if "metadata" in output:
                output.metadata = nbformat.NotebookNode()
            data = output.get("data", {})
            data.pop(WIDGET, None)
            if "image/png" in data:
                data["image/png"] = small_png(data["image/png"])
    return notebook


def small_png(data: str) -> str:
    """A base64 PNG as a 256-colour palette PNG when that is smaller (a quarter of the bytes, typically, for the
    overlays' smooth colour maps), else unchanged."""
    raw = base64.b64decode(data)
    buffer = io.BytesIO()
    Image.open(io.BytesIO(raw)).convert("RGB").quantize(256).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode() + "\n" if buffer.tell() < len(raw) else data


def machine_paths(notebook: nbformat.NotebookNode) -> list[str]:
    """Outputs that name a folder of this machine (this checkout, the home or temporary folders)."""
    home = str(Path.home())
    found = []
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            text = output.get("text", "") + "".join(v for k, v in output.get("data", {}).items()
                                                    if k.startswith("text/") and isinstance(v, str))
            for folder in (str(ROOT), home, "/tmp/"):
                if folder in text:
                    found.append(f"cell {index}: {folder}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="notebooks to run (default: all)")
    parser.add_argument("--fast", action="store_true", help="the test suite's fast mode (CVATTN_NOTEBOOK_FAST=1)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds a cell may run")
    args = parser.parse_args(argv)
    every = sorted(NOTEBOOKS.glob("*.ipynb"))
    paths = every
    if args.names:
        by_name = {path.stem: path for path in every}
        unknown = [name for name in args.names if name.removesuffix(".ipynb") not in by_name]
        if unknown:
            parser.error(f"no notebook {', '.join(unknown)} in notebooks/; there are: {', '.join(by_name)}.")
        paths = [by_name[name.removesuffix(".ipynb")] for name in args.names]
    mode = "fast" if args.fast else "full"
    failed = []
    for path in paths:
        start = time.perf_counter()
        notebook = clean(execute(path, args.fast, args.timeout), mode)
        nbformat.write(notebook, path)
        size = path.stat().st_size
        print(f"{path.name}: executed in {mode} mode in {time.perf_counter() - start:.0f} s, {size / 1e6:.2f} MB",
              flush=True)
        problems = machine_paths(notebook) + ([f"{size} bytes > {MAX_BYTES}"] if size > MAX_BYTES else [])
        if problems:
            print(f"{path.name}: fix before committing: {'; '.join(problems)}", file=sys.stderr)
            failed.append(path.name)
        notices = [index for index, cell in enumerate(notebook.cells) for output in cell.get("outputs", [])
                   if output.get("name") == "stderr"]
        if notices:
            print(f"{path.name}: cells {sorted(set(notices))} print to stderr (warnings?): have a look", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
