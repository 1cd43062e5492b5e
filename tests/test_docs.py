"""The documentation site (docs/): it builds with warnings as errors, its API reference lists every
public name, every Python example on it and in the README runs, printing what the page shows, and
the code it shows for reading is the code. Its commands: tests/test_docs_commands.py."""

from __future__ import annotations

import html
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PROJECT_ROOT
from site_pages import DOCS, Block, blocks, page_name, site_pages

PUBLIC_MODULES = ("manualbp", "manualbp.functional", "manualbp.nn", "manualbp.testing")


@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> Path:
    """The README's ``mkdocs build --strict -f docs/mkdocs.yml``, into a temporary folder."""
    pytest.importorskip("mkdocs", reason='the site needs the docs extra: pip install -e ".[docs]"')
    site = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "docs/mkdocs.yml", "--site-dir", str(site)],
        cwd=PROJECT_ROOT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"the site does not build with warnings as errors:\n{result.stderr[-4000:]}"
    return site


def anchors(page: Path) -> set[str]:
    return set(re.findall(r'id="([\w.]+)"', page.read_text()))


@pytest.mark.slow
def test_the_api_reference_lists_every_public_name(built_site):
    """Every name in the ``__all__`` of the four public modules has its entry: under its own module, or,
    for the same object exported twice, under ``manualbp.functional``, linked from its module's page."""
    functional = anchors(built_site / "api" / "functional" / "index.html")
    missing = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        page = built_site / "api" / module_name.removeprefix("manualbp.") / "index.html"
        text, own = page.read_text(), anchors(page)
        for name in module.__all__:
            if f"{module_name}.{name}" in own:
                continue
            documented_in_functional = f"manualbp.functional.{name}" in functional
            linked = f'href="../functional/#manualbp.functional.{name}"' in text or (
                name == "functional" and 'href="../functional/"' in text)
            if not (documented_in_functional or name == "functional") or not linked:
                missing.append(f"{module_name}.{name}")
    assert not missing, f"public names without an API entry: {missing}"
    assert len(functional) > 150  # the layers' functions, formula pairs, Functions and Modules


@pytest.mark.slow
def test_the_api_reference_shows_the_docstrings(built_site):
    """Each entry carries its object's docstring (a few of each kind: formula, Function, Module, tool)."""
    import manualbp.functional as mbf
    import manualbp.nn
    import manualbp.testing

    for page, objects in {"functional": [mbf.tanh_backward, mbf.linear, mbf.Conv2d, mbf.AttentionFunction],
                          "nn": [manualbp.nn.convert, manualbp.nn.GPT], "testing": [manualbp.testing.check_function],
                          "manualbp": [manualbp.hand_written, manualbp.backward_coverage]}.items():
        shown = " ".join(html.unescape(re.sub(r"<[^>]+>", "", (built_site / "api" / page / "index.html").read_text()))
                         .split())
        for obj in objects:
            first_line = " ".join(inspect.getdoc(obj).split("\n\n")[0].split())
            plain = re.sub(r"``?([^`]*)``?", r"\1", first_line)  # the site shows ``code`` as code
            assert plain[:60] in shown, f"{page}: the docstring of {obj.__qualname__} is not shown: {plain[:60]!r}"


def runnable_blocks(page: Path) -> list[Block]:
    return [block for block in blocks(page) if block.language == "python" and not block.marker.startswith("excerpt")]


PAGES_WITH_EXAMPLES = [page for page in site_pages() if runnable_blocks(page)]

# Runs a page's Python blocks in order in one namespace, as a reader pasting them into one session
# would: a "file: NAME" block is written to NAME, a "raises: E" block must raise E, and a block
# followed by an "output" text block must print exactly that.
RUNNER = r"""
import contextlib, io, json, sys, traceback
sys.path.insert(0, ".")
namespace = {"__name__": "__main__"}
for number, step in enumerate(json.load(sys.stdin), 1):
    if step["marker"].startswith("file: "):
        open(step["marker"][6:], "w").write(step["code"])
        continue
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(step["code"], f"block {number}", "exec"), namespace)
    except BaseException as error:
        expected = step["marker"].removeprefix("raises: ") if step["marker"].startswith("raises: ") else None
        if type(error).__name__ != expected:
            sys.exit(f"block {number} raised {type(error).__name__}:\n{traceback.format_exc()}")
    else:
        if step["marker"].startswith("raises: "):
            sys.exit(f"block {number} was to raise {step['marker'][8:]} and did not")
    if step["output"] is not None and printed.getvalue().strip() != step["output"].strip():
        sys.exit(f"block {number} printed\n{printed.getvalue()}\ninstead of what the page shows:\n{step['output']}")
print("ran", number, "blocks")
"""


def steps(page: Path) -> list[dict]:
    """The page's runnable blocks, each with the output the page shows after it (or None)."""
    shown = blocks(page)
    runnable = runnable_blocks(page)
    result = []
    for block in runnable:
        following = shown[shown.index(block) + 1] if shown.index(block) + 1 < len(shown) else None
        output = following.code if following is not None and following.marker == "output" else None
        result.append({"code": block.code, "marker": block.marker, "output": output})
    return result


def test_the_pages_have_python_examples():
    names = {page_name(page) for page in PAGES_WITH_EXAMPLES}
    assert {"README.md", "docs/pages/index.md", "docs/pages/layers.md", "docs/pages/checker.md"} <= names, names
    assert any(step["output"] is not None for page in PAGES_WITH_EXAMPLES for step in steps(page))


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=page_name)
def test_the_python_examples_run_and_print_what_the_page_shows(page, tmp_path):
    result = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(steps(page)), cwd=tmp_path,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert result.returncode == 0, f"{page_name(page)}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    assert f"ran {len(steps(page))} blocks" in result.stdout


def excerpts() -> list[Block]:
    return [block for page in site_pages() for block in blocks(page) if block.marker.startswith("excerpt: ")]


def test_the_code_shown_for_reading_is_the_code():
    """A block marked ``excerpt: PATH`` (Add a layer's tanh, step by step) is PATH's code as it is: each
    ``def``/``class`` in it, with its decorators, equals its source; any other line is in PATH."""
    assert len(excerpts()) >= 6
    for block in excerpts():
        path = block.marker.removeprefix("excerpt: ")
        source_text = (PROJECT_ROOT / path).read_text()
        definitions = list(re.finditer(r"^(?:@.*\n)*(?:def|class) (\w+)\b.*?(?=^(?:@|def |class )|\Z)", block.code,
                                       re.S | re.M))
        if not definitions:
            for line in block.code.strip().splitlines():
                assert line.strip() in source_text, f"{block}: {line.strip()!r} is not in {path}"
            continue
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        for match in definitions:
            source = inspect.getsource(getattr(module, match.group(1))).strip()
            assert match.group(0).strip() == source, f"{block}: {match.group(1)} is not the code's:\n{source}"


def test_the_site_is_where_the_readme_says():
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (PROJECT_ROOT / link).is_file(), f"README links to {link}, which does not exist"
    assert (DOCS / "mkdocs.yml").is_file()


@pytest.mark.slow
def test_the_api_reference_keeps_the_stars_of_shapes(built_site):
    """``(*, L, E)`` in a docstring is shown as written: Markdown would read a bare pair of stars as
    italics and drop them, leaving ``(, L, E)`` or ``(N, C, )``."""
    pages = sorted((built_site / "api").rglob("index.html"))
    assert len(pages) >= 3, pages
    eaten = {}
    for page in pages:
        text = html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))
        found = re.findall(r"[^\n]{0,40}(?:\(\s*,|, \))[^\n]{0,20}", text)  # (, L, E) or (N, C, )
        if found:
            eaten[str(page.relative_to(built_site))] = found[:3]
    assert not eaten, f"shapes whose * was eaten: {eaten}"
    functional = html.unescape(re.sub(r"<[^>]+>", "", (built_site / "api" / "functional" / "index.html").read_text()))
    assert "grad_output δZ: (*, out_features)" in functional
