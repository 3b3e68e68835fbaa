"""Export a subset in one training layout, whatever layouts the pool mixed.

Rows are built from each :class:`~tasksift.data.example.Example`'s normalised ``messages``
(never from the raw row), so a folder of FLAN TSVs, alpaca JSON and sharegpt Parquet files
exports as one uniform file. Each layout reads back through tasksift's own loader to the same
examples (same messages, same ids):

- ``messages``: ``{"messages": [{"role", "content"}, ...]}`` (OpenAI; TRL's conversational
  language-modeling format).
- ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|"system"|"tool", "value"}, ...]}``.
- ``alpaca``: ``{"instruction", "input": "", "output", "system", "history": [[q, a], ...]}``;
  a conversation that is not (system?) user/assistant pairs cannot be written (one line
  naming the row; use ``messages`` or ``sharegpt``). A plain-text example has an empty
  instruction.
- ``llamafactory``: alpaca when every selected example fits it, else sharegpt when every one
  fits LLaMA-Factory's rules (optional system first, then user|tool / assistant pairs), plain
  ``{"text"}`` rows (its pre-training format) when every example is plain text; plus the
  ``dataset_info.json`` entry (:func:`llamafactory_entry`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from ..errors import ConfigError, DataError
from .example import Example

EXPORTS = ("messages", "sharegpt", "alpaca", "llamafactory")
#: Output formats an export can be written in (CSV/TSV cannot hold the nested turns).
EXPORT_FORMATS = ("jsonl", "json", "parquet")
#: The dataset name of the ``dataset_info.json`` entry (``dataset: tasksift_selected``).
LLAMAFACTORY_NAME = "tasksift_selected"
SHAREGPT_FROM = {"user": "human", "assistant": "gpt", "system": "system", "tool": "tool"}


class ExportProblem(Exception):
    """An example that the chosen layout cannot hold (the reason is the message)."""


def check_export(export: str | None, fmt: str | None) -> str | None:
    """The output format for ``export`` (:func:`export_format`); ConfigError for an unknown
    export. No export: ``fmt`` unchanged."""
    if export is None:
        return fmt
    if export not in EXPORTS:
        raise ConfigError(f"unknown export '{export}'; choose from {', '.join(EXPORTS)}")
    return export_format(fmt, export)


def export_format(fmt: str | None, export: str) -> str:
    """``fmt`` or jsonl; ConfigError for a format that cannot hold nested turns."""
    fmt = fmt or "jsonl"
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--export {export} writes nested turns: use --format {', '.join(EXPORT_FORMATS)}, "
                          f"not {fmt}")
    return fmt


def _is_text(messages: list[dict[str, str]]) -> bool:
    return len(messages) == 1 and messages[0]["role"] == "assistant"


def alpaca_problem(messages: list[dict[str, str]]) -> str | None:
    """Why these messages cannot be an alpaca row read back unchanged (None: they can)."""
    if _is_text(messages):
        return None if messages[0]["content"].strip() else "it is empty"
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    if messages[0]["role"] == "system" and not messages[0]["content"].strip():
        return "its system message is empty"
    if len(turns) % 2 or any(t["role"] != ("user" if i % 2 == 0 else "assistant") for i, t in enumerate(turns)):
        roles = "/".join(m["role"] for m in messages)
        return f"its turns ({roles}) are not user/assistant pairs"
    if not turns[-2]["content"].strip():
        return "its last user turn is empty"
    return None


def llamafactory_sharegpt_problem(messages: list[dict[str, str]]) -> str | None:
    """Why LLaMA-Factory's sharegpt reader would drop these messages (None: it keeps them)."""
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    ok = len(turns) >= 2 and len(turns) % 2 == 0 and all(
        t["role"] in (("user", "tool") if i % 2 == 0 else ("assistant",)) for i, t in enumerate(turns))
    return None if ok else f"its turns ({'/'.join(m['role'] for m in messages)}) do not alternate user and assistant"


def messages_row(ex: Example) -> dict[str, Any]:
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in ex.messages]}


def sharegpt_row(ex: Example) -> dict[str, Any]:
    return {"conversations": [{"from": SHAREGPT_FROM[m["role"]], "value": m["content"]} for m in ex.messages]}


def alpaca_row(ex: Example) -> dict[str, Any]:
    problem = alpaca_problem(ex.messages)
    if problem:
        raise ExportProblem(f"cannot be written as alpaca: {problem}; use --export messages or sharegpt")
    msgs = ex.messages
    system = msgs[0]["content"] if msgs[0]["role"] == "system" else ""
    turns = msgs[1:] if system else msgs
    if _is_text(msgs):
        return {"instruction": "", "input": "", "output": msgs[0]["content"], "system": "", "history": []}
    history = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 2, 2)]
    return {"instruction": turns[-2]["content"], "input": "", "output": turns[-1]["content"],
            "system": system, "history": history}


def text_row(ex: Example) -> dict[str, Any]:
    if not _is_text(ex.messages):
        raise ExportProblem("is a conversation, not plain text")
    return {"text": ex.messages[0]["content"]}


#: Row layout -> the function building an exported row from an Example.
ROW_BUILDERS: dict[str, Callable[[Example], dict[str, Any]]] = {
    "messages": messages_row, "sharegpt": sharegpt_row, "alpaca": alpaca_row, "text": text_row}


def export_row(ex: Example, layout: str, file: str | None = None) -> dict[str, Any]:
    """The exported row of ``ex`` in a row layout (a key of :data:`ROW_BUILDERS`); a
    one-line DataError naming the example's file and row when the layout cannot hold it."""
    try:
        return ROW_BUILDERS[layout](ex)
    except ExportProblem as e:
        raise DataError(f"selected example {e}", file=ex.source or file, row=ex.row) from None


def row_layout(export: str, batches: Iterable[list[Example]], file: str | None = None) -> str:
    """The row layout that ``export`` writes for these examples: the export itself, or for
    ``llamafactory`` alpaca, sharegpt or text (see the module doc); one line naming the first
    example that fits none of them."""
    if export != "llamafactory":
        return export
    alpaca = sharegpt = True
    first_chat = first_text = first_misfit = None
    for batch in batches:
        for ex in batch:
            if _is_text(ex.messages):
                first_text = first_text or ex
                continue
            first_chat = first_chat or ex
            alpaca = alpaca and alpaca_problem(ex.messages) is None
            if llamafactory_sharegpt_problem(ex.messages) is not None:
                sharegpt, first_misfit = False, first_misfit or ex
    if first_chat is None:
        return "text"
    if first_text is not None:
        raise DataError("selected example is plain text (no prompt) while others are conversations: "
                        "LLaMA-Factory needs one kind per dataset; use --export messages",
                        file=first_text.source or file, row=first_text.row)
    if alpaca:
        return "alpaca"
    if sharegpt:
        return "sharegpt"
    problem = llamafactory_sharegpt_problem(first_misfit.messages)
    raise DataError(f"selected example cannot be trained by LLaMA-Factory: {problem}; use --export messages",
                    file=first_misfit.source or file, row=first_misfit.row)


def llamafactory_entry(layout: str, file_name: str) -> dict[str, Any]:
    """The ``dataset_info.json`` entry describing ``file_name`` written in ``layout``
    (LLaMA-Factory's data/README.md: alpaca columns, sharegpt columns and tags, or the
    pre-training ``prompt: text`` column)."""
    if layout == "alpaca":
        return {"file_name": file_name, "formatting": "alpaca",
                "columns": {"prompt": "instruction", "query": "input", "response": "output",
                            "system": "system", "history": "history"}}
    if layout == "sharegpt":
        return {"file_name": file_name, "formatting": "sharegpt", "columns": {"messages": "conversations"},
                "tags": {"role_tag": "from", "content_tag": "value", "user_tag": SHAREGPT_FROM["user"],
                         "assistant_tag": SHAREGPT_FROM["assistant"], "observation_tag": SHAREGPT_FROM["tool"],
                         "system_tag": SHAREGPT_FROM["system"]}}
    if layout == "text":
        return {"file_name": file_name, "columns": {"prompt": "text"}}
    raise ValueError(f"no LLaMA-Factory entry for layout {layout!r}")
