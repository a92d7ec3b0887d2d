"""Optional dependencies and the pip extra that installs each.

``pip install lsq`` installs what coding and the evaluation of Pillow baselines need;
training needs ``lsq[train]``, plots and BD-rates ``lsq[eval]``. An import of a module that
only an extra brings becomes one line naming the pip command.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: Top-level module -> the extra of pyproject.toml that installs it.
EXTRAS = {"compressai": "train", "bjontegaard": "eval", "matplotlib": "eval", "scipy": "eval"}


class MissingExtraError(ModuleNotFoundError):
    """A module from an extra of lsq is not installed."""


def hint(e: ModuleNotFoundError) -> str | None:
    """The line telling which extra brings the missing module, or None if no extra does."""
    top = (e.name or "").partition(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return f'{top} is not installed; this needs pip install "lsq[{extra}]"'


def require(module: str) -> ModuleType:
    """``import module``, or MissingExtraError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        line = hint(e)
        if line is None:
            raise
        raise MissingExtraError(line, name=e.name) from None
