"""What the README and the documentation site (docs/pages/) show: their pages, fenced code blocks and
shell commands, read the way tests/test_readme_commands.py and tests/test_docs.py run them.

A block may be preceded by an HTML comment that says how it is tested (invisible on the site):
``<!-- file: my_tanh.py -->`` (the block is that file's text, written where the next blocks run),
``<!-- raises: AssertionError -->`` (running the block raises it) and ``<!-- excerpt: PATH -->``
(the block is the code in PATH, shown for reading, checked against it).
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from helpers import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
DOCS = PROJECT_ROOT / "docs"
PAGES = DOCS / "pages"


def site_pages() -> list[Path]:
    """README.md and every page of the site, in a fixed order."""
    return [README, *sorted(PAGES.rglob("*.md"))]


def page_name(page: Path) -> str:
    return str(page.relative_to(PROJECT_ROOT))


@dataclass(frozen=True)
class Block:
    page: Path
    language: str
    code: str
    marker: str  # "file: x.py", "raises: E", "excerpt: PATH" or ""

    def __str__(self) -> str:
        return f"{page_name(self.page)}: {self.code.strip().splitlines()[0] if self.code.strip() else ''}"


BLOCK = re.compile(r"(?:<!-- (?P<marker>[^>]*?) -->\n)?(?P<indent>[ ]*)```(?P<language>\w*)\n"
                   r"(?P<code>.*?)^(?P=indent)```", flags=re.S | re.M)


def blocks(page: Path, language: str | None = None) -> list[Block]:
    """The fenced blocks of a page (dedented: a block inside a list item is indented there)."""
    found = [Block(page, match["language"], textwrap.dedent(match["code"]), (match["marker"] or "").strip())
             for match in BLOCK.finditer(page.read_text())]
    return [block for block in found if language is None or block.language == language]


def prose(page: Path) -> str:
    """A page without its fenced blocks."""
    return BLOCK.sub("", page.read_text())


def shell_commands(page: Path) -> list[str]:
    """The command lines of a page's bash blocks (continuation lines joined, comments dropped) and the
    ``python ...`` commands written inline in its prose."""
    commands = []
    for block in blocks(page, "bash"):
        for line in block.code.replace("\\\n", " ").splitlines():
            line = strip_comment(line).strip()
            if line:
                commands.append(" ".join(line.split()))
    for span in re.findall(r"`(python [^`]*)`", prose(page)):
        commands.append(" ".join(span.split()))
    return list(dict.fromkeys(commands))


def strip_comment(line: str) -> str:
    """The line without its ``# comment``: from a ``#`` that starts a word, outside quotes."""
    quote = None
    for position, character in enumerate(line):
        if quote:
            quote = None if character == quote else quote
        elif character in "'\"":
            quote = character
        elif character == "#" and (position == 0 or line[position - 1].isspace()):
            return line[:position]
    return line


def all_shell_commands() -> list[tuple[Path, str]]:
    return [(page, command) for page in site_pages() for command in shell_commands(page)]
