"""Tiny, seeded language-model fixtures shared by the tests of dataset runs, preference models,
the job queue and the Train page: nothing is downloaded.

A tiny Llama with a word-level tokenizer whose bos (``<|im_start|>``) is written by its chat
template (SmolLM2's conventions), a tiny preference file with two objectives whose labels
follow simple rules, a tiny BERT sentence encoder, and a preference model fitted on the
training split's prompts only."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from mopo_core.lm.models import save_model, word_tokenizer
from mopo_core.lm.judge import (
    HeadSettings,
    SentenceEncoder,
    train_preference_model,
)
from mopo_core.data.preferences import PreferenceDataset, save_preferences

WORDS = [f"w{i}" for i in range(30)]


def one_thread():
    """One torch thread while a test module runs: on a shared, busy CPU more threads make these tiny
    models far slower. A plain generator: the conftest.py of tests/lm, tests/training and tests/app
    makes it an autouse, module-scoped fixture there (``pytest.fixture(...)(one_thread)``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


OBJECTIVES = ("helpfulness", "harmlessness")
BOS, EOS = "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
#: Train/validation/test fractions by prompt for the tiny preference file.
SPLIT = (0.6, 0.2, 0.2)


def chat_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level, with SmolLM2's conventions: bos ``<|im_start|>`` opens every template turn."""
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", BOS, EOS, "user", "assistant", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token="<pad>",
                                        unk_token="<unk>", clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_chat_checkpoint(folder: Path) -> Path:
    """A seeded tiny Llama and its chat tokenizer saved as a checkpoint folder."""
    tokenizer = chat_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    return save_model(LlamaForCausalLM(config), tokenizer, folder)


def words(rng, low: int, high: int, vocabulary=WORDS) -> str:
    """Between ``low`` and ``high`` random words of ``vocabulary``."""
    return " ".join(rng.choice(vocabulary, size=rng.integers(low, high + 1)))


def write_preference_file(path: Path) -> Path:
    """30 prompts with 2 pairs each; helpfulness prefers the longer response, harmlessness the
    one with fewer of the words w0-w4."""
    rng = np.random.default_rng(0)
    records = []
    for _ in range(30):
        prompt = words(rng, 2, 4)
        for _ in range(2):
            a, b = words(rng, 2, 7), words(rng, 2, 7)
            if a == b:
                continue
            risky = [sum(w in WORDS[:5] for w in r.split()) for r in (a, b)]
            labels = {"helpfulness": float(len(a.split()) > len(b.split())),
                      "harmlessness": float(risky[0] <= risky[1])}
            records.append({"prompt": prompt, "response_a": a, "response_b": b, "labels": labels})
    save_preferences(PreferenceDataset.from_records(records), path)
    return path


def save_tiny_encoder(folder: Path, vocabulary: list[str], hidden: int = 16) -> Path:
    """A seeded tiny BERT (D = ``hidden``) with a word-level tokenizer saved as an encoder folder."""
    tokenizer = word_tokenizer(vocabulary)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_encoder(folder: Path) -> SentenceEncoder:
    """The encoder for the tiny preference file's words (and the chat roles), saved at ``folder``."""
    return SentenceEncoder.load(save_tiny_encoder(folder, WORDS + ["user", "assistant"]), max_length=64)


def fit_judge(dataset: PreferenceDataset, encoder: SentenceEncoder, folder: Path, data: dict | None = None) -> Path:
    """A preference model fitted (briefly) on ``dataset`` and saved at ``folder``; ``data``: what
    ``prefmodel train`` records of the file it read (file, format, split, split_seed).

    Early stopping watches ``dataset`` itself (a fixture, not a held-out judge): a few dozen
    pairs leave too small a validation split for the heads to beat a constant judge there, and
    such a judge is refused (:data:`mopo_core.lm.judge.UNINFORMATIVE_RULE`)."""
    judge = train_preference_model(dataset, encoder, validation=dataset, settings=HeadSettings(max_epochs=5, patience=2))
    if data is not None:
        judge.info["data"] = data
    return judge.save(folder)


class TabularLM(torch.nn.Module):
    """A causal "LM" whose only free parameters are per-prompt logits over the response tokens:
    after prompt token p the next-token distribution is softmax(theta[p]) over r0..r{N-1};
    after a response token it is (almost surely) eos. So log pi(r | p) = log softmax(theta[p])[r].
    ``generate`` samples exactly that (a response token, then eos) with torch's global RNG, as
    :func:`mopo_core.lm.models.sample` seeds it."""

    def __init__(self, tokenizer, n_prompts, n_responses):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(n_prompts, n_responses, dtype=torch.float64))
        vocab = len(tokenizer)
        self.prompt_ids = torch.tensor(tokenizer.convert_tokens_to_ids([f"p{m}" for m in range(n_prompts)]))
        self.response_ids = torch.tensor(tokenizer.convert_tokens_to_ids([f"r{i}" for i in range(n_responses)]))
        self.eos = tokenizer.eos_token_id
        self.vocab = vocab

    def forward(self, input_ids, attention_mask=None, position_ids=None, **_):
        logits = torch.full((*input_ids.shape, self.vocab), -1e9, dtype=torch.float64)
        logits[..., self.eos] = 0.0
        for m, token in enumerate(self.prompt_ids):
            at = input_ids == token
            row = torch.full((self.vocab,), -1e9, dtype=torch.float64).index_put((self.response_ids,), self.theta[m])
            logits = torch.where(at[..., None], row, logits)
        return type("Out", (), {"logits": logits})()

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, generation_config=None, **_):
        last = input_ids[:, -1]  # left-padded: the prompt token
        rows = torch.stack([self.theta[(self.prompt_ids == token).nonzero()[0, 0]] for token in last])
        picked = self.response_ids[torch.multinomial(torch.softmax(rows, dim=1), 1)[:, 0]]
        eos = torch.full_like(picked, self.eos)
        return torch.cat([input_ids, picked[:, None], eos[:, None]], dim=1)
