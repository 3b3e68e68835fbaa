"""Tiny, randomly initialised llama + in-memory BPE tokenizer for LM tests (seconds, offline)."""
from __future__ import annotations

from pathlib import Path

from tasksift.data.example import Example

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Write a haiku about the sea. Waves fold into foam, the tide forgets its own name.",
    "Add 2 and 3. The answer is 5.",
    "Translate hello to Spanish. Hola.",
    "def add(a, b):\n    return a + b\n",
    "List three colours: red, green, blue.",
    "user assistant system the a of and to in is it you that",
] * 4


def build_tokenizer():
    """A byte-level BPE tokenizer (vocab ~300) with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, show_progress=False,
                                  special_tokens=["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer, seed: int = 0):
    """LlamaForCausalLM with hidden 32, 2 layers, float32, eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    model.eval()
    return model


def scaled_logits_model(tokenizer, seed: int = 0):
    """A tiny llama whose forward doubles its logits, with nothing in its config saying so: the
    output layer on the decoder's hidden state is not the model's own logits."""
    from transformers import LlamaForCausalLM

    class ScaledLogitsLlama(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2.0
            return out

    model = build_model(tokenizer, seed)
    model.__class__ = ScaledLogitsLlama
    return model


def save_tiny(path: Path, seed: int = 0) -> Path:
    """Save the tiny model + tokenizer to ``path`` (a from_pretrained-able folder)."""
    tok = build_tokenizer()
    model = build_model(tok, seed)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def chat(q: str, a: str, row: int = 0, source: str | None = None, **raw) -> Example:
    return Example([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                   raw={"instruction": q, "output": a, **raw}, row=row, source=source, layout="alpaca")


def plain(text: str, row: int = 0) -> Example:
    return Example([{"role": "assistant", "content": text}], raw={"text": text}, row=row, layout="text")


def sample_examples(n: int = 12) -> list[Example]:
    """Varied chat, multi-turn and plain-text examples of different lengths."""
    base = [
        chat("What is the capital of France?", "The capital of France is Paris."),
        chat("Add 2 and 3.", "The answer is 5."),
        chat("Write a haiku about the sea.", "Waves fold into foam,\nthe tide forgets its own name."),
        plain("def add(a, b):\n    return a + b\n"),
        Example([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."},
                 {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Colours?"},
                 {"role": "assistant", "content": "red, green, blue"}], raw={}, row=0, layout="messages"),
        chat("Translate hello to Spanish.", "Hola."),
    ]
    out = []
    for i in range(n):
        ex = base[i % len(base)]
        if i >= len(base):  # vary content so ids differ
            msgs = [dict(m) for m in ex.messages]
            msgs[-1]["content"] = msgs[-1]["content"] + " " + "and so on " * (i % 4) + f"({i})"
            ex = Example(msgs, raw=ex.raw, row=i, layout=ex.layout)
        else:
            ex = Example(ex.messages, raw=ex.raw, row=i, layout=ex.layout)
        out.append(ex)
    return out


def run_and_kill_after_shards(script, cache, shards: int = 2, timeout: float = 60.0) -> int:
    """Run the Python file ``script`` in a subprocess, SIGKILL it once ``cache`` holds
    ``shards`` feature-store segments, and return how many rows those segments hold (the rows a rerun
    must not compute again). Fails if the script exits on its own first."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tasksift.store.segment import read_header

    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and len(list(Path(cache).rglob("seg-*.seg"))) < shards:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the script was not killed"
    return sum(read_header(s).rows for s in Path(cache).rglob("seg-*.seg"))
