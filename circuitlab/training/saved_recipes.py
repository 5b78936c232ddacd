"""Saved recipes: named training configurations kept as JSON files in a user directory.

    $CIRCUITLAB_RECIPES/NAME.json   (default ~/.circuitlab/recipes/NAME.json)
    {"format": "circuitlab-recipe", "version": 1,
     "recipe": Recipe.to_dict(),            # its "name" is NAME
     "measured": {task, seeds, steps_to_99, median_steps_to_99, budget, ...}}

`circuitlab tune --save-recipe NAME` writes them (atomically); `get_recipe` and `recipes()` in
recipe.py read them lazily, after the built-in recipes, so `circuitlab train --recipe NAME`
finds them. A saved recipe may not take a built-in's name, and a damaged file is a RecipeError
that names the file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitlab._atomic import write_json_atomic
from circuitlab.training.recipe import _RECIPES, Recipe, RecipeError

ENV = "CIRCUITLAB_RECIPES"
FORMAT = "circuitlab-recipe"
VERSION = 1
# a file name on every file system, never a path: no '/', no leading '.', no spaces
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


@dataclass(frozen=True)
class SavedRecipe:
    recipe: Recipe
    measured: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def recipe_dir() -> Path:
    """The user recipe directory: `$CIRCUITLAB_RECIPES`, else ~/.circuitlab/recipes."""
    env = os.environ.get(ENV)
    return Path(env).expanduser() if env else Path.home() / ".circuitlab" / "recipes"


def check_name(name: str) -> str:
    """A name a recipe can be saved under: a plain file name, not a built-in recipe's."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise RecipeError(
            f"a saved recipe name is 1-64 letters, digits, '_', '.', '+' or '-' (not starting "
            f"with '.', '_' or '-'), got {name!r}"
        )
    if name in _RECIPES:
        raise RecipeError(f"recipe {name!r} is built in; save the recipe under another name")
    return name


def recipe_path(name: str) -> Path:
    return recipe_dir() / f"{check_name(name)}.json"


def read_saved(path: Path) -> SavedRecipe:
    """One saved recipe file; RecipeError names the file and what is wrong with it."""
    where = f"saved recipe file {path}"
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecipeError(f"{where} is unreadable ({exc}); fix or delete it") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RecipeError(f'{where} is not a circuitlab recipe (no "format": "{FORMAT}")')
    if data.get("version") != VERSION:
        raise RecipeError(f"{where} has version {data.get('version')!r}; this reads {VERSION}")
    try:
        recipe = Recipe.from_dict(data.get("recipe"))
    except (RecipeError, TypeError) as exc:
        raise RecipeError(f"{where}: {exc}") from None
    stem = Path(path).name.removesuffix(".json")
    if recipe.name != stem:
        raise RecipeError(f"{where} holds recipe {recipe.name!r}; its name must be {stem!r}")
    if recipe.name in _RECIPES:
        raise RecipeError(f"{where} takes the name of built-in recipe {recipe.name!r}; rename it")
    measured = data.get("measured", {})
    if not isinstance(measured, dict):
        raise RecipeError(f"{where}: measured must be a mapping")
    return SavedRecipe(recipe, measured, Path(path))


def saved_names() -> list[str]:
    """Names of the saved recipe files (not opened)."""
    folder = recipe_dir()
    if not folder.is_dir():
        return []
    return sorted(
        p.name.removesuffix(".json")
        for p in folder.glob("*.json")
        if NAME_RE.fullmatch(p.name.removesuffix(".json"))
    )


def find_saved(name: str) -> SavedRecipe | None:
    """The saved recipe `name`, None when there is no such file (or `name` could not be one)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in _RECIPES:
        return None
    path = recipe_dir() / f"{name}.json"
    return read_saved(path) if path.is_file() else None


def saved_recipes() -> dict[str, SavedRecipe]:
    """Every saved recipe by name; a damaged file is a RecipeError naming it."""
    return {name: read_saved(recipe_dir() / f"{name}.json") for name in saved_names()}


def save_recipe(recipe: Recipe, measured: dict[str, Any], replace: bool = False) -> Path:
    """Write `recipe` (and what it was measured on) as `recipe_dir()/NAME.json`, atomically.

    An existing file is replaced only with `replace`."""
    path = recipe_path(recipe.name)
    if path.exists() and not replace:
        raise RecipeError(f"recipe {recipe.name!r} is already saved in {path}; delete it first")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        path,
        {"format": FORMAT, "version": VERSION, "recipe": recipe.to_dict(), "measured": measured},
    )
    return path
