"""Built-in evaluation presets.

* ``smoke``: a tiny random llama (built on the fly, ~20k parameters) fine-tuned on a tiny
  generated pool (the demo pool's six task types, 152 rows in one file per type, two test
  questions planted in the math file)
  for a generated math task; every scorer, knn and perplexity against random, 2 budgets x 2
  seeds plus full. Seconds; used by the tests. Its scores mean nothing (random model).
* ``cpu``: SmolLM2-135M-Instruct, a seeded 20,000-row sample of ``<data>/pool``,
  CommonsenseQA (50 target examples, 100 dev questions as test, FLAN ecqa overlap dropped),
  knn and tsds vs random at 0.5% and 2%, 3 seeds (19 arms with the base model), 10 LoRA steps
  of 8 rows (lr 1e-3), scored by multiple choice and gold-answer loss: about an hour on 2 CPU
  cores (a LoRA step of 8 x ~100 tokens costs ~6-12 s there, scoring an arm ~1 min).
* ``gpu``: sized for 10 minutes of one H200 including the model load (an estimate: not run on
  a GPU yet): the same 20,000-row sample, all 1,221 dev questions, tsds, knn and dsir against
  random at 1% and 5%, 3 seeds (25 arms), 2 epochs of each subset in batches of 16 rows
  (13 and 63 steps per epoch), bfloat16 weights (the device default), scored by multiple
  choice, gold-answer loss; about 10-15 s per arm by the step and scoring rates of a 135M model
  on such a GPU. Check with ``--estimate`` on the machine before relying on it.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from ..atomic import write_text
from ..errors import ConfigError
from .config import EvalRecipe, recipe_from_dict

PRESETS = ("smoke", "cpu", "gpu")

_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_lm(folder: str | Path, corpus: list[str], seed: int = 0) -> Path:
    """Save a tiny random LlamaForCausalLM (hidden 32, 2 layers) and a byte-level BPE
    tokenizer trained on ``corpus`` (ChatML template) to ``folder``; reused if present."""
    folder = Path(folder)
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                  special_tokens=["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>")
    fast.chat_template = _CHAT_TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                      pad_token_id=fast.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    fast.save_pretrained(str(folder))
    return folder


def _math_item(rng: random.Random) -> tuple[str, str, str]:
    from ..data.demo import math_word_problem

    q, r = math_word_problem(rng)
    gold = r.rsplit("The answer is", 1)[-1].strip().rstrip(".")
    return q, r, gold


def write_smoke_data(folder: str | Path, seed: int = 0, n_target: int = 8, n_test: int = 12,
                     planted: int = 2, n_val: int = 6) -> dict[str, Path]:
    """Write the smoke pool (150 demo rows + ``planted`` test questions), target, test and
    validation files (the validation questions are drawn after the others: the same target
    and test whatever ``n_val``)."""
    from ..data.demo import demo_rows

    folder = Path(folder)
    pool = demo_rows(n_per_task=25, seed=seed)
    seen = {r["instruction"] for r in pool}
    rng = random.Random(seed + 77)
    target, test = [], []
    while len(target) < n_target or len(test) < n_test:
        q, r, gold = _math_item(rng)
        if q in seen:
            continue
        seen.add(q)
        if len(target) < n_target:
            target.append({"prompt": q, "answer": r})
            continue
        g = int(gold)
        opts = [g, g + 1, g + 3]
        rng.shuffle(opts)
        test.append({"id": f"smoke-{len(test)}", "prompt": q, "answer": r, "gold": gold, "extractor": "gsm8k",
                     "choices": [f"The answer is {o}." for o in opts], "label": opts.index(g),
                     "subtask": "math" if len(test) % 2 == 0 else "math-b"})
    val = []
    while len(val) < n_val:  # for a learning-rate sweep (.sweep): rows like the test file's
        q, r, gold = _math_item(rng)
        if q not in seen:
            seen.add(q)
            val.append({"id": f"smoke-val-{len(val)}", "prompt": q, "answer": r, "gold": gold, "extractor": "gsm8k"})
    for j in range(planted):  # contamination the check must find
        t = test[j]
        pool.insert(7 * (j + 1), {"instruction": t["prompt"], "input": "", "output": t["answer"], "task": "math"})
    paths = {"pool": folder / "pool", "target": folder / "target.jsonl", "test": folder / "test.jsonl",
             "validation": folder / "validation.jsonl"}
    by_task: dict[str, list[dict]] = {}
    for r in pool:
        by_task.setdefault(r["task"], []).append(r)
    for task, rows in by_task.items():  # one file per task type, so the source mix is telling
        write_text(paths["pool"] / f"{task}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    for k, rows in (("target", target), ("test", test), ("validation", val)):
        write_text(paths[k], "".join(json.dumps(r) + "\n" for r in rows))
    return paths


def smoke_recipe(work_dir: str | Path, seed: int = 0) -> dict[str, Any]:
    """The smoke recipe mapping; writes its data and tiny model under ``work_dir``."""
    work = Path(work_dir)
    paths = write_smoke_data(work / "data", seed=seed)
    files = sorted(paths["pool"].glob("*.jsonl")) + [paths["target"], paths["test"]]
    corpus = [line for p in files for line in p.read_text(encoding="utf-8").splitlines()]
    model = build_tiny_lm(work / "model", corpus, seed=seed)
    return {
        "name": "smoke",
        "pool": str(paths["pool"]),
        "task": {"kind": "jsonl", "name": "math", "target": str(paths["target"]), "test": str(paths["test"]),
                 "validation": str(paths["validation"]), "seed": seed},
        "methods": ["knn", "perplexity"],
        "method_options": {"perplexity": {"keep": "low", "batch_tokens": 2048}},
        "budgets": [0.05, 0.2],
        "seeds": [0, 1],
        "full": True,
        "base_model": str(model),
        "device": "cpu",
        "finetune": {"steps": 3, "lr": 5e-3, "r": 4, "alpha": 8, "batch_size": 4, "max_length": 128},
        "scorers": ["loss", "mc", "em"],
        "primary_scorer": "loss",
        "generation": {"max_new_tokens": 6, "batch_size": 12},
        "scoring": {"max_length": 256, "batch_tokens": 4096},
        "contamination": {"drop_contaminated": False},
        "progress": False,
    }


def _csqa_recipe(data_root: str | Path, gpu: bool) -> dict[str, Any]:
    root = Path(data_root)
    from ..methods.registry import available_methods

    have = {i.name for i in available_methods()}
    methods = [m for m in ("knn", "tsds") if m in have] if not gpu else \
        [m for m in ("tsds", "knn", "dsir") if m in have]
    if gpu:
        finetune = {"epochs": 2, "lr": 2e-4, "r": 8, "alpha": 16, "batch_size": 16, "max_length": 512,
                    "gradient_checkpointing": False}
    else:
        finetune = {"steps": 10, "lr": 1e-3, "r": 8, "alpha": 16, "batch_size": 8, "max_length": 256,
                    "gradient_checkpointing": True}
    return {
        "name": "commonsenseqa-" + ("gpu" if gpu else "cpu"),
        "pool": str(root / "pool"),
        "pool_sample": 20000,
        "task": {"kind": "csqa", "path": str(root / "targets" / "zscot_commonsenseqa"), "n_target": 50,
                 "n_test": None if gpu else 100, "seed": 0},
        "methods": methods,
        "budgets": [0.01, 0.05] if gpu else [0.005, 0.02],
        "seeds": [0, 1, 2],
        "full": False,
        "base_model": "default",
        "finetune": finetune,
        "scorers": ["mc", "loss"],
        "primary_scorer": "mc",
        "contamination": {"drop_contaminated": True},
        "progress": True,
    }


def preset_recipe(name: str, work_dir: str | Path, data_root: str | Path = "../shared/data") -> EvalRecipe:
    """The recipe of a built-in preset (``smoke`` writes its data and model into ``work_dir``)."""
    if name == "smoke":
        d = smoke_recipe(Path(work_dir) / "_smoke")
    elif name in ("cpu", "gpu"):
        if not (Path(data_root) / "pool").is_dir():
            raise ConfigError(f"preset '{name}' needs the data folder with pool/ and targets/ "
                              f"(not found: {data_root}; pass --data-root)")
        d = _csqa_recipe(data_root, gpu=(name == "gpu"))
        d = {k: v for k, v in d.items() if v is not None}
    else:
        raise ConfigError(f"unknown preset '{name}'; choose from {', '.join(PRESETS)}")
    return recipe_from_dict(d, source=f"preset {name}")
