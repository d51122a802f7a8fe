"""Themes from TOML files, validated colour by colour, turned into Textual themes."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from textual.color import Color, ColorParseError
from textual.theme import Theme

from kmtui.core.safetext import clean

COLOURS = (
    "primary",
    "secondary",
    "accent",
    "foreground",
    "background",
    "surface",
    "panel",
    "boost",
    "warning",
    "error",
    "success",
)
DEFAULT_THEME = "kmtui-dark"
LEGIBLE = {"text-disabled": "auto 55%"}
"""Variables every theme gets unless it sets them: Textual's placeholder text (38%) becomes dark
grey on black (2.8:1) or light grey on white (1.3:1) once a 16-colour terminal rounds it."""
# The repository's themes/ (source checkout or editable install), or the copy a wheel carries.
_HERE = Path(__file__).resolve()
SHIPPED_DIR = next(
    (d for d in (_HERE.parents[2] / "themes", _HERE.parents[1] / "_themes") if d.is_dir()),
    _HERE.parents[2] / "themes",
)


@dataclass
class Loaded:
    """Themes that validated, and one line per file that did not."""

    themes: list[Theme] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _colour(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a colour string")
    try:
        Color.parse(value)
    except ColorParseError:
        raise ValueError(f"{where} is not a colour: {clean(value, 40)!r}") from None
    return value


def parse(data: dict[str, object]) -> Theme:
    """One theme from its TOML table; ValueError names the first bad field."""
    name = data.get("name")
    if not isinstance(name, str) or not name or clean(name) != name:
        raise ValueError("name must be plain text")
    if "primary" not in data:
        raise ValueError("primary colour is missing")
    unknown = sorted(set(data) - {"name", "dark", "variables", *COLOURS})
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(clean(u, 30) for u in unknown)}")
    colours = {k: _colour(data[k], k) for k in COLOURS if k in data}
    dark = data.get("dark", True)
    if not isinstance(dark, bool):
        raise ValueError("dark must be true or false")
    raw_vars = data.get("variables", {})
    if not isinstance(raw_vars, dict):
        raise ValueError("variables must be a table")
    variables = LEGIBLE | {str(k): str(v) for k, v in raw_vars.items()}
    for key, value in variables.items():
        if key.endswith(("-color", "-background", "-foreground")):
            _colour(value, f"variables.{key}")
    return Theme(
        name=name,
        primary=colours["primary"],
        secondary=colours.get("secondary"),
        accent=colours.get("accent"),
        foreground=colours.get("foreground"),
        background=colours.get("background"),
        surface=colours.get("surface"),
        panel=colours.get("panel"),
        boost=colours.get("boost"),
        warning=colours.get("warning"),
        error=colours.get("error"),
        success=colours.get("success"),
        dark=dark,
        variables=variables,
    )


def load(*directories: Path) -> Loaded:
    """Every *.toml in the directories, later ones overriding earlier ones by name."""
    loaded = Loaded()
    by_name: dict[str, Theme] = {}
    for directory in directories:
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.toml")):
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
                theme = parse(data)
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError) as exc:
                loaded.problems.append(f"{clean(path.name, 60)}: {clean(exc, 120)}")
                continue
            by_name[theme.name] = theme
    loaded.themes = list(by_name.values())
    return loaded
