"""Where kmtui keeps its files: platformdirs by default, everything under KMTUI_HOME when set."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP = "kmtui"


@dataclass(frozen=True)
class Paths:
    config_dir: Path
    data_dir: Path
    state_dir: Path
    log_dir: Path
    home: Path | None = None

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def database(self) -> Path:
        return self.data_dir / "kmtui.db"

    @property
    def user_themes_dir(self) -> Path:
        return self.config_dir / "themes"

    @property
    def demo_home(self) -> Path:
        return self.data_dir / "demo"

    def ensure(self) -> Paths:
        for d in (self.config_dir, self.data_dir, self.state_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self

    def as_dict(self) -> dict[str, str]:
        return {
            "home": str(self.home) if self.home else "",
            "config_dir": str(self.config_dir),
            "config_file": str(self.config_file),
            "data_dir": str(self.data_dir),
            "database": str(self.database),
            "state_dir": str(self.state_dir),
            "log_dir": str(self.log_dir),
            "user_themes_dir": str(self.user_themes_dir),
            "demo_home": str(self.demo_home),
        }


def under(home: Path) -> Paths:
    """Every location inside one directory (KMTUI_HOME, --home, the demo)."""
    home = home.expanduser().absolute()
    return Paths(
        config_dir=home / "config",
        data_dir=home / "data",
        state_dir=home / "state",
        log_dir=home / "log",
        home=home,
    )


def resolve(home: str | os.PathLike[str] | None = None) -> Paths:
    """--home wins, then KMTUI_HOME, then the platform's user directories."""
    chosen = home if home else os.environ.get("KMTUI_HOME")
    if chosen:
        return under(Path(chosen))
    return Paths(
        config_dir=Path(platformdirs.user_config_dir(APP)),
        data_dir=Path(platformdirs.user_data_dir(APP)),
        state_dir=Path(platformdirs.user_state_dir(APP)),
        log_dir=Path(platformdirs.user_log_dir(APP)),
    )
