"""Shared fixtures: a tiny random sentence-transformers model (built in seconds, offline),
toy rows in every layout, and a per-test feature cache."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

_WORDS = ("the a an of to and is in it what how many apples train cat dog review movie was good bad "
          "translate french capital city python function returns sum list numbers sort words "
          "answer question buys each more total spend travels km hour far hello world").split()


def build_tiny_st_model(folder: Path) -> Path:
    """A 2-layer, 32-d random BERT wrapped as a sentence-transformers model (mean pooling)."""
    import torch
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers import models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz0123456789$.,?!:") \
        + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"] + _WORDS
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tok = BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True)  # positional: transformers 5 ignores vocab_file=
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=256)
    BertModel(cfg).save_pretrained(folder / "bert")
    tok.save_pretrained(folder / "bert")
    word = models.Transformer(str(folder / "bert"), max_seq_length=128)
    dim = getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension
    pool = models.Pooling(dim(), pooling_mode="mean")
    st = SentenceTransformer(modules=[word, pool], device="cpu")
    st.save(str(folder / "st"))
    return folder / "st"


@pytest.fixture(scope="session")
def tiny_embed_model(tmp_path_factory) -> str:
    return str(build_tiny_st_model(tmp_path_factory.mktemp("tiny_st")))


@pytest.fixture()
def cache_dir(tmp_path) -> str:
    return str(tmp_path / "cache")


def needs_shared_data():
    return pytest.mark.skipif(not (SHARED_DATA / "pool").is_dir(),
                              reason=f"real data not found at {SHARED_DATA} (only on the developers' machines)")
