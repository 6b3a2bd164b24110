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
DOC_FILES = sorted([ROOT / "walkthrough.md", ROOT / "README.md", ROOT / "CHANGELOG.md",
                    *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^```", re.S | re.M)
# Code-block languages: python blocks must be doctests; text/math hold formulas.
# Shell blocks are allowed only in README.md (the install and run commands).
PROSE_LANGS = {"text", "math", "mermaid"}  # mermaid: diagrams GitHub draws
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
    for info in pkgutil.walk_packages(gla_np.__path__, prefix="gla_np."):
        module = importlib.import_module(info.name)
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


# --- inline math must not turn into emphasis on GitHub -------------------------------------
# GitHub renders Markdown with CommonMark rules: `*` and `_` next to letters open and close
# emphasis, so "dg_t = a_t * rowsum(S^_t * S_{t-1})" written as prose comes out in italics
# with its underscores eaten. Inline formulas belong in code spans. The check below applies the
# CommonMark delimiter rules (left- and right-flanking runs) to the prose of every page, with
# fences, code spans, links and HTML removed, and reports every pair of delimiters that would
# become emphasis, unless the emphasised text is plain words (intended *italics*, **bold**).

_FENCE_BLOCK = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
_HTML = re.compile(r"<[^>\n]+>")
_DELIM = re.compile(r"\*+|_+")
_PLAIN_WORDS = re.compile(r"[A-Za-z0-9 ,.:;?!'’\-]+")


def _is_punct(ch):
    import unicodedata
    return unicodedata.category(ch)[0] in "PS"


def _emphasis_spans(text):
    """The (opener, closer, inner text) triples CommonMark would turn into emphasis."""
    openers, found = [], []
    for m in _DELIM.finditer(text):
        if m.start() > 0 and text[m.start() - 1] == "\\":
            continue  # an escaped delimiter is a literal character
        ch, run = m.group()[0], m.group()
        before = text[m.start() - 1] if m.start() > 0 else " "
        after = text[m.end()] if m.end() < len(text) else " "
        left = not after.isspace() and (not _is_punct(after) or before.isspace()
                                        or _is_punct(before))
        right = not before.isspace() and (not _is_punct(before) or after.isspace()
                                          or _is_punct(after))
        if ch == "*":
            can_open, can_close = left, right
        else:  # "_" may not open or close inside a word
            can_open = left and (not right or _is_punct(before))
            can_close = right and (not left or _is_punct(after))
        if can_close:
            for i in range(len(openers) - 1, -1, -1):
                if openers[i][0] == ch:
                    start = openers[i][1]
                    found.append((text[start - len(openers[i][2]):m.end()],
                                  text[start:m.start()]))
                    del openers[i:]
                    break
            else:
                if can_open:
                    openers.append((ch, m.end(), run))
                continue
            continue
        if can_open:
            openers.append((ch, m.end(), run))
    return found


def _prose_blocks(text):
    """Paragraphs of prose (and single table cells), with everything that is not prose removed."""
    text = _FENCE_BLOCK.sub("\n", text)
    text = _CODE_SPAN.sub("CODE", text)
    text = _LINK_TARGET.sub("](L)", text)
    text = _HTML.sub(" ", text)
    blocks = []
    for para in re.split(r"\n\s*\n", text):
        if para.lstrip().startswith("|"):
            for line in para.splitlines():
                blocks.extend(line.split("|"))
        else:
            blocks.append(para)
    return blocks


def test_emphasis_checker_catches_formulas_and_spares_words():
    assert _emphasis_spans("the running gradient S^_t, which S_{t-1} uses")
    assert _emphasis_spans("shapes (D, H*K) and (H*K,) here")
    assert _emphasis_spans("dg_t = a_t * rowsum(S^_t * S_{t-1}) and a*b")
    assert not _emphasis_spans("plain q_t and k_t and dq_past_t inside words, a * b spaced")
    assert not _emphasis_spans(r"escaped S^\_t and (q dq)\_t")
    assert [inner for _, inner in _emphasis_spans("an *earlier code* row and **bold**")] == [
        "earlier code", "bold"]


@pytest.mark.parametrize("path", DOC_FILES, ids=_id)
def test_inline_formulas_do_not_render_as_emphasis(path):
    bad = []
    for block in _prose_blocks(path.read_text()):
        for whole, inner in _emphasis_spans(block):
            if not _PLAIN_WORDS.fullmatch(inner.strip()):
                bad.append(whole if len(whole) < 80 else whole[:77] + "...")
    assert not bad, (f"{_id(path)}: these render as emphasis on GitHub; put the formula in a "
                     f"code span: {bad}")


# --- figures ----------------------------------------------------------------------------------
# docs/figures/make_figures.py draws every figure as SVG with NumPy and string formatting only,
# so these tests need nothing beyond the runtime dependency.

FIGURES = ROOT / "docs" / "figures"
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def _figure_script():
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_figures", FIGURES / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", DOC_FILES, ids=_id)
def test_every_figure_a_page_shows_exists(path):
    for target in IMAGE.findall(path.read_text()):
        assert not target.startswith(("http://", "https://")), (
            f"{_id(path)} shows an image from outside the repository: {target}")
        assert (path.parent / target).resolve().is_file(), f"{_id(path)} shows missing {target}"


def test_figures_are_shown_somewhere():
    shown = {(path.parent / t).resolve() for path in DOC_FILES
             for t in IMAGE.findall(path.read_text())}
    for svg in sorted(FIGURES.glob("*.svg")):
        assert svg.resolve() in shown, f"{svg.name} is drawn but no page shows it"


def test_figure_script_redraws_the_committed_figures(tmp_path, capsys):
    import xml.etree.ElementTree as ET
    written = _figure_script().main(["--folder", str(tmp_path)])
    assert len(written) >= 3
    for name in written:
        new = Path(name)
        assert ET.parse(new).getroot().tag.endswith("svg")
        committed = FIGURES / new.name
        assert committed.is_file(), f"{new.name}: run python3 docs/figures/make_figures.py"
        assert committed.read_text() == new.read_text(), (
            f"{new.name} differs from what the script draws; run "
            f"python3 docs/figures/make_figures.py")


def test_figure_script_draws_the_curve_of_any_run(tmp_path, capsys):
    import xml.etree.ElementTree as ET
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("step,split,loss,accuracy,lr,grad_norm,tokens_per_sec,elapsed_sec\n"
                       "10,train,2.5,0.1,0.001,1.0,100,1\n20,train,1.0,0.6,0.001,1.0,100,2\n"
                       "20,heldout,0.9,0.7,,,,3\n")
    out = tmp_path / "curve.svg"
    _figure_script().main(["--curve", str(metrics), "--out", str(out)])
    text = out.read_text()
    assert ET.fromstring(text).tag.endswith("svg")
    assert text.count("<polyline") == 2 and "held-out accuracy 0.700" in text
    metrics.write_text("step,split,loss,accuracy,lr,grad_norm,tokens_per_sec,elapsed_sec\n")
    with pytest.raises(ValueError, match="no train rows"):
        _figure_script().main(["--curve", str(metrics), "--out", str(out)])


def test_overflow_example_in_the_tile_figure_is_computed():
    lines = _figure_script().overflow_example()
    assert any("= inf" in line for line in lines)  # the naive key factor overflows float32
    assert any(line.endswith("= nan") for line in lines)  # and 0 * inf = nan
    tiled = [line for line in lines if line.strip().startswith("= ")]
    assert tiled and "inf" not in tiled[0] and "nan" not in tiled[0]


# --- equation numbers ---------------------------------------------------------------------------
# A derivation page numbers the lines of the forward, (1), (2), ..., and the code's comments cite
# the same numbers ("forward (2): ..."). A number the code cites must exist on its page.

_EQ_NUMBER = re.compile(r"(?<![\w.\]])\((\d+)\)")
_CODE_LINE = re.compile(r"^Code: (.*)$", re.M)


def _derivation_pages():
    return sorted((ROOT / "docs" / "derivations").rglob("*.md"))


@pytest.mark.parametrize("page", _derivation_pages(), ids=_id)
def test_equation_numbers_in_code_exist_on_the_page(page):
    text = page.read_text()
    code_line = _CODE_LINE.search(text)
    assert code_line, f"{_id(page)}: no 'Code:' line naming its module"
    modules = re.findall(r"`(gla_np/[\w/]+\.py)`", code_line.group(1))
    assert modules, f"{_id(page)}: the 'Code:' line names no gla_np module"
    on_page = set(_EQ_NUMBER.findall(text))
    for module in modules:
        cited = set(_EQ_NUMBER.findall((ROOT / module).read_text()))
        assert cited <= on_page, (f"{module} cites equation numbers {sorted(cited - on_page)} "
                                  f"that {_id(page)} does not have")


def test_every_walkthrough_chapter_ends_with_exercises_that_have_solutions():
    text = (ROOT / "walkthrough.md").read_text()
    solutions = (ROOT / "docs" / "exercises.md").read_text()
    chapters = re.split(r"^## (?=\d+\. )", text, flags=re.M)[1:]
    assert len(chapters) >= 9
    for chapter in chapters:
        number = chapter.split(".")[0]
        assert "\n### Exercises\n" in chapter, f"walkthrough chapter {number} has no exercises"
        assert f"docs/exercises.md#chapter-{number})" in chapter, (
            f"walkthrough chapter {number} does not link its solutions")
        assert re.search(rf"^## Chapter {number}$", solutions, re.M), (
            f"docs/exercises.md has no solutions for chapter {number}")


# --- pages describe the present -----------------------------------------------------------------
# The walkthrough, the derivation pages and the glossary say what the code does now. What changed
# and when belongs in CHANGELOG.md: no commit ids, dates or "the earlier code" on these pages.

PRESENT_PAGES = sorted([ROOT / "walkthrough.md", ROOT / "docs" / "notation.md",
                        *(ROOT / "docs" / "derivations").rglob("*.md")])
_HISTORY = re.compile(
    r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b"  # a commit id
    r"|\b(?:19|20)\d\d-\d\d-\d\d\b"  # a date
    r"|\bcommit\b|\bearlier (?:code|version|tiling|figure|day|run)\b|\bused to\b"
    r"|\bthe code used\b|\bof that time\b|\bversion 0\.\d\b|\bon an earlier\b|\bno longer\b",
    re.I)


def test_history_checker_catches_history_and_spares_the_present():
    found = [m.group() for m in _HISTORY.finditer(
        "measured on 4d4d03f on 2026-11-30 with the earlier code, which used to pad; no longer")]
    assert found == ["4d4d03f", "2026-11-30", "earlier code", "used to", "no longer"]
    assert not _HISTORY.search("T = 4453504 parameters, dtype float32, the earlier key u < t")


@pytest.mark.parametrize("path", PRESENT_PAGES, ids=_id)
def test_pages_describe_the_present(path):
    found = sorted({m.group() for m in _HISTORY.finditer(path.read_text())})
    assert not found, f"{_id(path)} holds history (it belongs in CHANGELOG.md): {found}"


def test_sums_in_the_chunked_backward_say_their_chunk():
    # Read over the whole sequence, a sum over t >= r would count the later chunks twice: their
    # effect is already in E_n. Every sum of the B-steps and the result box names its chunk.
    text = (ROOT / "docs" / "derivations" / "recurrence" / "chunked.md").read_text()
    steps = text[text.index("## Backward, line by line in reverse"):text.index("## Worked example")]
    subscripts = re.findall(r"sum_\{([^}]*)\}", steps)
    assert len(subscripts) >= 15
    assert all("chunk" in sub for sub in subscripts), [s for s in subscripts if "chunk" not in s]
