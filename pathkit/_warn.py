"""Warnings that point at the user's code: the first stack frame outside the pathkit package."""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings

_PKG = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` for :func:`warnings.warn` called right here that names the first caller outside
    pathkit (a notebook cell, a script), however deep inside pathkit the warning is raised."""
    frame = sys._getframe(1)   # the function that calls warnings.warn: stacklevel 1
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PKG):
        frame = frame.f_back
        level += 1
    return level


# ------------------------------------------------------------------ warnings of work units run elsewhere
# A cohort's slides run in Dask workers (threads of another process, often on another host): a warning raised
# there goes to the worker's log, pointing at dask's frame, and the user never sees it. `capture` collects the
# warnings of one work unit in its own thread; the driver gives them again with `relay`, naming the slides,
# at the user's call. catch_warnings(record=True) cannot do this: it swaps process-wide state, and two tasks
# of a multi-threaded worker would record each other's warnings or leave the recorder installed.
_local = threading.local()
_lock = threading.Lock()
_previous = None


def _show(message, category, filename, lineno, file=None, line=None):
    sink = getattr(_local, "sink", None)
    if sink is not None:
        sink.append({"category": f"{category.__module__}:{category.__qualname__}", "message": str(message)})
        return
    _previous(message, category, filename, lineno, file, line)


def _install() -> None:
    global _previous
    with _lock:
        # (again) when someone's catch_warnings restored the function that was there before
        if warnings.showwarning is not _show:
            _previous = warnings.showwarning
            warnings.showwarning = _show


@contextlib.contextmanager
def capture():
    """Collect the warnings this thread raises inside the block (other threads' pass through) as a list of
    ``{"category": "module:QualName", "message": text}``: plain data that pickles to any driver.

    Each block starts with fresh "once per location" registries: in a worker every slide's warning comes
    from the same frame, and the second slide's would otherwise be dropped before it can be collected.
    """
    _install()
    mutated = getattr(warnings, "_filters_mutated", None)
    if mutated is not None:
        mutated()
    outer = getattr(_local, "sink", None)
    _local.sink = sink = []
    try:
        yield sink
    finally:
        _local.sink = outer


def _category(name: str) -> type:
    import importlib

    module, _, qual = str(name).partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError:  # a class the driver cannot import: still said, as a UserWarning
        return UserWarning
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) and issubclass(obj, Warning) else UserWarning


class Relay:
    """Gives again, at the user's call, the warnings :func:`capture` collected in work units: ``add(id,
    caught)`` as each unit's result arrives says a new warning at once, naming the unit (a slide); ``close()``
    then names every unit that raised a warning more than one did, once per distinct warning, so a cohort of
    a thousand slides gives two lines, not a thousand."""

    def __init__(self, what: str = "slide"):
        self.what = what
        self.seen: dict = {}

    def add(self, ident, items) -> None:
        for w in items or ():
            ids = self.seen.setdefault((w["category"], w["message"]), [])
            ids.append(str(ident))
            if len(ids) == 1:
                warnings.warn(f"{self.what} {ids[0]!r}: {w['message']}", _category(w["category"]),
                              stacklevel=user_stacklevel())

    def close(self) -> None:
        for (cat, msg), ids in self.seen.items():
            if len(ids) > 1:
                shown = ", ".join(repr(i) for i in ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
                warnings.warn(f"{len(ids)} {self.what}s ({shown}) gave the same warning: {msg}", _category(cat),
                              stacklevel=user_stacklevel())
        self.seen = {}
