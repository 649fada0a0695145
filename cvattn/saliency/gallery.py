"""An output folder of saliency figures that appears whole or not at all, with an ``index.html`` to browse it.

``Gallery(out, title)`` is a context manager: figures are saved as they are made (so none is held in memory) into a
hidden sibling folder ``.<out>.partial-<pid>-<random>``, which is renamed to ``out`` when the ``with`` block ends
without an error, after ``index.html`` is written; on any error (``KeyboardInterrupt`` included) the hidden folder
and the parent folders this run created are removed, so ``out`` never holds half a result. ``out`` must not exist,
or be an empty folder: no run overwrites another.

``index.html`` is static (no server, no scripts, relative links): the title, notes, tables (e.g. metrics), then one
card per figure with its caption and, if given, the top classes and their probabilities. Every text is escaped.
"""
from __future__ import annotations

import html
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

from matplotlib.figure import Figure

from cvattn.runs import unwritable_ancestor


def check_new_output(out: Path, flag: str = "--out") -> None:
    """Raise unless ``out`` can become a new output folder: absent or empty, under a writable folder."""
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        what = "a folder that is not empty" if out.is_dir() else "a file"
        raise ValueError(f"{flag} {str(out)!r} is {what}; choose a new {flag} (outputs are never overwritten) or "
                         f"remove it.")
    if problem := unwritable_ancestor(out):
        raise ValueError(f"{flag} {str(out)!r} cannot be created: {str(problem[0])!r} {problem[1]}; choose another "
                         f"{flag}.")


@dataclass
class Card:
    """One figure of the gallery: its file name, caption and top classes ``[(name, probability), ...]``."""
    file: str
    caption: str
    classes: Sequence[tuple[str, float]] = ()


@dataclass
class Table:
    caption: str
    header: Sequence[str]
    rows: Sequence[Sequence[object]]


@dataclass
class Gallery:
    """``with Gallery(out, title) as gallery:`` ``gallery.add_figure(...)``, ``add_text``, ``notes``, ``tables``;
    ``out`` appears, with ``index.html``, when the block ends without an error (module docstring)."""
    out: Path
    title: str
    notes: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    cards: list[Card] = field(default_factory=list, init=False)
    staging: Path | None = field(default=None, init=False)
    _created: list[Path] = field(default_factory=list, init=False, repr=False)   # parents made here, to undo

    def __enter__(self) -> "Gallery":
        self.out = Path(self.out)
        check_new_output(self.out)
        missing = [p for p in (self.out.parent, *self.out.parent.parents) if not p.exists()]
        for parent in reversed(missing):
            parent.mkdir()
            self._created.append(parent)
        # os.mkdir rather than tempfile.mkdtemp: the folder gets the usual permissions (umask), not 0700.
        self.staging = self.out.parent / f".{self.out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
        self.staging.mkdir()
        return self

    def add_figure(self, figure: Figure, file: str, caption: str = "",
                   classes: Sequence[tuple[str, float]] = (), dpi: int = 100) -> None:
        """Save ``figure`` as ``file`` now (the caller drops it afterwards) and list it in ``index.html``."""
        figure.savefig(self.staging / file, dpi=dpi)
        self.cards.append(Card(file, caption, list(classes)))

    def add_text(self, file: str, text: str) -> None:
        (self.staging / file).write_text(text, encoding="utf-8")

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            try:
                (self.staging / "index.html").write_text(render_html(self), encoding="utf-8")
                try:
                    if self.out.is_dir():
                        self.out.rmdir()   # empty (checked on entry); rename cannot replace a folder everywhere
                    os.rename(self.staging, self.out)
                except OSError as err:     # another run wrote to out meanwhile
                    raise ValueError(f"--out {str(self.out)!r} was created by something else while this ran "
                                     f"({err.strerror}); nothing was written. Run again with a new --out.") from None
                return
            except BaseException:
                self._discard()
                raise
        self._discard()

    def _discard(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
        for parent in reversed(self._created):
            try:
                parent.rmdir()
            except OSError:   # something else was put there meanwhile: keep it
                break


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.cards { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; border: 1px solid #ddd; padding: .5em; max-width: 100%; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: .9em; margin-top: .3em; }
ol { margin: .2em 0 0 1.2em; padding: 0; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: .2em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
"""


def _cell(value: object) -> str:
    return html.escape(f"{value:.4f}" if isinstance(value, float) else str(value))


def render_html(gallery: Gallery) -> str:
    """The page: escaped texts, links relative to the folder the page is in."""
    esc = html.escape
    lines = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{esc(gallery.title)}</title>", f"<style>{_STYLE}</style>", "</head>", "<body>",
             f"<h1>{esc(gallery.title)}</h1>"]
    lines += [f"<p>{esc(note)}</p>" for note in gallery.notes]
    for table in gallery.tables:
        lines += ["<table>", f"<caption>{esc(table.caption)}</caption>",
                  "<tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in table.header) + "</tr>"]
        lines += ["<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in table.rows]
        lines.append("</table>")
    lines.append('<div class="cards">')
    for card in gallery.cards:
        link = esc(quote(card.file))
        lines += ["<figure>", f'<a href="{link}"><img src="{link}" alt="{esc(card.caption)}" loading="lazy"></a>',
                  f"<figcaption>{esc(card.caption)}"]
        if card.classes:
            lines.append("<ol>" + "".join(f"<li>{esc(name)} {probability:.1%}</li>"
                                          for name, probability in card.classes) + "</ol>")
        lines += ["</figcaption>", "</figure>"]
    lines += ["</div>", "</body>", "</html>", ""]
    return "\n".join(lines)
