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
  rows, ``extractor: gsm8k``, default ``bare_answer`` to ``gold``).
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


def gsm8k_gold(answer: str) -> str:
    """The number after ``####`` in a GSM8K answer, commas removed."""
    return answer.rsplit("####", 1)[-1].strip().replace(",", "")


def _load_gsm8k(path: Path, spec: Mapping[str, Any], rng: random.Random) -> TaskData:
    train = _take(_read_jsonl(path / "train.jsonl"), spec.get("n_target", 50), rng)
    test = _take(_read_jsonl(path / "test.jsonl"), spec.get("n_test", 200), rng)
    target = [_example(r["question"], r["answer"], i, "gsm8k/train") for i, r in enumerate(train)]
    items = [TestItem(id=f"gsm8k-{i}", prompt=r["question"], answer=r["answer"], gold=gsm8k_gold(r["answer"]),
                      extractor="gsm8k", subtask="gsm8k", bare_answer=gsm8k_gold(r["answer"]))
             for i, r in enumerate(test)]
    return TaskData("gsm8k", target, items)


_LETTER = re.compile(r"\(([A-Z])\)")


def bbh_item(row: Mapping[str, Any], task: str, labels: Sequence[str], i: int) -> TestItem:
    """A BBH row as a test item; options from ``(A)``-style choices in the input, else the
    task's label set when it is small (yes/no, True/False, ...)."""
    target = str(row["target"]).strip()
    choices: list[str] | None = None
    if _LETTER.fullmatch(target):
        letters = list(dict.fromkeys(_LETTER.findall(row["input"])))
        choices = [f"({c})" for c in letters] if f"({target[1]})" in [f"({c})" for c in letters] else None
    elif 1 < len(labels) <= 6:
        choices = list(labels)
    label = choices.index(target) if choices and target in choices else None
    return TestItem(id=f"bbh-{task}-{i}", prompt=row["input"], answer=target, gold=target,
                    choices=choices if label is not None else None, label=label, extractor="bbh", subtask=task)


def _load_bbh(path: Path, spec: Mapping[str, Any], rng: random.Random) -> TaskData:
    subtasks = spec.get("subtasks")
    if not subtasks:
        raise ConfigError("bbh task needs 'subtasks' (file names under the bbh folder, without .json)")
    n_target, n_test = int(spec.get("n_target", 30)), spec.get("n_test", 100)
    per_target = [n_target // len(subtasks) + (1 if j < n_target % len(subtasks) else 0) for j in range(len(subtasks))]
    target: list[Example] = []
    items: list[TestItem] = []
    for j, t in enumerate(subtasks):
        rows = _read_json(path / f"{t}.json").get("examples") or []
        if len(rows) < per_target[j] + 1:
            raise DataError(f"bbh task '{t}' has too few examples ({len(rows)})", file=str(path / f"{t}.json"))
        labels = sorted({str(r["target"]).strip() for r in rows})
        rows = _take(rows, None, rng)
        tgt, rest = rows[:per_target[j]], rows[per_target[j]:]
        rest = rest if n_test is None else rest[:int(n_test)]
        target += [_example(r["input"], str(r["target"]).strip(), i, f"bbh/{t}") for i, r in enumerate(tgt)]
        items += [bbh_item(r, t, labels, i) for i, r in enumerate(rest)]
    return TaskData("bbh", target, items)


def csqa_prompt(row: Mapping[str, Any]) -> tuple[str, list[str], int]:
    """CommonsenseQA question with lettered options; returns (prompt, options, label)."""
    q = row["question"]
    opts = [f"({c['label']}) {c['text']}" for c in q["choices"]]
    labels = [c["label"] for c in q["choices"]]
    prompt = f"{q['stem']}\nAnswer Choices: " + " ".join(opts)
    return prompt, opts, labels.index(row["answerKey"])


def _load_csqa(path: Path, spec: Mapping[str, Any], rng: random.Random) -> TaskData:
    train = _take(_read_jsonl(path / "train_rand_split.jsonl"), spec.get("n_target", 50), rng)
    dev = _take(_read_jsonl(path / "dev_rand_split.jsonl"), spec.get("n_test", None), rng)
    target = []
    for i, r in enumerate(train):
        p, opts, lab = csqa_prompt(r)
        target.append(_example(p, opts[lab], i, "csqa/train"))
    items = []
    for i, r in enumerate(dev):
        p, opts, lab = csqa_prompt(r)
        items.append(TestItem(id=f"csqa-{r.get('id', i)}", prompt=p, answer=opts[lab], gold=opts[lab][:3],
                              choices=opts, label=lab, extractor="mc_letter", subtask="csqa",
                              key=r["question"]["stem"]))
    return TaskData("csqa", target, items)


def xcopa_prompt(row: Mapping[str, Any]) -> str:
    q = "What was the cause?" if row["question"] == "cause" else "What happened as a result?"
    return f"Premise: {row['premise']}\n{q}"


def _load_xcopa(path: Path, spec: Mapping[str, Any], rng: random.Random) -> TaskData:
    langs = spec.get("languages") or ["it"]
    n_target, n_test = int(spec.get("n_target", 40)), spec.get("n_test", None)
    per = [n_target // len(langs) + (1 if j < n_target % len(langs) else 0) for j in range(len(langs))]
    target: list[Example] = []
    items: list[TestItem] = []
    for j, lang in enumerate(langs):
        val = _take(_read_jsonl(path / f"val.{lang}.jsonl"), per[j], rng)
        test = _take(_read_jsonl(path / f"test.{lang}.jsonl"), None if n_test is None else int(n_test), rng)
        for i, r in enumerate(val):
            ch = [r["choice1"], r["choice2"]]
            target.append(_example(xcopa_prompt(r), ch[int(r["label"])], i, f"xcopa/val.{lang}"))
        for i, r in enumerate(test):
            ch = [r["choice1"], r["choice2"]]
            lab = int(r["label"])
            items.append(TestItem(id=f"xcopa-{lang}-{r.get('idx', i)}", prompt=xcopa_prompt(r), answer=ch[lab],
                                  gold=ch[lab], choices=ch, label=lab, extractor="exact", subtask=f"xcopa-{lang}",
                                  key=r["premise"]))
    return TaskData("xcopa", target, items)


def _load_strategyqa(path: Path, spec: Mapping[str, Any], rng: random.Random) -> TaskData:
    f = path / "task.json" if path.is_dir() else path
    rows = _take(_read_json(f).get("examples") or [], None, rng)
    n_target = int(spec.get("n_target", 50))
    tgt, rest = rows[:n_target], rows[n_target:]
    if spec.get("n_test") is not None:
        rest = rest[:int(spec["n_test"])]
    target = [_example(r["input"], str(r["target"]), i, "strategyqa") for i, r in enumerate(tgt)]
    items = []
    for i, r in enumerate(rest):
        yes = max(r["target_scores"], key=r["target_scores"].get)
        items.append(TestItem(id=f"strategyqa-{i}", prompt=r["input"], answer=str(r["target"]), gold=yes,
                              choices=["Yes", "No"], label=0 if yes == "Yes" else 1, extractor="yesno",
                              subtask="strategyqa"))
    return TaskData("strategyqa", target, items)


def _load_jsonl(path: Path, spec: Mapping[str, Any], rng: random.Random) -> TaskData:
    tp, sp = spec.get("target"), spec.get("test")
    if not tp or not sp:
        raise ConfigError("jsonl task needs 'target' and 'test' file paths")
    base = path if path else Path(".")
    tgt = _take(_read_jsonl(base / tp), spec.get("n_target"), rng)
    tst = _take(_read_jsonl(base / sp), spec.get("n_test"), rng)
    for i, r in enumerate(tgt + tst):
        if "prompt" not in r or "answer" not in r:
            raise DataError("each jsonl task row needs 'prompt' and 'answer'", row=i + 1)
    target = [_example(r["prompt"], r["answer"], i, "target") for i, r in enumerate(tgt)]
    items = [TestItem(id=str(r.get("id", f"test-{i}")), prompt=r["prompt"], answer=r["answer"],
                      gold=str(r.get("gold", r["answer"])), choices=r.get("choices"), label=r.get("label"),
                      extractor=r.get("extractor", spec.get("extractor", "exact")),
                      subtask=str(r.get("subtask", spec.get("name", "test"))), key=r.get("key", r["prompt"]),
                      bare_answer=r.get("bare_answer", r.get("gold") if r.get("extractor") == "gsm8k" else None))
             for i, r in enumerate(tst)]
    return TaskData(str(spec.get("name", "jsonl")), target, items)


_LOADERS = {"gsm8k": _load_gsm8k, "bbh": _load_bbh, "csqa": _load_csqa, "xcopa": _load_xcopa,
            "strategyqa": _load_strategyqa, "jsonl": _load_jsonl}


def load_task(spec: Mapping[str, Any]) -> TaskData:
    """Load the target examples and test items a recipe's ``task`` mapping describes.

    Sampling is seeded by ``spec["seed"]`` (default 0), so every arm of a run, and every rerun,
    sees the same target and test parts. Target and test are disjoint by construction.
    """
    kind = spec.get("kind")
    if kind not in _LOADERS:
        raise ConfigError(f"unknown task kind {kind!r}; choose from {', '.join(_LOADERS)}")
    path = Path(str(spec.get("path", ""))).expanduser() if spec.get("path") else None
    if kind != "jsonl" and (path is None or not path.exists()):
        raise DataError(f"task data not found (cwd {Path.cwd()})", file=str(spec.get("path")))
    rng = random.Random(int(spec.get("seed", 0)))
    data = _LOADERS[kind](path, spec, rng)
    if not data.target or not data.test:
        raise DataError(f"task '{kind}' gave {len(data.target)} target and {len(data.test)} test items",
                        file=str(spec.get("path")))
    data.info = {"kind": kind, "n_target": len(data.target), "n_test": len(data.test),
                 "subtasks": {s: sum(1 for t in data.test if t.subtask == s) for s in data.subtasks}}
    return data
