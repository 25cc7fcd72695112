"""The columns of a row, listed once: `SAMPLE_FEATURES` < `CURATED_FEATURES` (with the judge's `JUDGE_CRITERIA`)
< `SCORED_FEATURES`, the kept and published subsets, the route stage's rows and the judge's preference pairs.

Columns are added from stage to stage, never renamed: a generated row is a curated row with some columns
still empty, and a scored row is a curated row with the teacher's logprobs.
"""

from __future__ import annotations

from datasets import Features, List, Value

SAMPLE_FEATURES = Features(
    {
        "id": Value("string"),
        "messages": List({"role": Value("string"), "content": Value("string")}),
        "kind": Value("string"),
        "language": Value("string"),
        "topic": Value("string"),
        "persona": Value("string"),  # who the question was asked as (generate.chat.personas), else null
        "task": Value("string"),
        # provenance
        "teacher_model": Value("string"),
        "teacher_revision": Value("string"),
        "sampling": {
            "temperature": Value("float32"),
            "top_p": Value("float32"),
            "max_tokens": Value("int32"),
            "frequency_penalty": Value("float32"),
            "presence_penalty": Value("float32"),
        },
        "seed": Value("int64"),
        "rollout_index": Value("int32"),
        "finish_reason": Value("string"),
        "prompt_tokens": Value("int32"),
        "completion_tokens": Value("int32"),
        # a conversation of several assistant turns (generate.chat.turns): each assistant turn's finish reason and
        # each user turn's (the questions the teacher wrote); null for a row of one turn. `finish_reason` and
        # `prompt_tokens` are the last turn's, `completion_tokens` every turn's
        "turn_finish_reasons": List(Value("string")),
        "turn_question_finish_reasons": List(Value("string")),
        # a thinking teacher's reasoning before its answer (rows/reasoning.py), never in `messages`; its tokens
        # (the server's count, else the teacher's tokenizer's) and whether it was closed; null without reasoning
        "reasoning": Value("string"),
        "reasoning_tokens": Value("int32"),
        "reasoning_closed": Value("bool"),
        "instruction": Value("string"),
        "question_finish_reason": Value("string"),
        "run_id": Value("string"),
        "recipe_hash": Value("string"),
        "created_at": Value("string"),
        # code tasks, parsed from the structured answer
        "code_problem": Value("string"),
        "code_solution": Value("string"),
        "code_tests": Value("string"),
        "code_parse_error": Value("string"),
        # math problems (generate.math): the problem's own answer line, the solution's final answer as
        # math-verify read it, whether it is verified and why (matches_reference, matches_majority, ...)
        "reference_answer": Value("string"),
        "final_answer": Value("string"),
        "answer_verified": Value("bool"),
        "verify_reason": Value("string"),
        # the experts each answer token went to, as the teacher's vLLM returned them (teacher.return_routed_experts):
        # base64 .npy of [answer tokens - 1, layers, top_k] expert ids; null when the server did not return them
        "teacher_routing": Value("string"),
    }
)

# every criterion a judge's rubric scores (data/rubric.yaml)
JUDGE_CRITERIA = ("helpfulness", "correctness", "instruction_following", "language", "tests_meaningful")

# Curation adds quality signals, dedup clusters and, on rejected rows, why and where they were dropped.
CURATED_FEATURES = Features(
    {
        **SAMPLE_FEATURES,
        "language_detected": Value("string"),
        "language_confidence": Value("float32"),
        "tests_passed": Value("bool"),
        "test_runtime_s": Value("float32"),
        "test_output": Value("string"),
        "contaminated_by": Value("string"),
        # a conversation cut at its last good assistant turn (curate/filters/turns.py): "step: reason" of the first
        # turn that failed, and how many assistant turns were cut; null where nothing was cut
        "cut_reason": Value("string"),
        "turns_cut": Value("int32"),
        "dedup_cluster_id": Value("string"),
        "dedup_cluster_size": Value("int32"),
        # the judge stage's verdict (curate.judge): 1-5 per criterion (null where its rubric has none), their
        # mean, the judge's one-sentence rationale, and which model judged; null without a judge
        "judge_scores": {name: Value("int8") for name in JUDGE_CRITERIA},
        "judge_score": Value("float32"),
        "judge_rationale": Value("string"),
        "judge_model": Value("string"),
        "drop_reason": Value("string"),
        "drop_step": Value("string"),
    }
)

# Kept rows have no drop reason: those columns only mean something among the rejected ones.
KEPT_FEATURES = Features({k: v for k, v in CURATED_FEATURES.items() if k not in ("drop_reason", "drop_step")})

# A published row: the teacher's per-token routing stays in the run (the routing map summarises it), it
# would multiply a row's size by its answer length x layers x top_k.
PUBLISHED_FEATURES = Features({k: v for k, v in KEPT_FEATURES.items() if k != "teacher_routing"})

# The route stage's rows: a routing signature per kept (and rejected) row.
ROUTED_FEATURES = Features(
    {
        "id": Value("string"),
        "kind": Value("string"),
        "language": Value("string"),
        "topic": Value("string"),
        "kept": Value("bool"),
        "answer_tokens": Value("int32"),
        # [layers][experts]: answer-token slots routed to each expert (top_k per token and layer)
        "routing_signature": List(List(Value("int32"))),
        "router_entropy": Value("float32"),  # nats, mean over answer tokens and layers
        "router_margin": Value("float32"),  # top-1 minus top-2 router probability, mean
        "routed_by": Value("string"),  # vllm: returned with the answer (no router probabilities); replay
    }
)

# Scoring adds the teacher's top-k logprobs for every answer token.
SCORED_FEATURES = Features(
    {
        **CURATED_FEATURES,
        "token_ids": List(Value("int32")),  # prompt + answer, with the teacher's chat template
        "completion_start": Value("int32"),  # index of the answer's first token in token_ids
        # a conversation of several assistant turns: from completion_start (its first assistant turn), 1 on every
        # assistant turn's tokens and 0 on the user turns between them; null for one turn
        "completion_mask": List(Value("int8")),
        # one entry per answer token, best first: the teacher's distribution for that position
        "teacher_topk_ids": List(List(Value("int32"))),
        "teacher_topk_logprobs": List(List(Value("float32"))),
    }
)

# A preference pair (curate.judge.pairs), TRL's conversational preference format: the prompt's turns, the
# chosen and the rejected answer, and which rows and scores they came from.
_TURNS = List({"role": Value("string"), "content": Value("string")})
PREFERENCE_FEATURES = Features(
    {
        "id": Value("string"),
        "prompt": _TURNS,
        "chosen": _TURNS,
        "rejected": _TURNS,
        "chosen_id": Value("string"),
        "rejected_id": Value("string"),
        "chosen_score": Value("float32"),
        "rejected_score": Value("float32"),
        "kind": Value("string"),
        "language": Value("string"),
        "judge_model": Value("string"),
    }
)
