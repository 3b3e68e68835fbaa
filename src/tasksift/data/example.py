"""The normalised example every stage works on."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


def content_id(messages: list[dict[str, str]]) -> str:
    """Stable id of an example: sha1 of its normalised conversation (roles and contents).

    The id depends only on the content, never on the file, row number or layout, so the
    same example loaded from alpaca JSON or from a sharegpt Parquet file shares its cache
    entries.
    """
    canon = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False,
                       separators=(",", ":"))
    return hashlib.sha1(canon.encode("utf-8")).hexdigest()[:20]


@dataclass
class Example:
    """One normalised example.

    ``messages`` is the conversation in OpenAI form (``system``/``user``/``assistant``
    roles); a plain-text example is a single ``assistant`` message with no prompt (all its
    tokens are "response"). ``raw`` is the original row, untouched, which is what gets
    written back to the output.
    """

    messages: list[dict[str, str]]
    raw: Any
    row: int
    source: str | None = None
    layout: str = "text"
    id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.id:
            self.id = content_id(self.messages)

    @property
    def prompt(self) -> str:
        """Everything before the last assistant turn, joined as plain text."""
        return "\n\n".join(m["content"] for m in self.messages[:-1]) if self.is_chat else ""

    @property
    def response(self) -> str:
        """The last assistant turn (the whole text for plain-text examples)."""
        return self.messages[-1]["content"]

    @property
    def is_chat(self) -> bool:
        return len(self.messages) > 1

    @property
    def text(self) -> str:
        """Prompt and response as one plain string (the default text to embed)."""
        p = self.prompt
        return f"{p}\n\n{self.response}" if p else self.response
