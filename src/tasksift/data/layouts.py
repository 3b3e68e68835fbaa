"""Detect the layout of raw rows and normalise each row into an :class:`Example`.

Layouts: ``messages`` (OpenAI role/content), ``sharegpt`` (conversations from/value),
``alpaca`` (instruction/input/output, optional history/system; ``response`` accepted for
``output``), ``self_instruct`` (instruction + instances), ``prompt_completion``,
``prompt_response``, ``question_answer``, ``input_target`` (BIG-bench/BBH),
``hh_rlhf`` ("\\n\\nHuman: ... \\n\\nAssistant: ..." transcripts, the ``chosen`` side),
``oasst_tree`` (OpenAssistant message trees: one example per assistant reply, with its
thread), ``flan_cot`` (headerless question/answer/rationale TSV), ``text``, and ``fields``
(the user names the fields).
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping

from ..errors import DataError
from .example import Example
from .readers import RawRows

ROLE_MAP = {"user": "user", "human": "user", "prompter": "user", "question": "user",
            "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
            "chatgpt": "assistant", "system": "system", "tool": "tool", "function": "tool"}
FIELD_KEYS = ("prompt", "input", "response", "text", "messages", "system")


class RowError(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def _get(row: Mapping, path: str) -> Any:
    cur: Any = row
    for part in path.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise RowError(path, "missing field")
    return cur


def _str(row: Mapping, key: str, *, required: bool = True, response: bool = False) -> str:
    """The text of ``row[key]``. A number reads as its decimal text (``"answer": 42``); a
    boolean only as a response (``"answer": true``, BoolQ): a boolean prompt is a mistake."""
    if key not in row or row[key] is None:
        if required:
            raise RowError(key, "missing field")
        return ""
    v = row[key]
    if isinstance(v, bool) and not response:
        raise RowError(key, "expected text, got a boolean")
    if isinstance(v, (int, float, bool)):
        return str(v)
    if not isinstance(v, str):
        raise RowError(key, f"expected text, got {type(v).__name__}")
    return v


def _pair(prompt: str, response: str, system: str = "") -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system.strip() else []
    if prompt.strip():
        msgs.append({"role": "user", "content": prompt})
    msgs.append({"role": "assistant", "content": response})
    if not prompt.strip() and not response.strip():
        raise RowError(None, "example is empty (no prompt and no response)")
    return msgs


def _turns(turns: Any, field: str, role_key: str, content_key: str) -> list[dict[str, str]]:
    if isinstance(turns, str):
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError:
            raise RowError(field, "expected a list of turns") from None
    if not isinstance(turns, list) or not turns:
        raise RowError(field, "expected a non-empty list of turns")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, Mapping):
            raise RowError(f"{field}[{i}]", "expected an object with role and content")
        rk = role_key if role_key in t else ("role" if "role" in t else "from")
        ck = content_key if content_key in t else ("content" if "content" in t else "value")
        if rk not in t or ck not in t:
            raise RowError(f"{field}[{i}]", f"turn needs '{role_key}' and '{content_key}'")
        role = ROLE_MAP.get(str(t[rk]).lower())
        if role is None:
            raise RowError(f"{field}[{i}].{rk}", f"unknown role {t[rk]!r}")
        content = t[ck]
        if isinstance(content, list):  # OpenAI content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise RowError(f"{field}[{i}].{ck}", f"expected text, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    while out and out[-1]["role"] != "assistant":
        out.pop()  # a trailing user turn has no response to learn from
    if not out:
        raise RowError(field, "conversation has no assistant turn")
    return out


def _messages(row, fields):
    if "messages" not in row:
        raise RowError("messages", "missing field")
    return _turns(row["messages"], "messages", "role", "content")


def _sharegpt(row, fields):
    if "conversations" not in row:
        raise RowError("conversations", "missing field")
    return _turns(row["conversations"], "conversations", "from", "value")


def _alpaca(row, fields):
    resp_key = "response" if "response" in row and "output" not in row else "output"
    instr, inp = _str(row, "instruction"), _str(row, "input", required=False)
    prompt = f"{instr}\n\n{inp}" if inp.strip() else instr
    msgs = []
    system = _str(row, "system", required=False)
    if system.strip():
        msgs.append({"role": "system", "content": system})
    history = row.get("history") or []
    if isinstance(history, str):
        history = json.loads(history) if history.strip() else []
    for i, turn in enumerate(history):
        if not isinstance(turn, (list, tuple)) or len(turn) != 2:
            raise RowError(f"history[{i}]", "expected a [question, answer] pair")
        msgs += [{"role": "user", "content": str(turn[0])}, {"role": "assistant", "content": str(turn[1])}]
    return msgs + _pair(prompt, _str(row, resp_key, response=True))


def _self_instruct(row, fields):
    inst = row.get("instances")
    if not isinstance(inst, list) or not inst or not isinstance(inst[0], Mapping):
        raise RowError("instances", "expected a non-empty list of {input, output}")
    inp = str(inst[0].get("input") or "")
    instr = _str(row, "instruction")
    return _pair(f"{instr}\n\n{inp}" if inp.strip() else instr, str(inst[0].get("output") or ""))


_EOT = re.compile(r"\s*<\|endoftext\|>\s*$")


def _prompt_completion(row, fields):
    return _pair(_str(row, "prompt"), _EOT.sub("", _str(row, "completion", response=True)).strip())


def _prompt_response(row, fields):
    return _pair(_str(row, "prompt"), _str(row, "response", response=True))


def _question_answer(row, fields):
    return _pair(_str(row, "question"), _str(row, "answer", response=True))


def _input_target(row, fields):
    target = row.get("target")
    if isinstance(target, list):
        target = target[0] if target else ""
    if "target" not in row:
        raise RowError("target", "missing field")
    return _pair(_str(row, "input"), str(target))


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def _hh_rlhf(row, fields):
    text = _str(row, "chosen")
    parts = _HH_TURN.split("\n\n" + text.lstrip("\n") if not text.startswith("\n\n") else text)
    turns, i = [], 1
    while i + 1 < len(parts):
        turns.append({"role": "user" if parts[i] == "Human" else "assistant", "content": parts[i + 1].strip()})
        i += 2
    if not turns:
        raise RowError("chosen", "no 'Human:'/'Assistant:' turns found")
    return _turns(turns, "chosen", "role", "content")


def _flan_cot(row, fields):
    q = _str(row, "column_1").replace("\\n", "\n")
    a, rationale = _str(row, "column_2"), _str(row, "column_3").replace("\\n", "\n")
    return _pair(q, f"{rationale.strip()}\nSo the answer is {a.strip()}.")


def _text(row, fields):
    key = "text" if "text" in row else "content"
    t = _str(row, key)
    if not t.strip():
        raise RowError(key, "text is empty")
    return [{"role": "assistant", "content": t}]


def _fields(row, fields):
    def val(path: str) -> str:
        v = _get(row, path)
        if isinstance(v, list):
            return "\n".join(str(x) for x in v)
        return "" if v is None else str(v)

    if "messages" in fields:
        return _turns(_get(row, fields["messages"]), fields["messages"], "role", "content")
    if "text" in fields:
        t = val(fields["text"])
        if not t.strip():
            raise RowError(fields["text"], "text is empty")
        return [{"role": "assistant", "content": t}]
    if "response" not in fields:
        raise RowError(None, "name the response field (response=...) or a text/messages field")
    prompt = val(fields["prompt"]) if "prompt" in fields else ""
    if "input" in fields:
        inp = val(fields["input"])
        prompt = f"{prompt}\n\n{inp}" if inp.strip() else prompt
    system = val(fields["system"]) if "system" in fields else ""
    return _pair(prompt, val(fields["response"]), system)


#: name -> (detector on a row's keys, converter)
LAYOUTS: dict[str, tuple[Callable[[set], bool], Callable]] = {
    "messages": (lambda k: "messages" in k, _messages),
    "sharegpt": (lambda k: "conversations" in k, _sharegpt),
    "oasst_tree": (lambda k: {"message_id", "parent_id", "role", "text"} <= k, None),
    "self_instruct": (lambda k: {"instruction", "instances"} <= k, _self_instruct),
    "alpaca": (lambda k: "instruction" in k and ("output" in k or "response" in k), _alpaca),
    "prompt_completion": (lambda k: {"prompt", "completion"} <= k, _prompt_completion),
    "prompt_response": (lambda k: {"prompt", "response"} <= k, _prompt_response),
    "question_answer": (lambda k: {"question", "answer"} <= k, _question_answer),
    "input_target": (lambda k: {"input", "target"} <= k, _input_target),
    "hh_rlhf": (lambda k: "chosen" in k, _hh_rlhf),
    "flan_cot": (lambda k: k == {"column_1", "column_2", "column_3"}, _flan_cot),
    "text": (lambda k: "text" in k or k == {"content"}, _text),
}


def layout_names() -> list[str]:
    return [*LAYOUTS, "fields"]


def flag(role: str, name: str) -> str:
    """The command-line flag that sets ``name`` ("fields", "layout") for the input ``role``:
    ``--target-fields`` for the target, ``--fields`` for the pool."""
    return f"--target-{name}" if role == "target" else f"--{name}"


def parse_fields(spec: str | Mapping | None, role: str = "pool") -> dict[str, str]:
    """``"prompt=question,response=answer"`` or a mapping -> validated dict."""
    if not spec:
        return {}
    if isinstance(spec, str):
        out = {}
        for part in spec.split(","):
            if "=" not in part:
                raise DataError(f"bad {flag(role, 'fields')} entry {part!r}: expected key=field, keys {FIELD_KEYS}")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
        spec = out
    if not isinstance(spec, Mapping):
        raise DataError(f"{flag(role, 'fields')} must be key=field pairs, got {spec!r}")
    bad = set(spec) - set(FIELD_KEYS)
    if bad:
        raise DataError(f"unknown {flag(role, 'fields')} key(s) {sorted(bad)}; use {', '.join(FIELD_KEYS)}")
    return dict(spec)


def row_layout(keys: set) -> str | None:
    """The first layout whose detector accepts a row with these keys (None: no layout does)."""
    for name, (detect, _) in LAYOUTS.items():
        if detect(keys):
            return name
    return None


def detect_layout(raw: RawRows, fields: Mapping[str, str] | None = None, role: str = "pool") -> str:
    """The layout of the file's first row (see :func:`normalise` for rows that differ)."""
    if fields:
        return "fields"
    first = next((r for r in raw.rows if isinstance(r, Mapping)), None)
    if first is None:
        raise DataError("rows are not objects: cannot detect a layout", file=raw.path, row=raw.row_numbers[0] if raw.row_numbers else None)
    keys = set(first)
    name = row_layout(keys)
    if name is not None:
        return name
    raise DataError(f"unknown layout (fields: {', '.join(sorted(map(str, keys))[:12])}); "
                    f"name the fields, e.g. {flag(role, 'fields')} prompt=<field>,response=<field>, or pass "
                    f"{flag(role, 'layout')} ({', '.join(layout_names())})", file=raw.path)


def _oasst_examples(raw: RawRows, source: str | None, skipped: list) -> list[Example]:
    """One example per assistant reply: its thread from the root (or from the oldest
    ancestor present in the file) to the reply. A reply whose own prompt is not in the file
    (partial exports are common) cannot be used and is counted in ``skipped``."""
    by_id = {r.get("message_id"): r for r in raw.rows}
    out = []
    for r, n in zip(raw.rows, raw.row_numbers):
        if r.get("role") != "assistant":
            continue
        if r.get("deleted"):
            skipped.append({"file": raw.path, "row": n, "reason": "field 'deleted': reply deleted by moderators"})
            continue
        chain, cur = [], r
        while cur is not None:
            chain.append(cur)
            cur = by_id.get(cur.get("parent_id"))
        while chain and chain[-1].get("role") != "prompter":
            chain.pop()  # the thread must open with a user turn
        if len(chain) < 2:
            skipped.append({"file": raw.path, "row": n,
                            "reason": "field 'parent_id': the reply's prompt is not in the file"})
            continue
        turns = [{"role": ROLE_MAP[c["role"]], "content": c.get("text") or ""} for c in reversed(chain)]
        out.append(Example(messages=turns, raw=r, row=n, source=source, layout="oasst_tree"))
    return out


def _row_converter(row: Any, layout: str, detected: bool) -> tuple[str, Callable]:
    """The layout and converter for one row. A forced layout (``detected`` False) applies to
    every row. A detected one is the first row's; a later row whose keys fit another layout
    better (a file mixing alpaca, messages, ... rows) is read with its own. A row that fits
    no layout keeps the file's, so its error names the field it lacks."""
    if detected and isinstance(row, Mapping) and layout in LAYOUTS and not LAYOUTS[layout][0](set(row)):
        own = row_layout(set(row))
        if own is not None and LAYOUTS[own][1] is not None:
            return own, LAYOUTS[own][1]
    return layout, (_fields if layout == "fields" else LAYOUTS[layout][1])


def normalise(raw: RawRows, layout: str = "auto", fields: Mapping[str, str] | None = None, *,
              source: str | None = None, skip_bad: bool = False, role: str = "pool",
              detected: bool = False) -> tuple[list[Example], str]:
    """Examples from raw rows, and the layout used ("mixed" when detected rows differ).
    Skipped rows go to ``raw.skipped``. ``role`` ("pool"/"target") picks the flags that
    error messages suggest. ``detected``: ``layout`` was detected on the whole file (read in
    batches), so a row of another layout is read with its own, as under ``"auto"``."""
    fields = parse_fields(fields, role)
    if not raw.rows:
        return [], layout
    if layout == "auto":
        detected, layout = True, detect_layout(raw, fields, role)
    elif layout != "fields" and layout not in LAYOUTS:
        raise DataError(f"unknown {flag(role, 'layout')} '{layout}'; choose from {', '.join(layout_names())}")
    if layout == "fields" and not fields:
        raise DataError(f"layout 'fields' needs {flag(role, 'fields')}, e.g. prompt=question,response=answer")
    if layout == "oasst_tree":
        return _oasst_examples(raw, source, raw.skipped), layout
    hint = f"; set {flag(role, 'layout')} or {flag(role, 'fields')}" if not detected else ""
    out, used = [], set()
    for r, n in zip(raw.rows, raw.row_numbers):
        row_lay, convert = _row_converter(r, layout, detected)
        try:
            if not isinstance(r, Mapping):
                raise RowError(None, f"expected an object, got {type(r).__name__}")
            msgs = convert(r, fields)
        except RowError as e:
            msg = e.message if row_lay == "fields" else f"{e.message} (layout {row_lay}{hint})"
            if not skip_bad:
                raise DataError(msg, file=raw.path, row=n, field=e.field) from None
            where = f"field '{e.field}': " if e.field else ""
            raw.skipped.append({"file": raw.path, "row": n, "reason": where + e.message})
            continue
        except (json.JSONDecodeError, TypeError, ValueError, KeyError, AttributeError) as e:
            if not skip_bad:
                raise DataError(f"cannot read row as layout {row_lay} ({type(e).__name__}: {e}){hint}",
                                file=raw.path, row=n) from None
            raw.skipped.append({"file": raw.path, "row": n, "reason": f"{type(e).__name__}: {e}"})
            continue
        used.add(row_lay)
        out.append(Example(messages=msgs, raw=r, row=n, source=source, layout=row_lay))
    return out, (used.pop() if len(used) == 1 else "mixed" if used else layout)
