"""``MODULE:NAME`` on a command line: the object it names, or a :class:`UsageError` that says in
one line what went wrong (a module that does not import, for any reason, or a missing name) and
what to do. Used by ``python -m manualbp.testing`` and ``python -m manualbp.coverage``."""

from __future__ import annotations

import importlib

from manualbp.testing.compare import first_line


class UsageError(Exception):
    """A bad argument, reported as one line."""


def import_module(path: str):
    """The module ``path``, or a :class:`UsageError` that says in one line why it does not import."""
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as error:
        if error.name and path != error.name and not path.startswith(error.name + "."):  # an import inside it
            raise UsageError(f"importing module {path!r} failed: {error}: install that module, or fix the "
                             "import") from error
        raise UsageError(f"cannot import module {path!r} ({error}): check the name, and run from the folder that "
                         "holds it or add that folder to PYTHONPATH") from error
    except SyntaxError as error:
        raise UsageError(f"module {path!r} has a syntax error: {error.msg} ({error.filename}, line {error.lineno}): "
                         "fix it and run again") from error
    except Exception as error:  # noqa: BLE001 - whatever the module runs when imported
        raise UsageError(f"importing module {path!r} raised {type(error).__name__}: {first_line(error)}: fix the "
                         "code that runs when it is imported") from error


def resolve_function(spec: str):
    """``package.module:name`` (``name`` may be dotted: ``module:MyFunction.apply``)."""
    module_path, colon, name = spec.partition(":")
    if not colon or not module_path or not name:
        raise UsageError(f"expected MODULE:NAME (e.g. mypkg.mymod:my_tanh), got {spec!r}")
    target = import_module(module_path)
    for part in name.split("."):
        if not hasattr(target, part):
            raise UsageError(f"module {module_path!r} has no {name!r}: check the name after the colon")
        target = getattr(target, part)
    return target
