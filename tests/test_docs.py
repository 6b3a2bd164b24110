"""The prose cannot rot: checks on walkthrough.md, README.md and docs/.

pytest already runs every ``>>>`` example in those files as a doctest (``--doctest-glob=*.md``
in setup.cfg). These tests make sure nothing slips past that: a Python code block written
without ``>>>`` would never run, so it is refused; every link to a page must resolve; and every
``backward`` in the package links a derivation page that exists.
"""

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import gla_np

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = sorted([ROOT / "walkthrough.md", ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^```", re.S | re.M)
# Code-block languages: python blocks must be doctests; text/math hold formulas.
# Shell blocks are allowed only in README.md (the install and run commands).
PROSE_LANGS = {"text", "math"}
SHELL_LANGS = {"bash", "sh", "console", "shell"}


def _id(path):
    return str(path.relative_to(ROOT))


def test_doc_files_exist():
    assert (ROOT / "walkthrough.md").is_file()
    assert (ROOT / "docs" / "notation.md").is_file()
    assert len(DOC_FILES) >= 3


@pytest.mark.parametrize("path", DOC_FILES, ids=_id)
def test_every_code_block_runs_or_is_marked_as_formula(path):
    text = path.read_text()
    for lang, body in FENCE.findall(text):
        where = f"{_id(path)}: block starting {body[:40]!r}"
        if lang in ("python", "pycon"):
            assert ">>>" in body, f"{where} is Python but has no >>> lines, so it never runs"
        elif lang in PROSE_LANGS:
            assert ">>>" not in body, f"{where} holds >>> lines in a {lang} fence"
        elif lang in SHELL_LANGS:
            assert path.name == "README.md", f"{where}: shell blocks belong in README.md"
        else:
            pytest.fail(f"{where}: fence language {lang!r}; use python (doctest) or text")


LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")
REPO_PATH = re.compile(r"\b((?:docs/)[\w./-]+\.md)\b")


@pytest.mark.parametrize("path", DOC_FILES, ids=_id)
def test_markdown_links_resolve(path):
    for target in LINK.findall(path.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        assert (path.parent / target).resolve().is_file(), f"{_id(path)} links missing {target}"


def _package_sources():
    return sorted((ROOT / "gla_np").rglob("*.py"))


@pytest.mark.parametrize("path", _package_sources(), ids=_id)
def test_code_points_only_at_pages_that_exist(path):
    for target in REPO_PATH.findall(path.read_text()):
        assert (ROOT / target).is_file(), f"{_id(path)} points at missing page {target}"


def _modules_with_backward():
    found = []
    for info in pkgutil.iter_modules(gla_np.__path__):
        module = importlib.import_module(f"gla_np.{info.name}")
        if callable(getattr(module, "backward", None)):
            found.append(module)
    return found


def test_every_backward_links_its_derivation():
    modules = _modules_with_backward()
    assert modules, "expected modules with a backward function"
    for module in modules:
        doc = module.backward.__doc__ or ""
        pages = REPO_PATH.findall(doc)
        assert any(p.startswith("docs/derivations/") for p in pages), (
            f"{module.__name__}.backward: docstring links no docs/derivations/ page")
        for page in pages:
            assert (ROOT / page).is_file(), f"{module.__name__}.backward links missing {page}"
