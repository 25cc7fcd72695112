"""Students without a teacher server: pruning, the offline top-k loss and trainer, split, vocab checks."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from dataengine.recipe import DistillSettings, LoraSettings, PruneConfig, SFTSettings
from dataengine.rows import SAMPLE_FEATURES, ShardWriter, held_out_ids, prompt_and_full_ids
from dataengine.train.data import load_rows, lowest_ids, pairs_outside, phase_rows, sft_rows, split_rows, topk_rows
from dataengine.train.evaluation import answer_fit
from dataengine.train.offline_topk import OfflineTopKCollator, topk_kl
from dataengine.train.phases import run_distill, run_sft
from dataengine.train.student import kept_layers, prune_layers
from tests.tiny_models import rows, save, sft_data, tiny_llama, tiny_mixtral, tiny_tokenizer

# ---------------------------------------------------------------- pruning


def test_kept_layers_every_k_and_explicit():
    assert kept_layers(PruneConfig(keep_every=3), 30) == list(range(0, 30, 3))
    assert kept_layers(PruneConfig(layers=[5, 0, 29]), 30) == [0, 5, 29]
    with pytest.raises(Exception, match="out of range"):
        kept_layers(PruneConfig(layers=[0, 30]), 30)


def test_pruned_student_keeps_the_requested_layers_and_loads(tmp_path):
    tokenizer = tiny_tokenizer()
    parent = tiny_llama(len(tokenizer), layers=6)
    parent_layers = [layer.self_attn.q_proj.weight.clone() for layer in parent.model.layers]
    student = prune_layers(parent, [0, 2, 5])
    save(student, tokenizer, tmp_path / "student")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert loaded.config.num_hidden_layers == 3
    for new, old in enumerate([0, 2, 5]):
        assert torch.equal(loaded.model.layers[new].self_attn.q_proj.weight, parent_layers[old])
        assert loaded.model.layers[new].self_attn.layer_idx == new
    # generation uses the KV cache, which is indexed by the renumbered layer_idx
    out = loaded.generate(torch.tensor([[4, 5, 6]]), max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 8)


# ---------------------------------------------------------------- loss


def _reference_kl(student_logits, ids, teacher_logprobs, temperature):
    """The truncated KL written out in float64 Python arithmetic."""
    student = torch.log_softmax(student_logits.double(), -1).tolist()
    t = list(teacher_logprobs) + [math.log(1 - sum(math.exp(v) for v in teacher_logprobs))]
    s = [student[i] for i in ids]
    s = s + [math.log(1 - sum(math.exp(v) for v in s))]

    def temper(buckets):
        scaled = [b / temperature for b in buckets]
        norm = math.log(sum(math.exp(b) for b in scaled))
        return [b - norm for b in scaled]

    t, s = temper(t), temper(s)
    return sum(math.exp(a) * (a - b) for a, b in zip(t, s, strict=True)) * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_topk_kl_matches_a_float64_computation(temperature):
    torch.manual_seed(0)
    teacher = torch.log_softmax(torch.randn(3, 50, dtype=torch.float64) * 2, -1)
    top = torch.topk(teacher, 5)
    student_logits = torch.randn(3, 50, dtype=torch.float64, requires_grad=True)
    kl, count = topk_kl(student_logits, top.indices, top.values, torch.ones(3), temperature)
    expected = sum(
        _reference_kl(student_logits[i].detach(), top.indices[i].tolist(), top.values[i].tolist(), temperature)
        for i in range(3)
    )
    assert count == 3
    assert kl.item() == pytest.approx(expected, rel=1e-9)
    kl.backward()
    assert student_logits.grad is not None and student_logits.grad.abs().sum() > 0


def test_topk_kl_is_zero_for_the_teacher_itself_and_ignores_padding_and_masked_positions():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 30)
    top = torch.topk(torch.log_softmax(logits, -1), 6)
    values = top.values.clone()
    values[..., 4:] = float("-inf")  # a position with fewer than k entries is padded with -inf
    kl, _ = topk_kl(logits, top.indices, values, torch.ones(2, 4))
    assert kl.item() == pytest.approx(0.0, abs=1e-5)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    kl, count = topk_kl(torch.randn(2, 4, 30), top.indices, values, mask)
    assert count == 3 and torch.isfinite(kl)


# ---------------------------------------------------------------- data


def test_split_is_deterministic_disjoint_and_holds_at_least_one_row():
    data = Dataset.from_list([{"id": f"r{i}", "n": i} for i in range(10)])
    train, held = split_rows(data, 0.2)
    assert len(held) == 2 and len(train) == 8
    assert set(train["id"]) | {r["id"] for r in held} == set(data["id"])
    assert not set(train["id"]) & {r["id"] for r in held}
    assert all(r["n"] == int(r["id"][1:]) for r in held)  # whole rows, not ids
    assert {r["id"] for r in split_rows(data.select(range(9, -1, -1)), 0.2)[1]} == {r["id"] for r in held}
    assert len(split_rows(data.select(range(3)), 0.01)[1]) == 1
    # min_held_out raises a small share, but leaves training half the rows
    assert len(split_rows(data, 0.2, min_rows=4)[1]) == 4
    assert len(split_rows(data, 0.2, min_rows=8)[1]) == 5
    assert len(split_rows(data, 0.6, min_rows=8)[1]) == 6  # a larger share is not cut
    assert {r["id"] for r in held} < {r["id"] for r in split_rows(data, 0.2, min_rows=4)[1]}


def _stage(folder, data, rows_per_shard=3):
    with ShardWriter(folder / "data", "train", SAMPLE_FEATURES, rows_per_shard=rows_per_shard) as writer:
        for row in data:
            writer.write(row)
    return folder


def test_training_rows_are_memory_mapped_from_the_work_folder_and_split_by_id(tmp_path):
    data = rows(8)
    stage = _stage(tmp_path / "curated", data)
    assert len(list((stage / "data").glob("*.parquet"))) == 3
    cache = tmp_path / "work" / "datasets"
    loaded = load_rows(stage, cache)
    assert loaded["id"][:] == [r["id"] for r in data]
    # every step's rows live in arrow files under the work folder, not in memory
    train, held = split_rows(loaded, 0.25)
    sft = sft_rows(train)
    for step in (loaded, train, sft):
        assert step.cache_files and all(Path(f["filename"]).is_relative_to(cache) for f in step.cache_files)
    assert {r["id"] for r in held} == held_out_ids([r["id"] for r in data], 0.25)
    assert held == [r for r in loaded.to_list() if r["id"] in {h["id"] for h in held}]  # whole rows, in order
    kept = [r for r in data if r["id"] not in {h["id"] for h in held}]
    assert sft.column_names == ["prompt", "completion"]
    assert sft.to_list() == [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in kept]
    assert phase_rows("distill", train, "on_policy").to_list() == [{"prompt": r["messages"][:-1]} for r in kept]
    assert phase_rows("distill", train, "gkd").column_names == ["messages"]
    # a pruned student is scored on the lowest ids of the training rows
    assert lowest_ids(train.shuffle(seed=1), 3)["id"][:] == sorted(r["id"] for r in kept)[:3]
    # a stage that kept nothing (one empty shard) loads as no rows
    assert len(load_rows(_stage(tmp_path / "empty", []), cache)) == 0


def test_scored_rows_take_the_offline_top_k_form():
    row = {"token_ids": [5, 6, 7, 8], "completion_start": 3, "teacher_topk_ids": [[8, 1]], "other": 1}
    row["teacher_topk_logprobs"] = [[-0.1, -3.0]]
    [formed] = topk_rows(Dataset.from_list([row])).to_list()
    assert formed == {
        "input_ids": [5, 6, 7, 8],
        "completion_mask": [0, 0, 0, 1],
        "completion_start": 3,
        "teacher_topk_ids": [[8, 1]],
        "teacher_topk_logprobs": [[-0.1, -3.0]],
    }


def test_preference_pairs_on_held_out_prompts_are_left_out():
    def turns(text, role="user"):
        return [{"role": role, "content": text}]

    pairs = [
        {"prompt": turns(q), "chosen": turns("a", "assistant"), "rejected": turns("b", "assistant")} for q in "xyz"
    ]
    held_out = [{"messages": turns("y") + turns("an answer", "assistant")}]
    kept = pairs_outside(Dataset.from_list(pairs), held_out)
    assert [p["prompt"][0]["content"] for p in kept] == ["x", "z"]
    assert phase_rows("dpo", kept).column_names == ["prompt", "chosen", "rejected"]


def peaky_teacher(vocab_size: int):
    """A random model is near uniform; a larger final norm makes its distributions confident, like a real one."""
    teacher = tiny_llama(vocab_size, seed=1)
    teacher.model.norm.weight.data *= 40
    return teacher


def _scored(rows_, teacher, tokenizer, k=5):
    """Rows with the teacher's top-k per answer token, laid out as the score stage stores them."""
    out = []
    for row in rows_:
        ids, start = prompt_and_full_ids(tokenizer, row["messages"])
        with torch.no_grad():
            logprobs = torch.log_softmax(teacher(torch.tensor([ids])).logits[0], -1)
        top = torch.topk(logprobs[start - 1 : -1], k)
        out.append(
            {
                **row,
                "token_ids": ids,
                "completion_start": start,
                "teacher_topk_ids": top.indices.tolist(),
                "teacher_topk_logprobs": top.values.tolist(),
            }
        )
    return out


def test_collator_puts_each_teacher_distribution_at_its_token(tmp_path):
    tokenizer = tiny_tokenizer()
    scored = _scored(rows(2), tiny_llama(len(tokenizer), seed=1), tokenizer)
    examples = [
        {
            "input_ids": r["token_ids"],
            "completion_start": r["completion_start"],
            "teacher_topk_ids": r["teacher_topk_ids"],
            "teacher_topk_logprobs": r["teacher_topk_logprobs"],
        }
        for r in scored
    ]
    batch = OfflineTopKCollator(pad_token_id=0, top_k=5).torch_call(examples)
    for b, r in enumerate(scored):
        start, n = r["completion_start"], len(r["teacher_topk_ids"])
        assert batch["teacher_topk_ids"][b, start : start + n].tolist() == r["teacher_topk_ids"]
        assert torch.isinf(batch["teacher_topk_logprobs"][b, :start]).all()
        assert torch.isinf(batch["teacher_topk_logprobs"][b, start + n :]).all()


def _settings(cls, **extra):
    return cls(
        max_steps=12,
        per_device_train_batch_size=4,
        learning_rate=3e-2,
        logging_steps=2,
        save_steps=6,
        max_length=64,
        precision="fp32",
        **extra,
    )


def test_offline_topk_trainer_moves_the_student_towards_the_teacher(tmp_path):
    tokenizer = tiny_tokenizer()
    teacher = peaky_teacher(len(tokenizer))
    start = save(tiny_llama(len(tokenizer), seed=2), tokenizer, tmp_path / "start")
    scored = _scored(rows(), teacher, tokenizer)
    before = answer_fit(AutoModelForCausalLM.from_pretrained(start), tokenizer, scored)
    final = run_distill(
        start,
        topk_rows(Dataset.from_list(scored)),
        _settings(DistillSettings, method="offline_topk"),
        tmp_path / "distill",
        teacher=None,
        teacher_url=None,
        top_k=5,
        log=print,
    )
    after = answer_fit(AutoModelForCausalLM.from_pretrained(final), tokenizer, scored)
    record = json.loads((final / "phase.json").read_text())
    assert record["steps"] == 12 and record["method"] == "offline_topk"
    assert any("topk_kl" in entry for entry in record["log_history"])
    assert after["kl_teacher_student"] < 0.85 * before["kl_teacher_student"]
    # the teacher scored against its own stored distribution: KL ~ 0 (checks the token alignment)
    assert answer_fit(teacher, tokenizer, scored)["kl_teacher_student"] == pytest.approx(0.0, abs=1e-4)


def test_sft_resumes_from_its_last_checkpoint(tmp_path):
    tokenizer = tiny_tokenizer()
    start = save(tiny_llama(len(tokenizer), seed=2), tokenizer, tmp_path / "start")
    out = tmp_path / "sft"
    run_sft(start, sft_data(), _settings(SFTSettings), out, print)
    first = json.loads((out / "final" / "phase.json").read_text())
    assert first["steps"] == 12 and first["resumed_from"] is None
    # a crash after the step-6 checkpoint: the next run picks it up and trains only the rest
    for item in ("final", "checkpoint-12"):
        shutil.rmtree(out / item)
    resumed = run_sft(start, sft_data(), _settings(SFTSettings), out, print)
    record = json.loads((resumed / "phase.json").read_text())
    assert record["resumed_from"] == "checkpoint-6"
    assert record["steps"] == 12
    assert min(e["step"] for e in record["log_history"] if "loss" in e) <= 6  # history carried over


def test_sft_of_an_moe_applies_the_router_loss_and_logs_expert_load(tmp_path):
    tokenizer = tiny_tokenizer()
    start = save(tiny_mixtral(len(tokenizer)), tokenizer, tmp_path / "moe")
    final = run_sft(start, sft_data(), _settings(SFTSettings, router_aux_loss_coef=0.02), tmp_path / "sft", print)
    record = json.loads((final / "phase.json").read_text())
    load = record["expert_load"]
    assert len(load) == 2  # one entry per MoE layer
    for shares in load.values():
        assert len(shares) == 4 and sum(shares) == pytest.approx(1.0)
    assert any("expert_load_max_over_mean" in entry for entry in record["log_history"])
    # every logging step: each layer's CV of load over the steps since the last log
    logged = [e["step"] for e in record["log_history"] if "expert_load_max_over_mean" in e]
    steps = record["expert_load_steps"]
    assert [s["step"] for s in steps] == logged and all(len(s["cv"]) == 2 and min(s["cv"]) >= 0 for s in steps)
    config = json.loads((final / "config.json").read_text())
    assert config["router_aux_loss_coef"] == 0.02 and config["output_router_logits"] is True


def test_sft_with_lora_trains_only_the_adapted_modules_and_saves_them_merged(tmp_path):
    tokenizer = tiny_tokenizer()
    start = save(tiny_llama(len(tokenizer), seed=3), tokenizer, tmp_path / "start")
    lora = LoraSettings(r=4, lora_alpha=8, target_modules=["q_proj"])
    final = run_sft(start, sft_data(), _settings(SFTSettings, lora=lora), tmp_path / "sft", print)
    assert not list(final.glob("adapter_*"))  # a plain transformers folder, adapters merged in
    before, after = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (start, final))
    changed = {name for name, weight in after.items() if not torch.equal(weight, before[name])}
    assert changed and all(name.endswith("self_attn.q_proj.weight") for name in changed), changed


def test_unset_training_knobs_keep_trls_defaults(tmp_path):
    from trl import SFTConfig

    from dataengine.train.phases import trainer_args

    given = SFTConfig(**trainer_args(SFTSettings(max_steps=3, seed=7), tmp_path))
    trl = SFTConfig(output_dir=str(tmp_path), bf16=False)  # its bf16 default needs a GPU
    assert (given.max_steps, given.seed) == (3, 7)
    for knob in ("learning_rate", "lr_scheduler_type", "num_train_epochs", "gradient_checkpointing", "save_steps"):
        assert getattr(given, knob) == getattr(trl, knob), knob


def test_held_out_metrics_carry_a_bootstrap_interval_and_the_teacher_gets_its_row():
    from dataengine.train import intervals
    from dataengine.train.evaluation import teacher_row

    # the interval of a share: resampling 3 of 4 passes; reruns agree; one row has none
    oks = np.array([1.0, 1.0, 1.0, 0.0])
    low, high = intervals.bootstrap(oks, intervals.share)
    assert 0.0 <= low < 0.75 < high <= 1.0 and intervals.bootstrap(oks, intervals.share) == [low, high]
    assert intervals.bootstrap(oks[:1], intervals.share) is None
    # perplexity pools tokens: exp(sum nll / sum tokens), not a mean of per-row perplexities
    assert intervals.perplexity(np.array([[2.0, 1.0], [0.0, 3.0]])) == pytest.approx(math.exp(0.5))

    tokenizer = tiny_tokenizer()
    teacher = peaky_teacher(len(tokenizer))
    scored = _scored(rows(), teacher, tokenizer)
    fit = answer_fit(teacher, tokenizer, scored)
    for key in ("kl_teacher_student", "perplexity"):
        low, high = fit["intervals"][key]
        assert low <= fit[key] <= high
    marked = [
        dict(r, kind="code" if i % 2 else "chat", tests_passed=i % 4 == 1, language_detected="en")
        for i, r in enumerate(scored)
    ]
    row = teacher_row(marked, answer_fit(teacher, tokenizer, marked))
    assert row["perplexity"] == pytest.approx(fit["perplexity"]) and row["code_pass_rate"] == 0.5
    assert row["language_fidelity"] == 1.0 and row["intervals"]["perplexity"] == fit["intervals"]["perplexity"]


def test_held_out_answers_in_batches_equal_one_at_a_time_in_the_rows_order():
    from dataengine.train import evaluation

    tokenizer, model = tiny_tokenizer(), tiny_llama(len(tiny_tokenizer()))
    # a head of its own: with the embeddings tied, a random model repeats the prompt's last token whatever came before
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    # prompts of unlike lengths, longest first, so a batch pads them and reorders them; the second starts its
    # answer with a prefix
    prompts = [
        ([{"role": "user", "content": "what is the sum of one and two and three and four"}], ""),
        ([{"role": "user", "content": "sort"}], "def "),
        ([{"role": "user", "content": "how to print a list"}], ""),
    ]
    counted: list[int] = []
    batched = evaluation.generate_answers(model, tokenizer, prompts, 12, counted.append)
    alone = [evaluation.generate_answers(model, tokenizer, [prompt], 12)[0] for prompt in prompts]
    assert counted == [3] and batched == alone
    assert batched[1].startswith("def ") and len({*batched}) == 3
    # a tokenizer without a pad token (Llama's, Mistral's) pads with its eos token, to the same answers
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    assert evaluation.generate_answers(model, tokenizer, prompts, 12) == batched
    # an MoE student saved after training with its router loss on answers in padded batches too
    moe = tiny_mixtral(len(tokenizer))
    moe.config.output_router_logits = True
    moe_answers = evaluation.generate_answers(moe, tokenizer, prompts, 6)
    assert moe_answers == [evaluation.generate_answers(moe, tokenizer, [prompt], 6)[0] for prompt in prompts]
