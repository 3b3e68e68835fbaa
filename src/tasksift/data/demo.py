"""The built-in example pool and target used by ``tasksift demo`` and the README's first command.

Everything is generated here from templates (seeded), never copied from a real data set:
six clearly different task types (math word problems with worked answers, sentiment
classification, English->French translation, small Python functions, capital cities, and
word sorting). The target is a set of *new* math word problems, so a good selector should
return mostly the pool's math rows.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from ..atomic import write_text

_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Liam"]
_ITEMS = [("apples", 2), ("pencils", 3), ("stickers", 1), ("notebooks", 4), ("cupcakes", 5), ("marbles", 1)]


def math_word_problem(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(5)
    n = rng.choice(_NAMES)
    if kind == 0:
        item, price = rng.choice(_ITEMS)
        a, b = rng.randint(3, 15), rng.randint(2, 9)
        q = f"{n} buys {a} {item} at ${price} each and then {b} more. How much does {n} spend in total?"
        r = f"{n} buys {a} + {b} = {a + b} {item}. At ${price} each that is {a + b} x {price} = ${(a + b) * price}.\nThe answer is {(a + b) * price}."
    elif kind == 1:
        speed, hours = rng.randint(20, 90), rng.randint(2, 6)
        q = f"A train travels at {speed} km per hour for {hours} hours. How far does it travel?"
        r = f"Distance is speed times time: {speed} x {hours} = {speed * hours} km.\nThe answer is {speed * hours}."
    elif kind == 2:
        total, people = rng.randint(2, 12) * 6, rng.choice([2, 3, 6])
        q = f"{n} has {total} cookies and shares them equally among {people} friends. How many cookies does each friend get?"
        r = f"Each friend gets {total} / {people} = {total // people} cookies.\nThe answer is {total // people}."
    elif kind == 3:
        age, diff = rng.randint(5, 30), rng.randint(2, 25)
        q = f"{n} is {age} years old. Her aunt is {diff} years older. How old will the aunt be in 5 years?"
        r = f"The aunt is {age} + {diff} = {age + diff} now, so in 5 years she will be {age + diff} + 5 = {age + diff + 5}.\nThe answer is {age + diff + 5}."
    else:
        start, spent, earned = rng.randint(20, 100), rng.randint(5, 19), rng.randint(5, 40)
        q = f"{n} had ${start}, spent ${spent} on lunch and earned ${earned} mowing lawns. How much money does {n} have now?"
        r = f"{start} - {spent} = {start - spent}, then {start - spent} + {earned} = {start - spent + earned}.\nThe answer is {start - spent + earned}."
    return q, r


_ADJ_POS = ["wonderful", "delightful", "excellent", "heartwarming", "brilliant", "charming"]
_ADJ_NEG = ["boring", "dreadful", "disappointing", "clumsy", "tedious", "awful"]
_THINGS = ["movie", "restaurant", "novel", "hotel stay", "concert", "phone"]


def _sentiment(rng: random.Random) -> tuple[str, str]:
    pos = rng.random() < 0.5
    adj = rng.choice(_ADJ_POS if pos else _ADJ_NEG)
    thing = rng.choice(_THINGS)
    extra = rng.choice(["I would recommend it to friends.", "Never again.", "The staff were there.",
                        "It lasted two hours.", "My sister came too."])
    q = f"Classify the sentiment of this review as Positive or Negative.\n\nReview: The {thing} was {adj}. {extra}"
    return q, "Positive" if pos else "Negative"


_FR = {"the cat": "le chat", "the dog": "le chien", "the house": "la maison", "the book": "le livre",
       "the garden": "le jardin", "the car": "la voiture", "the teacher": "le professeur"}
_FR_V = {"is small": "est petit", "is big": "est grand", "is here": "est ici", "is old": "est vieux",
         "is new": "est nouveau"}


def _translate(rng: random.Random) -> tuple[str, str]:
    s, v = rng.choice(list(_FR)), rng.choice(list(_FR_V))
    return f"Translate into French: {s.capitalize()} {v}.", f"{_FR[s].capitalize()} {_FR_V[v]}."


_CODE = [("sum", "return sum(xs)"), ("maximum", "return max(xs)"), ("minimum", "return min(xs)"),
         ("average", "return sum(xs) / len(xs)"), ("number of even values", "return sum(1 for x in xs if x % 2 == 0)"),
         ("product", "p = 1\n    for x in xs:\n        p *= x\n    return p"), ("sorted copy", "return sorted(xs)")]


def _code(rng: random.Random) -> tuple[str, str]:
    what, body = rng.choice(_CODE)
    fname = rng.choice(["compute", "solve", "summarise", "f", "helper"]) + "_" + what.split()[0]
    return (f"Write a Python function `{fname}(xs)` that returns the {what} of a list of numbers.",
            f"```python\ndef {fname}(xs):\n    {body}\n```")


_CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Kenya": "Nairobi", "Peru": "Lima", "Canada": "Ottawa",
             "Egypt": "Cairo", "Norway": "Oslo", "India": "New Delhi", "Chile": "Santiago", "Spain": "Madrid",
             "Ghana": "Accra", "Vietnam": "Hanoi", "Poland": "Warsaw", "Brazil": "Brasilia", "Italy": "Rome"}


def _capital(rng: random.Random) -> tuple[str, str]:
    c = rng.choice(list(_CAPITALS))
    form = rng.choice(["What is the capital of {c}?", "Name the capital city of {c}.", "Which city is the capital of {c}?"])
    return form.format(c=c), f"The capital of {c} is {_CAPITALS[c]}."


_WORDS = ["river", "apple", "zebra", "maple", "cloud", "tiger", "lemon", "piano", "quartz", "honey", "orbit"]


def _sort_words(rng: random.Random) -> tuple[str, str]:
    ws = rng.sample(_WORDS, rng.randint(3, 6))
    return f"Sort these words alphabetically: {', '.join(ws)}", ", ".join(sorted(ws))


TASKS = {"math": math_word_problem, "sentiment": _sentiment, "translation": _translate, "code": _code,
         "capitals": _capital, "word_sorting": _sort_words}


def demo_rows(n_per_task: int = 60, seed: int = 0) -> list[dict]:
    """Pool rows in alpaca layout with a ``task`` field, shuffled, no duplicates."""
    rng = random.Random(seed)
    rows, seen = [], set()
    for task, gen in TASKS.items():
        made, tries = 0, 0
        while made < n_per_task and tries < n_per_task * 50:
            tries += 1
            q, r = gen(rng)
            if q in seen:
                continue
            seen.add(q)
            rows.append({"instruction": q, "input": "", "output": r, "task": task})
            made += 1
    rng.shuffle(rows)
    return rows


def demo_target(n: int = 12, seed: int = 0, exclude: set[str] | None = None) -> list[dict]:
    """New math word problems (question/answer layout), none of them in the pool."""
    rng = random.Random(seed + 10_000)
    exclude = exclude or set()
    out, seen = [], set(exclude)
    while len(out) < n:
        q, r = math_word_problem(rng)
        if q not in seen:
            seen.add(q)
            out.append({"question": q, "answer": r})
    return out


def write_demo_data(folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``pool.jsonl`` (~300 rows, 6 tasks) and ``target.jsonl`` (12 math problems)."""
    folder = Path(folder)
    pool = demo_rows(seed=seed)
    target = demo_target(seed=seed, exclude={r["instruction"] for r in pool})
    pp, tp = folder / "pool.jsonl", folder / "target.jsonl"
    write_text(pp, "".join(json.dumps(r) + "\n" for r in pool))
    write_text(tp, "".join(json.dumps(r) + "\n" for r in target))
    return pp, tp
