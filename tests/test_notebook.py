"""walkthrough.ipynb, the notebook edition of walkthrough.md: in sync, runnable, figures inside.

docs/make_notebook.py writes the notebook from the page. These tests check that the committed
notebook is exactly what the script writes now, that its code cells run in order in one fresh
namespace (as Jupyter's "Run all" would) and print what the page shows, and that every figure
of the page is inside the notebook.
"""

import ast
import base64
import contextlib
import doctest
import importlib.util
import io
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "walkthrough.ipynb"
PAGE = ROOT / "walkthrough.md"
# the doctest flags of setup.cfg, so a cell's output is compared as the page's doctest compares it
FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


def _script():
    script = ROOT / "docs" / "make_notebook.py"
    spec = importlib.util.spec_from_file_location("make_notebook", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cells(kind):
    return [c for c in json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
            if c["cell_type"] == kind]


def run_cell(source, namespace):
    """Run a cell as Jupyter does: every statement, then display the last one if an expression."""
    tree = ast.parse(source)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(tree, "<cell>", "exec"), namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
            if value is not None:
                print(repr(value))
    return out.getvalue()


def shown(cell):
    """The text a cell's outputs show: printed text, then the displayed value."""
    text = ""
    for output in cell["outputs"]:
        if output["output_type"] == "stream":
            text += "".join(output["text"])
        else:
            text += "".join(output["data"]["text/plain"]) + "\n"
    return text


def test_the_committed_notebook_is_what_the_script_writes():
    expected = _script().render(PAGE.read_text(encoding="utf-8"))
    assert NOTEBOOK.read_text(encoding="utf-8") == expected, (
        "walkthrough.ipynb is out of date: run python3 docs/make_notebook.py")


def test_the_script_writes_the_file(tmp_path, capsys):
    out = _script().main(["--out", str(tmp_path / "nb.ipynb")])
    assert out.read_text(encoding="utf-8") == NOTEBOOK.read_text(encoding="utf-8")
    assert not list(tmp_path.glob("*.tmp"))


def test_every_example_of_the_page_is_in_a_code_cell_and_every_prose_line_in_markdown():
    page = PAGE.read_text(encoding="utf-8")
    code = "".join("".join(c["source"]) + "\n" for c in _cells("code"))
    examples = [e for block in re.findall(r"^```python\n(.*?)^```", page, re.S | re.M)
                for e in doctest.DocTestParser().get_examples(block)]
    assert len(examples) > 250
    for example in examples:
        first = example.source.splitlines()[0]
        assert first in code, f"no code cell holds {first!r}"
    markdown = "".join("".join(c["source"]) for c in _cells("markdown"))
    prose = re.sub(r"^```python\n.*?^```\n", "", page, flags=re.S | re.M)
    for line in prose.splitlines():
        if line.strip() and not line.startswith("!["):
            assert line in markdown, f"no markdown cell holds {line!r}"


def test_code_cells_run_in_order_in_a_fresh_namespace_and_print_what_the_page_shows():
    namespace = {"__name__": "__main__"}
    checker = doctest.OutputChecker()
    cells = _cells("code")
    assert len(cells) > 50 and sum(bool(c["outputs"]) for c in cells) > 40
    for number, cell in enumerate(cells, 1):
        source = "".join(cell["source"])
        got = run_cell(source, namespace)
        want = shown(cell)
        assert checker.check_output(want, got, FLAGS), (
            f"code cell {number} printed\n{got}\nwhere the page shows\n{want}\nsource:\n{source}\n"
            f"(Jupyter displays only a cell's last expression: a value the page shows from inside "
            f"a with or for block needs its own >>> line; then run python3 docs/make_notebook.py)")


def test_a_traceback_on_the_page_is_a_printed_error_in_the_notebook():
    cells = [c for c in _cells("code") if "except ValueError as error" in "".join(c["source"])]
    assert len(cells) == 3
    namespace = {}
    exec("import numpy as np\nfrom gla_np import linear, sigmoid", namespace)
    got = run_cell("".join(cells[0]["source"]), namespace)
    assert got == "ValueError: W: expected shape (5, *), got (4, 3)\n" == shown(cells[0])


def test_every_figure_of_the_page_is_inside_the_notebook():
    figures = re.findall(r"!\[[^\]]*\]\(([^)\s]+\.svg)\)", PAGE.read_text(encoding="utf-8"))
    assert len(figures) >= 4
    attached = {}
    for cell in _cells("markdown"):
        for name, bundle in cell.get("attachments", {}).items():
            assert f"(attachment:{name})" in "".join(cell["source"])
            attached[name] = base64.b64decode(bundle["image/svg+xml"])
    for figure in figures:
        assert attached.get(Path(figure).name) == (ROOT / figure).read_bytes(), figure


def test_the_notebook_is_nbformat_4():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4 and nb["nbformat_minor"] >= 5
    ids = [c["id"] for c in nb["cells"]]
    assert len(set(ids)) == len(ids)
    counts = [c["execution_count"] for c in nb["cells"] if c["cell_type"] == "code"]
    assert counts == list(range(1, len(counts) + 1))
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("markdown", "code")
        assert all(line.endswith("\n") for line in cell["source"][:-1])


@pytest.mark.parametrize("source, want", [("x = 1\nx + 1", "2\n"), ("print(3)", "3\n"),
                                          ("y = None\ny", ""), ("for i in range(2): print(i)",
                                                                "0\n1\n")])
def test_run_cell_displays_as_jupyter_does(source, want):
    assert run_cell(source, {}) == want
