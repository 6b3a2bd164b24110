"""Write walkthrough.ipynb, the notebook edition of walkthrough.md (standard library only).

    python3 docs/make_notebook.py                 # writes walkthrough.ipynb next to walkthrough.md
    python3 docs/make_notebook.py --out other.ipynb

walkthrough.md stays the one source; the notebook is generated from it and committed, and
tests/test_notebook.py checks that the committed file is what this script writes and that its
code cells run in order and print what the page shows. The conversion:

- Prose becomes markdown cells, a new cell at every chapter and section heading. Text and
  mermaid fences stay inside the markdown, as on the page.
- A figure, ``![alt](docs/figures/x.svg)``, becomes an attachment of its markdown cell (the SVG
  inside the notebook), so it shows wherever the notebook is opened.
- Each ``python`` block is cut into code cells, one per example that shows output (with the
  examples before it that show none). The ``>>>`` and ``...`` prompts go; the shown output
  becomes the cell's output: an ``execute_result`` when the example is an expression (what
  Jupyter displays), printed text otherwise. An example that shows a traceback becomes a
  ``try``/``except`` that prints the error's last line, so that "Run all" does not stop there.

Jupyter is not needed to write or test the notebook.
"""

from __future__ import annotations

import argparse
import ast
import base64
import doctest
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^```[ \t]*\n?", re.S | re.M)
HEADING = re.compile(r"#{1,3} ")
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.svg)\)")


def _lines(text):
    """A cell's source or output as Jupyter stores it: a list of lines, each keeping its newline."""
    return text.splitlines(keepends=True)


def _sections(text):
    """The prose cut before every heading that is not inside a fence."""
    parts, current, fenced = [], [], False
    for line in _lines(text):
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and HEADING.match(line) and current:
            parts.append("".join(current))
            current = []
        current.append(line)
    parts.append("".join(current))
    return parts


def _markdown_cells(text, root):
    cells = []
    for part in _sections(text):
        part = part.strip("\n")
        if not part:
            continue
        attachments = {}
        for alt, target in IMAGE.findall(part):
            name = Path(target).name
            svg = (root / target).read_bytes()
            attachments[name] = {"image/svg+xml": base64.b64encode(svg).decode("ascii")}
        part = IMAGE.sub(lambda m: f"![{m.group(1)}](attachment:{Path(m.group(2)).name})", part)
        cell = {"cell_type": "markdown", "metadata": {}, "source": _lines(part)}
        if attachments:
            cell["attachments"] = attachments
        cells.append(cell)
    return cells


def _is_expression(source):
    """True when Jupyter would display the value of the example (a bare expression, not print)."""
    body = ast.parse(source).body
    if len(body) != 1 or not isinstance(body[0], ast.Expr):
        return False
    call = body[0].value
    return not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                and call.func.id == "print")


def _example_code(example):
    """The example's source, and its shown output as (kind, text); kind is None for no output."""
    source = example.source
    if example.exc_msg is not None:  # a traceback: catch it and print its last line
        name = example.exc_msg.split(":", 1)[0].strip()
        body = "".join("    " + line for line in _lines(source))
        source = f"try:\n{body}except {name} as error:\n    print(f\"{name}: {{error}}\")\n"
        return source, ("stream", f"{example.exc_msg.rstrip()}\n")
    if not example.want:
        return source, None
    want = example.want.replace("<BLANKLINE>", "")
    return source, ("execute_result" if _is_expression(source) else "stream", want)


def _code_cells(block):
    cells, pending = [], []
    for example in doctest.DocTestParser().get_examples(block):
        source, output = _example_code(example)
        pending.append(source)
        if output is not None:
            cells.append(("".join(pending), output))
            pending = []
    if pending:
        cells.append(("".join(pending), None))
    return cells


def notebook(markdown, root=ROOT):
    """The notebook (a dict in nbformat 4) for the text of walkthrough.md."""
    cells, position, count = [], 0, 0
    for match in FENCE.finditer(markdown):
        lang, body = match.group(1), match.group(2)
        if lang not in ("python", "pycon"):
            continue  # text and mermaid fences stay in the prose
        cells += _markdown_cells(markdown[position:match.start()], root)
        position = match.end()
        for source, output in _code_cells(body):
            count += 1
            outputs = []
            if output is not None:
                kind, text = output
                if kind == "stream":
                    outputs.append({"name": "stdout", "output_type": "stream",
                                    "text": _lines(text)})
                else:
                    outputs.append({"data": {"text/plain": _lines(text.rstrip("\n"))},
                                    "execution_count": count, "metadata": {},
                                    "output_type": "execute_result"})
            cells.append({"cell_type": "code", "execution_count": count, "metadata": {},
                          "outputs": outputs, "source": _lines(source.rstrip("\n"))})
    cells += _markdown_cells(markdown[position:], root)
    for i, cell in enumerate(cells):
        cell["id"] = f"cell-{i:03d}"
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def render(markdown, root=ROOT):
    """The notebook's file contents: JSON as Jupyter writes it (one-space indent, sorted keys)."""
    return json.dumps(notebook(markdown, root), indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=str(ROOT / "walkthrough.md"))
    parser.add_argument("--out", default=str(ROOT / "walkthrough.ipynb"))
    args = parser.parse_args(argv)
    source = Path(args.source)
    text = render(source.read_text(encoding="utf-8"), source.resolve().parent)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)  # never half-written
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
