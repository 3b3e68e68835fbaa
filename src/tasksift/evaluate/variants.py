"""Arm settings: one method evaluated under another feature setting, as its own arm.

A method entry of an evaluation recipe may end in square brackets holding ``key=value``
settings of that arm's features::

    methods: [tsds, "tsds [embed_text=prompt]", "answer-style -> tsds"]

``tsds [embed_text=prompt]`` is an arm of its own (its label, arm id and rows keep the whole
string) that selects with ``tsds`` from embeddings of the rows' prompts only, where plain
``tsds`` embeds prompt and response together. The settings change the features only: the
method and its options (``method_options`` under the whole label, else under the method's
name) are those of the bracket-less spec, and feasibility is that of the method.

Settings: ``embed_text`` (``text``: prompt and response, the default; ``prompt``;
``response``), as ``tasksift select --embed-text``.
"""
from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigError

#: setting -> its allowed values
ARM_SETTINGS: dict[str, tuple[str, ...]] = {"embed_text": ("text", "prompt", "response")}

_NOTE = re.compile(r"^(?P<spec>.*?)\s*\[(?P<settings>[^\[\]]*)\]\s*$", re.S)


def split_arm(label: Any) -> tuple[Any, dict[str, str]]:
    """``"tsds [embed_text=prompt]"`` -> ``("tsds", {"embed_text": "prompt"})``; a label
    without a trailing ``[...]`` (or a non-string spec) comes back unchanged with ``{}``.
    ConfigError for an unknown setting or value, or an empty spec."""
    if not isinstance(label, str):
        return label, {}
    m = _NOTE.match(label)
    if not m:
        return label, {}
    spec = " ".join(m["spec"].split())
    if not spec:
        raise ConfigError(f"method {label!r}: nothing before the [settings]")
    settings: dict[str, str] = {}
    for part in m["settings"].split(","):
        if not part.strip():
            continue
        key, eq, value = (s.strip() for s in part.partition("="))
        if not eq or key not in ARM_SETTINGS:
            raise ConfigError(f"method {label!r}: unknown arm setting {part.strip()!r}; settings: "
                              + ", ".join(f"{k}={'|'.join(v)}" for k, v in ARM_SETTINGS.items()))
        if value not in ARM_SETTINGS[key]:
            raise ConfigError(f"method {label!r}: {key} must be one of {', '.join(ARM_SETTINGS[key])}, got {value!r}")
        if key in settings and settings[key] != value:
            raise ConfigError(f"method {label!r}: {key} given twice")
        settings[key] = value
    if not settings:
        raise ConfigError(f"method {label!r}: empty [settings]")
    return spec, settings


def method_of(label: Any) -> Any:
    """The method spec an arm label selects with (its settings stripped)."""
    return split_arm(label)[0]


def method_parts(label: Any) -> list[str]:
    """The registered methods an arm label runs: ``"dedup -> knn"`` -> ``["dedup", "knn"]``,
    ``"knn [embed_text=prompt]"`` -> ``["knn"]`` (a label whose brackets are not valid
    settings is split as it stands)."""
    try:
        spec = str(method_of(str(label)))
    except ConfigError:
        spec = str(label)
    return [p.strip() for p in spec.split("->") if p.strip()]
