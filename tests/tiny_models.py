"""Tiny tokenizers and models built in the test itself (no Hub): real transformers classes, random weights."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM, PreTrainedTokenizerFast

SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
WORDS = [
    "user",
    "assistant",
    "system",
    "what",
    "is",
    "the",
    "a",
    "an",
    "of",
    "to",
    "in",
    "and",
    "or",
    "how",
    "why",
    "when",
    "where",
    "which",
    "who",
    "count",
    "sort",
    "list",
    "number",
    "numbers",
    "word",
    "words",
    "text",
    "file",
    "line",
    "lines",
    "sum",
    "total",
    "value",
    "values",
    "key",
    "keys",
    "first",
    "last",
    "small",
    "big",
    "python",
    "function",
    "return",
    "def",
    "print",
    "if",
    "else",
    "for",
    "while",
    "true",
    "false",
    "none",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "bonjour",
    "le",
    "la",
    "les",
    "est",
    "une",
    "un",
    "pourquoi",
    "comment",
    "hola",
    "el",
    "los",
    "es",
    "por",
    "que",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def tiny_tokenizer(words: list[str] = WORDS) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate([*SPECIAL, *dict.fromkeys(words)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llama(vocab_size: int, seed: int = 0, layers: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=3,
        bos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def tiny_mixtral(vocab_size: int, seed: int = 0) -> MixtralForCausalLM:
    torch.manual_seed(seed)
    config = MixtralConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        num_local_experts=4,
        num_experts_per_tok=2,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=3,
        bos_token_id=2,
    )
    return MixtralForCausalLM(config).eval()


def save(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


CONVERSATIONS = [
    ("what is the sum of one and two", "the sum is three"),
    ("how to sort a list in python", "use the sort function and return the list"),
    ("count the words in a line", "split the line and count the words"),
    ("what is the first value", "the first value is one"),
    ("which number is big", "ten is big and one is small"),
    ("how to print a list", "for value in list print value"),
    ("pourquoi le la est une", "comment le la est un"),
    ("hola el los es", "por que el los es"),
]


def rows(n: int = 8) -> list[dict]:
    out = []
    for i, (question, answer) in enumerate(CONVERSATIONS[:n]):
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        out.append({"id": f"row-{i}", "messages": messages, "kind": "chat", "language": "en"})
    return out


def row_data(n: int = 8):
    """`rows(n)` as the train stage holds them: a `datasets.Dataset`."""
    from datasets import Dataset

    return Dataset.from_list(rows(n))


def sft_data(n: int = 8):
    """`rows(n)` in the SFT phase's form, as the train stage hands them to the phase."""
    from dataengine.train.data import sft_rows

    return sft_rows(row_data(n))


def student_recipe(teacher: Path, student: str, route: bool = False):
    """A distill recipe around a tiny teacher folder whose train.student block is `student` (flow YAML)."""
    from dataengine.recipe import parse_recipe

    return parse_recipe(
        f"""
name: s
pipeline: distill
teacher: {{model: {teacher}}}
generate: {{chat: {{languages: [{{code: en, quota: 1}}]}}}}
curate: {{}}
{"route: {}" if route else ""}
train:
  student: {student}
"""
    )
