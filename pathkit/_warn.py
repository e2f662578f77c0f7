"""Warnings that point at the user's code: the first stack frame outside the pathkit package."""
from __future__ import annotations

import os
import sys

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
