"""Reading the YAML files users write (select configs, recipes, evaluation recipes)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ConfigError


def read_yaml(path: str | os.PathLike, what: str = "config file") -> Any:
    """The parsed content of a YAML file; every failure is a one-line :class:`ConfigError`
    naming the file (missing, a folder, not UTF-8, malformed YAML with its line)."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} not found", file=str(path)) from None
    except IsADirectoryError:
        raise ConfigError(f"{what} is a folder, expected a YAML file", file=str(path)) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} is not UTF-8 text (byte {e.start})", file=str(path)) from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} ({e.strerror})", file=str(path)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"malformed YAML{where} ({str(e).splitlines()[0]})", file=str(path)) from None
