"""Target tasks for evaluation: a few target examples (what selectors see) and a disjoint,
gold-labelled held-out test part (what fine-tuned models are scored on).

Loaders follow the ``../shared/data/targets`` layout:

* ``gsm8k``: ``train.jsonl`` -> target examples, ``test.jsonl`` -> test (exact match on the
  number after ``####``; the loss scorer uses the full worked answer);
* ``bbh``: ``<subtask>.json`` files, each shuffled and split (``subtasks: [...]``); MC tasks
  (targets like ``(B)`` or a small label set) get options for the multiple-choice scorer;
* ``csqa``: ``train_rand_split.jsonl`` -> target, ``dev_rand_split.jsonl`` -> test (5-way MC);
* ``xcopa``: ``val.<lang>.jsonl`` -> target, ``test.<lang>.jsonl`` -> test (``languages``);
* ``strategyqa``: ``task.json`` shuffled and split (yes/no);
* ``jsonl``: generic ``target``/``test`` files with ``prompt``, ``answer`` and optional
  ``gold``, ``choices``, ``label``, ``extractor``, ``subtask``, ``bare_answer`` fields (GSM8K-style
  rows, ``extractor: gsm8k``, default ``bare_answer`` to ``gold``); an optional ``validation``
  file of the same form.

``load_task(spec, n_val=N)`` also draws ``N`` *validation* items (for the learning-rate sweep,
:mod:`.sweep`) from the target side, disjoint from the target examples and the test items: the
rows after the target examples in the same shuffle (GSM8K train, CommonsenseQA train, XCOPA val),
the rows after the test part (BBH, StrategyQA: these need ``n_test``), or the ``validation`` file
(``jsonl``). The target examples and test items are the same draws with or without them.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..data.example import Example
from ..errors import ConfigError, DataError


@dataclass
class TestItem:
    """One held-out test item.

    ``prompt``: the user turn; ``answer``: the gold response (scored by the loss scorer);
    ``gold``: the canonical answer compared after extraction (exact match); ``choices`` and
    ``label``: options for the multiple-choice scorer (None when the task has none);
    ``extractor``: the answer extractor's name (see :mod:`tasksift.evaluate.scorers`);
    ``subtask``: the test set it belongs to; ``key``: the text checked for contamination;
    ``bare_answer``: the final answer alone where ``answer`` carries more (GSM8K: the number,
    where ``answer`` is the worked solution), scored by ``loss_answer``; None otherwise.
    """

    __test__ = False  # not a pytest test class

    id: str
    prompt: str
    answer: str
    gold: str
    choices: list[str] | None = None
    label: int | None = None
    extractor: str = "exact"
    subtask: str = "all"
    key: str = ""
    bare_answer: str | None = None

    def __post_init__(self) -> None:
        if not self.key:
            self.key = self.prompt


@dataclass
class TaskData:
    """Target examples plus the disjoint test items of one task."""

    name: str
    target: list[Example]
    test: list[TestItem]
    info: dict[str, Any] = field(default_factory=dict)
    validation: list[TestItem] = field(default_factory=list)

    @property
    def subtasks(self) -> list[str]:
        return list(dict.fromkeys(t.subtask for t in self.test))


def _example(prompt: str, answer: str, row: int, source: str) -> Example:
    return Example([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                   raw={"prompt": prompt, "response": answer}, row=row, source=source, layout="messages")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise DataError("malformed JSON line", file=str(path), row=i) from None
    return rows


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise DataError("malformed JSON", file=str(path)) from None


def _take(rows: list, n: int | None, rng: random.Random) -> list:
    rows = list(rows)
    rng.shuffle(rows)
    return rows if n is None else rows[:n]


def _take_two(rows: list, n: int | None, n_val: int, rng: random.Random, what: str) -> tuple[list, list]:
    """The first ``n`` rows of one seeded shuffle (all when None) and the ``n_val`` after them
    (the same shuffle as :func:`_take`, so the first part does not depend on ``n_val``)."""
    rows = list(rows)
    rng.shuffle(rows)
    first = rows if n is None else rows[:int(n)]
    if n_val <= 0:
        return first, []
    if n is None or len(rows) - int(n) < n_val:
        have = 0 if n is None else max(0, len(rows) - int(n))
        raise ConfigError(f"{what}: {n_val} validation items asked for, {have} rows left after the first part")
    return first, rows[int(n):int(n) + n_val]


def _shares(total: int, parts: int) -> list[int]:
    """``total`` cut into ``parts`` near-equal integer shares (the first ones larger)."""
    return [total // parts + (1 if j < total % parts else 0) for j in range(parts)]


def gsm8k_gold(answer: str) -> str:
    """The number after ``####`` in a GSM8K answer, commas removed."""
    return answer.rsplit("####", 1)[-1].strip().replace(",", "")


def _gsm8k_item(r: Mapping[str, Any], item_id: str) -> TestItem:
    return TestItem(id=item_id, prompt=r["question"], answer=r["answer"], gold=gsm8k_gold(r["answer"]),
                    extractor="gsm8k", subtask="gsm8k", bare_answer=gsm8k_gold(r["answer"]))


def _load_gsm8k(path: Path, spec: Mapping[str, Any], rng: random.Random, n_val: int = 0) -> TaskData:
    train, val = _take_two(_read_jsonl(path / "train.jsonl"), spec.get("n_target", 50), n_val, rng, "gsm8k train.jsonl")
    test = _take(_read_jsonl(path / "test.jsonl"), spec.get("n_test", 200), rng)
    target = [_example(r["question"], r["answer"], i, "gsm8k/train") for i, r in enumerate(train)]
    items = [_gsm8k_item(r, f"gsm8k-{i}") for i, r in enumerate(test)]
    return TaskData("gsm8k", target, items, validation=[_gsm8k_item(r, f"gsm8k-val-{i}") for i, r in enumerate(val)])


_LETTER = re.compile(r"\(([A-Z])\)")


def bbh_item(row: Mapping[str, Any], task: str, labels: Sequence[str], i: int, tag: str = "") -> TestItem:
    """A BBH row as a test item (id ``bbh-<task>-<tag><i>``); options from ``(A)``-style
    choices in the input, else the task's label set when it is small (yes/no, True/False, ...)."""
    target = str(row["target"]).strip()
    choices: list[str] | None = None
    if _LETTER.fullmatch(target):
        letters = list(dict.fromkeys(_LETTER.findall(row["input"])))
        choices = [f"({c})" for c in letters] if f"({target[1]})" in [f"({c})" for c in letters] else None
    elif 1 < len(labels) <= 6:
        choices = list(labels)
    label = choices.index(target) if choices and target in choices else None
    return TestItem(id=f"bbh-{task}-{tag}{i}", prompt=row["input"], answer=target, gold=target,
                    choices=choices if label is not None else None, label=label, extractor="bbh", subtask=task)


def _load_bbh(path: Path, spec: Mapping[str, Any], rng: random.Random, n_val: int = 0) -> TaskData:
    subtasks = spec.get("subtasks")
    if not subtasks:
        raise ConfigError("bbh task needs 'subtasks' (file names under the bbh folder, without .json)")
    n_target, n_test = int(spec.get("n_target", 30)), spec.get("n_test", 100)
    if n_val and n_test is None:
        raise ConfigError("bbh: validation items come after the test part: set task.n_test")
    per_target = _shares(n_target, len(subtasks))
    per_val = _shares(int(n_val), len(subtasks))
    target: list[Example] = []
    items: list[TestItem] = []
    val: list[TestItem] = []
    for j, t in enumerate(subtasks):
        rows = _read_json(path / f"{t}.json").get("examples") or []
        if len(rows) < per_target[j] + 1:
            raise DataError(f"bbh task '{t}' has too few examples ({len(rows)})", file=str(path / f"{t}.json"))
        labels = sorted({str(r["target"]).strip() for r in rows})
        rows = _take(rows, None, rng)
        tgt, rest = rows[:per_target[j]], rows[per_target[j]:]
        extra = [] if n_test is None else rest[int(n_test):]
        rest = rest if n_test is None else rest[:int(n_test)]
        if len(extra) < per_val[j]:
            raise ConfigError(f"bbh task '{t}': {per_val[j]} validation items asked for, {len(extra)} rows left "
                              "after the target and test parts")
        target += [_example(r["input"], str(r["target"]).strip(), i, f"bbh/{t}") for i, r in enumerate(tgt)]
        items += [bbh_item(r, t, labels, i) for i, r in enumerate(rest)]
        val += [bbh_item(r, t, labels, i, "val-") for i, r in enumerate(extra[:per_val[j]])]
    return TaskData("bbh", target, items, validation=val)


def csqa_prompt(row: Mapping[str, Any]) -> tuple[str, list[str], int]:
    """CommonsenseQA question with lettered options; returns (prompt, options, label)."""
    q = row["question"]
    opts = [f"({c['label']}) {c['text']}" for c in q["choices"]]
    labels = [c["label"] for c in q["choices"]]
    prompt = f"{q['stem']}\nAnswer Choices: " + " ".join(opts)
    return prompt, opts, labels.index(row["answerKey"])


def _csqa_item(r: Mapping[str, Any], i: int) -> TestItem:
    p, opts, lab = csqa_prompt(r)
    return TestItem(id=f"csqa-{r.get('id', i)}", prompt=p, answer=opts[lab], gold=opts[lab][:3], choices=opts,
                    label=lab, extractor="mc_letter", subtask="csqa", key=r["question"]["stem"])


def _load_csqa(path: Path, spec: Mapping[str, Any], rng: random.Random, n_val: int = 0) -> TaskData:
    train, val = _take_two(_read_jsonl(path / "train_rand_split.jsonl"), spec.get("n_target", 50), n_val, rng,
                           "csqa train_rand_split.jsonl")
    dev = _take(_read_jsonl(path / "dev_rand_split.jsonl"), spec.get("n_test", None), rng)
    target = []
    for i, r in enumerate(train):
        p, opts, lab = csqa_prompt(r)
        target.append(_example(p, opts[lab], i, "csqa/train"))
    items = [_csqa_item(r, i) for i, r in enumerate(dev)]
    return TaskData("csqa", target, items, validation=[_csqa_item(r, i) for i, r in enumerate(val)])


def xcopa_prompt(row: Mapping[str, Any]) -> str:
    q = "What was the cause?" if row["question"] == "cause" else "What happened as a result?"
    return f"Premise: {row['premise']}\n{q}"


def _xcopa_item(r: Mapping[str, Any], lang: str, i: int, tag: str = "") -> TestItem:
    ch = [r["choice1"], r["choice2"]]
    lab = int(r["label"])
    return TestItem(id=f"xcopa-{lang}-{tag}{r.get('idx', i)}", prompt=xcopa_prompt(r), answer=ch[lab], gold=ch[lab],
                    choices=ch, label=lab, extractor="exact", subtask=f"xcopa-{lang}", key=r["premise"])


def _load_xcopa(path: Path, spec: Mapping[str, Any], rng: random.Random, n_val: int = 0) -> TaskData:
    langs = spec.get("languages") or ["it"]
    n_target, n_test = int(spec.get("n_target", 40)), spec.get("n_test", None)
    per = _shares(n_target, len(langs))
    per_val = _shares(int(n_val), len(langs))
    target: list[Example] = []
    items: list[TestItem] = []
    validation: list[TestItem] = []
    for j, lang in enumerate(langs):
        val, extra = _take_two(_read_jsonl(path / f"val.{lang}.jsonl"), per[j], per_val[j], rng, f"xcopa val.{lang}.jsonl")
        test = _take(_read_jsonl(path / f"test.{lang}.jsonl"), None if n_test is None else int(n_test), rng)
        for i, r in enumerate(val):
            ch = [r["choice1"], r["choice2"]]
            target.append(_example(xcopa_prompt(r), ch[int(r["label"])], i, f"xcopa/val.{lang}"))
        items += [_xcopa_item(r, lang, i) for i, r in enumerate(test)]
        validation += [_xcopa_item(r, lang, i, "val-") for i, r in enumerate(extra)]
    return TaskData("xcopa", target, items, validation=validation)


def _strategyqa_item(r: Mapping[str, Any], item_id: str) -> TestItem:
    yes = max(r["target_scores"], key=r["target_scores"].get)
    return TestItem(id=item_id, prompt=r["input"], answer=str(r["target"]), gold=yes, choices=["Yes", "No"],
                    label=0 if yes == "Yes" else 1, extractor="yesno", subtask="strategyqa")


def _load_strategyqa(path: Path, spec: Mapping[str, Any], rng: random.Random, n_val: int = 0) -> TaskData:
    f = path / "task.json" if path.is_dir() else path
    rows = _take(_read_json(f).get("examples") or [], None, rng)
    n_target = int(spec.get("n_target", 50))
    tgt, rest = rows[:n_target], rows[n_target:]
    extra: list = []
    if spec.get("n_test") is not None:
        rest, extra = rest[:int(spec["n_test"])], rest[int(spec["n_test"]):]
    elif n_val:
        raise ConfigError("strategyqa: validation items come after the test part: set task.n_test")
    if len(extra) < n_val:
        raise ConfigError(f"strategyqa: {n_val} validation items asked for, {len(extra)} rows left after the "
                          "target and test parts")
    target = [_example(r["input"], str(r["target"]), i, "strategyqa") for i, r in enumerate(tgt)]
    items = [_strategyqa_item(r, f"strategyqa-{i}") for i, r in enumerate(rest)]
    return TaskData("strategyqa", target, items,
                    validation=[_strategyqa_item(r, f"strategyqa-val-{i}") for i, r in enumerate(extra[:n_val])])


def _jsonl_rows(file: Path, n: int | None, rng: random.Random) -> list[dict]:
    rows = _take(_read_jsonl(file), n, rng)
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "prompt" not in r or "answer" not in r:
            raise DataError("each jsonl task row needs 'prompt' and 'answer'", file=str(file), row=i + 1)
    return rows


def _jsonl_item(r: Mapping[str, Any], spec: Mapping[str, Any], default_id: str) -> TestItem:
    return TestItem(id=str(r.get("id", default_id)), prompt=r["prompt"], answer=r["answer"],
                    gold=str(r.get("gold", r["answer"])), choices=r.get("choices"), label=r.get("label"),
                    extractor=r.get("extractor", spec.get("extractor", "exact")),
                    subtask=str(r.get("subtask", spec.get("name", "test"))), key=r.get("key", r["prompt"]),
                    bare_answer=r.get("bare_answer", r.get("gold") if r.get("extractor") == "gsm8k" else None))


def _load_jsonl(path: Path, spec: Mapping[str, Any], rng: random.Random, n_val: int = 0) -> TaskData:
    tp, sp = spec.get("target"), spec.get("test")
    if not tp or not sp:
        raise ConfigError("jsonl task needs 'target' and 'test' file paths")
    base = path if path else Path(".")
    tgt = _jsonl_rows(base / tp, spec.get("n_target"), rng)
    tst = _jsonl_rows(base / sp, spec.get("n_test"), rng)
    val: list[dict] = []
    if n_val:
        if not spec.get("validation"):
            raise ConfigError("jsonl task: validation items need a 'validation' file (rows like the test file's)")
        val = _jsonl_rows(base / spec["validation"], None, rng)
        if len(val) < n_val:
            raise ConfigError(f"{n_val} validation items asked for, the file has {len(val)}", file=str(base / spec["validation"]))
        val = val[:n_val]
    target = [_example(r["prompt"], r["answer"], i, "target") for i, r in enumerate(tgt)]
    items = [_jsonl_item(r, spec, f"test-{i}") for i, r in enumerate(tst)]
    return TaskData(str(spec.get("name", "jsonl")), target, items,
                    validation=[_jsonl_item(r, spec, f"val-{i}") for i, r in enumerate(val)])


_LOADERS = {"gsm8k": _load_gsm8k, "bbh": _load_bbh, "csqa": _load_csqa, "xcopa": _load_xcopa,
            "strategyqa": _load_strategyqa, "jsonl": _load_jsonl}


def load_task(spec: Mapping[str, Any], n_val: int = 0) -> TaskData:
    """Load the target examples and test items a recipe's ``task`` mapping describes, and
    ``n_val`` validation items (see the module docstring; 0: none).

    Sampling is seeded by ``spec["seed"]`` (default 0), so every arm of a run, and every rerun,
    sees the same target and test parts. Target, test and validation are disjoint by construction.
    """
    kind = spec.get("kind")
    if kind not in _LOADERS:
        raise ConfigError(f"unknown task kind {kind!r}; choose from {', '.join(_LOADERS)}")
    path = Path(str(spec.get("path", ""))).expanduser() if spec.get("path") else None
    if kind != "jsonl" and (path is None or not path.exists()):
        raise DataError(f"task data not found (cwd {Path.cwd()})", file=str(spec.get("path")))
    rng = random.Random(int(spec.get("seed", 0)))
    data = _LOADERS[kind](path, spec, rng, int(n_val))
    if not data.target or not data.test:
        raise DataError(f"task '{kind}' gave {len(data.target)} target and {len(data.test)} test items",
                        file=str(spec.get("path")))
    data.info = {"kind": kind, "n_target": len(data.target), "n_test": len(data.test),
                 "subtasks": {s: sum(1 for t in data.test if t.subtask == s) for s in data.subtasks}}
    if n_val:
        data.info["n_validation"] = len(data.validation)
    return data
