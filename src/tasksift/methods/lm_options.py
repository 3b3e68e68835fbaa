"""The option tables shared by the LM-loss methods (lobass, ifd, perplexity, less): the loss
engine's settings and the per-group budget settings. Defaults come from
:mod:`tasksift.features.lm_select`, so the engine and the tables cannot disagree."""
from __future__ import annotations

from ..features.lm_select import GROUP_OPTION_DEFAULTS, LM_OPTION_DEFAULTS
from .params import Choices, Interval, Option, PathLike

_D, _G = LM_OPTION_DEFAULTS, GROUP_OPTION_DEFAULTS

#: Settings of the language model that scores the rows.
LM_PARAMETERS: dict[str, Option] = {
    "model": Option(_D["model"], "LM: 'default' (bundled SmolLM2-135M-Instruct), a hub id, a folder or a .gguf file", PathLike()),
    "gguf_file": Option(_D["gguf_file"], "GGUF file inside a model folder", PathLike(), None),
    "max_length": Option(_D["max_length"], "tokens per rendered example; longer rows are truncated",
                         Interval(int, 1)),
    "truncation": Option(_D["truncation"], "false: rows over max_length are unscorable instead of truncated", bool),
    "batch_tokens": Option(_D["batch_tokens"], "padded tokens per forward batch (null: 1024 on CPU, 16384 on GPU)",
                           Interval(int, 1), None),
    "device": Option(_D["device"], "'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...", str),
    "dtype": Option(_D["dtype"], "'auto' (bf16/fp16 on CUDA, float32 on CPU) or a torch dtype name", str),
    "cache": Option(_D["cache"], "false: neither reuse nor keep cached losses", bool),
}

#: Settings of per-group budgets.
GROUP_PARAMETERS: dict[str, Option] = {
    "group_by": Option(_G["group_by"], "split the budget by 'source' or a raw-row field", str, None),
    "quotas": Option(_G["quotas"], "'proportional', 'equal' or {group: fraction or count}",
                     Choices("proportional", "equal"), dict, str),
}
