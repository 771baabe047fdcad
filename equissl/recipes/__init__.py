"""The packaged recipes: ``equissl/recipes/<objective>_<backbone>_<data>.yaml``, installed with the package.

A recipe's first line is a comment holding its one-line description (``equissl list recipes``).
``--config NAME`` (and ``equissl.pretrain("NAME")``) takes a recipe by its name, with or without
``.yaml``; a path to a file is read as given. ``configs/NAME.yaml``, where the recipes lived before they
were packaged, still resolves to the packaged recipe when no such file exists, so that older commands
(those in docs/reports/) keep working.

A leaf: it imports only the standard library.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from equissl.errors import ConfigError

SUFFIX = ".yaml"
LEGACY_FOLDER = "configs"  # where recipes lived before they were packaged


def recipe_folder() -> Path:
    """The folder of the packaged recipes (inside the installed package)."""
    return Path(str(resources.files(__name__)))


def recipe_paths() -> dict[str, Path]:
    """Name -> file of every packaged recipe, by name."""
    return {path.stem: path for path in sorted(recipe_folder().glob(f"*{SUFFIX}"))}


def recipe_description(path: Path) -> str:
    """The recipe's first line, without its ``#``: its one-line description."""
    first = path.read_text().split("\n", 1)[0].strip()
    return first.lstrip("#").strip() if first.startswith("#") else ""


def list_recipes() -> dict[str, str]:
    """Name -> one-line description of every packaged recipe."""
    return {name: recipe_description(path) for name, path in recipe_paths().items()}


def resolve_recipe(name_or_path: str | Path) -> Path:
    """The file of a recipe given by path, by packaged name, or by its old ``configs/NAME.yaml`` path.

    Raises :class:`ConfigError` naming the packaged recipes when it is neither a file nor one of them.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    text = str(name_or_path)
    name = text.removesuffix(SUFFIX)
    if path.parent == Path(LEGACY_FOLDER):
        name = path.stem
    elif len(path.parts) != 1:
        name = ""  # a path that does not exist: never guessed from its last part
    recipes = recipe_paths()
    if name in recipes:
        return recipes[name]
    raise ConfigError(
        f"config {text!r} is neither a file nor a packaged recipe (equissl list recipes: "
        f"{', '.join(recipes)})"
    )
