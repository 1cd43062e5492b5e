"""MkDocs hook: the API reference's name lists, generated from the modules' ``__all__`` at build time.

A page line ``<!-- api: manualbp.nn -->`` becomes a mkdocstrings block for that module's public names
that ``manualbp.functional`` does not document already, followed by a table linking each of the
others to its entry there (``manualbp.nn.Linear`` is the object ``manualbp.functional.Linear``). So a
name added to an ``__all__`` is on the site with its docstring without editing a page.
"""

from __future__ import annotations

import importlib
import re

FUNCTIONAL = "manualbp.functional"
API_LINE = re.compile(r"^<!-- api: ([\w.]+) -->$", flags=re.M)


def api_block(module_name: str) -> str:
    module = importlib.import_module(module_name)
    documented = set() if module_name == FUNCTIONAL else set(importlib.import_module(FUNCTIONAL).__all__)
    own = [name for name in module.__all__ if name not in documented and name != "functional"]
    shared = [name for name in module.__all__ if name in documented]
    members = "\n".join(f"        - {name}" for name in own)
    block = f"::: {module_name}\n    options:\n      members:\n{members}\n"
    if shared:
        rows = "\n".join(f"| `{module_name}.{name}` | [`{FUNCTIONAL}.{name}`](functional.md#{FUNCTIONAL}.{name}) |"
                         for name in shared)
        block += (f"\n## Also in `{module_name}`\n\nThe same objects as in `{FUNCTIONAL}`, documented there:\n\n"
                  f"| name | documented as |\n|---|---|\n{rows}\n")
    if "functional" in module.__all__:
        block += f"\n`{module_name}.functional` is the module [`{FUNCTIONAL}`](functional.md).\n"
    return block


def on_page_markdown(markdown: str, page, config, files) -> str:
    return API_LINE.sub(lambda match: api_block(match.group(1)), markdown)


SPHINX_ROLE = re.compile(r":(?:func|mod|class|meth|attr|data):(?=<code)")


def on_page_content(html: str, page, config, files) -> str:
    """The docstrings' Sphinx roles (``:func:`name```) shown as the code they mark, without the role."""
    return SPHINX_ROLE.sub("", html)
