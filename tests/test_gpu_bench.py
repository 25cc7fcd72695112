"""bench/gpu_experts.py, the script a person with one GPU runs, kept working: a smoke run of it on CPU at a
tiny Qwen3-MoE shape."""

from __future__ import annotations

from bench.gpu_experts import main

TINY = "--device cpu --dtype float32 --layers 2 --hidden 64 --experts 8 --top-k 2 --moe-width 32 --vocab 512 "
TINY += "--heads 4 --kv-heads 2 --head-dim 16 --tokens 256 --row-tokens 64 --batch 2"


def test_the_gpu_readiness_script_runs_every_step_on_a_tiny_qwen3_moe(capsys):
    results = main(TINY.split())
    assert list(results) == [
        "model",
        "route replay",
        "expert scoring (frequency + REAP)",
        "MoE student, 4 of 8 experts",
        "dense merge (routing frequency)",
    ]
    printed = capsys.readouterr().out
    assert "cpu, float32, 256 tokens in rows of 64" in printed and "| route replay |" in printed
    total, kept, merged = (
        int(results[step][2].split(" parameters")[0].replace(",", ""))
        for step in ("model", "MoE student, 4 of 8 experts", "dense merge (routing frequency)")
    )
    assert merged < kept < total
