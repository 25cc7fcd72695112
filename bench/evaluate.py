"""The evaluate stage's answers, side by side in one run (issue 26): the held-out prompts answered one at a
time (as evaluation did before) against in batches of `evaluation.ANSWER_BATCH` (what it does now), by a
student of the quickstart's shape: the teacher's layers (SmolLM2-135M's), 10 of its 30 kept, random weights,
so that every answer runs to --max-new-tokens as the untrained student's do. Greedy both ways; the answers are compared.

    .venv/bin/python bench/evaluate.py [--prompts 10] [--max-new-tokens 128]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUESTIONS = [
    "Why do leaves change colour in autumn?",
    "How does a compiler turn source code into a program?",
    "Pourquoi le ciel est-il bleu pendant la journée ?",
    "¿Cómo funciona la fotosíntesis en las plantas?",
    "What is the difference between weather and climate?",
    "Comment une imprimerie fonctionnait-elle au quinzième siècle ?",
    "¿Por qué las estrellas parpadean por la noche?",
    "How do search engines decide which pages to show first?",
    "Qu'est-ce qu'un nombre premier et pourquoi est-il utile ?",
    "¿Qué causa las mareas en el océano?",
    "How can I get better sleep without medication?",
    "What made the Silk Road important for trade?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=10, help="held-out prompts (the quickstart holds out ~10)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()

    from transformers import AutoConfig, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from dataengine.recipe import load_recipe
    from dataengine.teacher.builtin import builtin_model_dir
    from dataengine.train import evaluation

    # the quickstart's teacher, which `make demo` builds: its tokenizer, and the shape of its layers
    folder = builtin_model_dir("smollm2-moe", load_recipe(ROOT / "recipes" / "quickstart.yaml").teacher.builtin)
    if not folder.is_dir():
        sys.exit(f"the builtin teacher is not built yet ({folder}): `make teacher` first")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    teacher = AutoConfig.from_pretrained(folder).to_dict()
    shape = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
    # a dense model of the teacher's layers, 10 of them as the quickstart's student keeps
    config = LlamaConfig(**{key: teacher[key] for key in shape}, num_hidden_layers=10, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    prompts = [([{"role": "user", "content": q}], "") for q in (QUESTIONS * 4)[: args.prompts]]

    timed = {}
    for label, batch in (
        ("one prompt at a time", 1),
        (f"batches of {evaluation.ANSWER_BATCH}", evaluation.ANSWER_BATCH),
    ):
        start = time.perf_counter()
        answers = evaluation.generate_answers(model, tokenizer, prompts, args.max_new_tokens, batch_size=batch)
        timed[label] = (time.perf_counter() - start, answers)
    (slow, one), (_, batched) = timed.values()
    same = sum(a == b for a, b in zip(one, batched, strict=True))
    print(f"{args.prompts} prompts, {args.max_new_tokens} new tokens each, {torch.get_num_threads()} threads")
    print("| contender | seconds | vs one at a time |\n|---|---:|---:|")
    for label, (seconds, _) in timed.items():
        print(f"| {label} | {seconds:.1f} | {slow / seconds:.2f}x |")
    print(f"greedy answers identical both ways: {same} of {len(one)}")


if __name__ == "__main__":
    main()
