"""A recipe's own filters (`curate.filters.custom`): any datatrove `BaseFilter` subclass, named `module:attribute`
and built with the entry's `args`.

The module is imported with the recipe's folder first on sys.path for that import only. Datatrove pickles the
pipeline into its worker processes (and Ray's and Slurm's), where that folder is not on sys.path: `UserFilter`,
the step curation runs, pickles the entry instead of the user's object and builds the filter again where it
is unpickled, importing the same way.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.machinery
import inspect
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.stats import Stats

from dataengine.errors import UserError


@contextmanager
def _first_on_path(folder: Path) -> Iterator[None]:
    """`folder` first on sys.path for the block, and sys.path as it was after it."""
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if sys.path and sys.path[0] == entry:
            del sys.path[0]
        elif entry in sys.path:
            sys.path.remove(entry)


def load_filter(target: str, args: dict[str, Any], base_dir: Path) -> BaseFilter | str:
    """The filter `target` (module:attribute) built with `args`, or what is wrong: a line that starts with the
    entry's key it is about, "class: ..." or "args: ..."."""
    module_name, attr = target.split(":", 1)
    try:
        with _first_on_path(base_dir):
            module = importlib.import_module(module_name)
    except ImportError as exc:
        return f"class: cannot import {module_name!r}: {exc}"
    except Exception as exc:  # the module itself raised: say which and why, not a traceback
        return f"class: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
    cls = getattr(module, attr, None)
    if cls is None:
        hint = difflib.get_close_matches(attr, [n for n in dir(module) if not n.startswith("_")], n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        return f"class: module {module_name!r} ({getattr(module, '__file__', None)}) has no attribute {attr!r}{extra}"
    if not (isinstance(cls, type) and issubclass(cls, BaseFilter)):
        what = f"the class {cls.__name__}" if isinstance(cls, type) else f"a {type(cls).__name__}"
        return f"class: {target} is not a subclass of datatrove's BaseFilter ({what})"
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        return f"class: {target} is abstract: it does not define {missing}"
    if "exclusion_writer" in args:
        return "args: exclusion_writer is dataengine's: the rows a filter drops go to rejected/ under its name"
    call = f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in args.items())})"
    try:
        return cls(**args)
    except TypeError as exc:  # the constructor's signature refused them: its own words say which
        return f"args: {call}: {exc}"
    except Exception as exc:
        return f"args: {call} failed: {type(exc).__name__}: {exc}"


def module_file(target: str, base_dir: Path) -> Path | None:
    """The file of `target`'s module when it is one under the recipe's folder (what it imports from there), without
    importing it; None for a module of the environment."""
    parts = target.split(":", 1)[0].split(".")
    search: list[str] | None = [str(base_dir)]
    spec = None
    for i in range(len(parts)):
        if search is None:  # a dotted name under a plain module: not ours to find
            return None
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), search)
        if spec is None:
            return None
        search = list(spec.submodule_search_locations) if spec.submodule_search_locations is not None else None
    if spec is None or not spec.has_location or spec.origin is None:
        return None
    path = Path(spec.origin).resolve()
    return path if path.is_file() and path.is_relative_to(base_dir.resolve()) else None


class UserFilter(BaseFilter):
    """The step that runs a custom filter: the user's filter runs as datatrove runs it (its own `run`, batches
    and stats), with `exclusion_writer` set, under the entry's step name. What pickles is the entry (target, args,
    the recipe's folder): unpickled in a worker process, the step builds the filter again, from the recipe's
    folder, when its task first runs it (an error there fails the task, with datatrove's log of it)."""

    def __init__(
        self, target: str, args: dict[str, Any], base_dir: Path, name: str, exclusion_writer: DiskWriter | None = None
    ) -> None:
        super().__init__(exclusion_writer)
        self.name = name
        self.target, self.args, self.base_dir = target, dict(args), str(base_dir)
        self.inner = self._build()  # here, at once: a broken entry stops the stage before any task starts

    def _build(self) -> BaseFilter:
        built = load_filter(self.target, self.args, Path(self.base_dir))
        if isinstance(built, str):
            raise UserError(f"custom filter {self.name!r}: {built}")
        built.exclusion_writer = self.exclusion_writer
        built.stats.name = str(self)  # datatrove's stats.json and logs name the step as the recipe does
        self.stats = built.stats
        return built

    def _filter(self) -> BaseFilter:
        if self.inner is None:
            self.inner = self._build()
        return self.inner

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("inner", "stats")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.inner, self.stats = None, Stats(str(self))

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self._filter().filter(doc)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        yield from self._filter().run(data, rank, world_size)
