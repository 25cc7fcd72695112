"""Errors a user can act on. The CLI prints them without a traceback and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a recipe, a path, an option. Printed as is, exit code 2."""

    exit_code = 2


class RecipeError(UserError):
    """A recipe that cannot be loaded or validated; each line of `problems` is one finding."""

    def __init__(self, path: str, problems: list[str], recipe: object | None = None) -> None:
        self.path = path
        self.problems = problems
        # the validated recipe where its schema passed and only other problems were found (keys given twice,
        # unset variables, missing files): what else is wrong with it can still be checked
        self.recipe = recipe
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path}: invalid recipe\n{lines}")


class StageError(Exception):
    """A stage failed for a reason other than bad input (server died, rows lost). Exit code 1."""

    exit_code = 1
