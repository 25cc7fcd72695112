"""Expert-balance selection (`curate.balance`) at scale, on synthetic routing signatures of a
Qwen3-30B-A3B-shaped MoE (48 MoE layers, 128 experts, top-8), side by side in one run:

(a) the exact greedy (every remaining row weighed at every step) against the sampled greedy the stage uses
    beyond its budget (each step weighs rows/n x ln 100 of them), on the same rows: seconds and the mean
    per-layer CV they reach;
(b) the sampled greedy at 100,000 rows (half selected): seconds and peak memory;
(c) reading the signatures back from the route stage's parquet: as one numpy array (`rows.read_matrices`,
    what the balance stage does) against Python lists (`rows.read_rows`), seconds and memory;
(d) the routing map: `maps.MapBuilder` (row by row, bincount co-activation) against the one-hot matmul
    co-activation the map used before, then MapBuilder alone over many rows.

    .venv/bin/python bench/balance.py [--exact-rows 2000] [--rows 100000] [--read-rows 10000]
                                      [--map-compare-rows 500] [--map-rows 20000]

Each part runs in its own process, so its peak RSS is its own. Rows: 200 answer tokens each, in 16
groups that favour their own experts (`signatures`).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LAYERS, EXPERTS, TOP_K, TOKENS, GROUPS = 48, 128, 8, 200, 16


def signatures(rows: int, seed: int = 0) -> np.ndarray:
    """[rows, layers, experts] token-slot counts: Poisson around each row's group's shares. 16 groups (say
    languages and tasks) split each layer's experts, each sending 80% of its tokens to its own 8; groups are
    Zipf-frequent (the first is 8x the eighth), so all rows together load the experts unevenly and an even
    subset exists."""
    rng = np.random.default_rng(seed)
    shares = np.full((GROUPS, LAYERS, EXPERTS), 0.2 / EXPERTS)
    own = EXPERTS // GROUPS
    for layer in range(LAYERS):  # at each layer the groups split the experts between them
        order = rng.permutation(EXPERTS)
        for g in range(GROUPS):
            shares[g, layer, order[g * own : (g + 1) * own]] += 0.8 / own
    frequency = 1 / np.arange(1, GROUPS + 1)
    group = rng.choice(GROUPS, size=rows, p=frequency / frequency.sum())
    out = np.empty((rows, LAYERS, EXPERTS), dtype=np.int32)
    for start in range(0, rows, 10_000):  # in blocks: the float rates of all rows at once would be 5 GB
        block = group[start : start + 10_000]
        out[start : start + len(block)] = rng.poisson(shares[block] * TOKENS * TOP_K)
    return out


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def part(name: str, rows: int) -> dict:
    from dataengine.experts.select import even_subset, mean_cv

    sig = signatures(rows)
    before = float(mean_cv(sig.sum(axis=0)))
    if name in ("exact", "sampled"):
        started = time.perf_counter()
        chosen = even_subset(sig, rows // 2, budget=float("inf") if name == "exact" else 0)
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "cv_before": before, "cv_after": float(mean_cv(sig[chosen].sum(axis=0)))}
    return {}


def choices(rows: int, seed: int = 0):
    """Per row, [200 tokens, layers, top-8] distinct expert ids (a random start per token and layer, then
    every 16th expert: cheap to draw, and spread over all 128)."""
    rng = np.random.default_rng(seed)
    for _ in range(rows):
        start = rng.integers(0, EXPERTS, size=(TOKENS, LAYERS, 1))
        yield ((start + np.arange(TOP_K) * (EXPERTS // TOP_K)) % EXPERTS).astype(np.int16)


def one_hot_coactivation(choices: np.ndarray) -> np.ndarray:
    """The co-activation counts as the map computed them before (a one-hot token x expert matrix per layer,
    times its transpose), for comparison."""
    tokens, layers, _ = choices.shape
    out = np.zeros((layers, EXPERTS, EXPERTS))
    for layer in range(layers):
        chosen = np.zeros((tokens, EXPERTS))
        np.put_along_axis(chosen, choices[:, layer, :].astype(np.int64), 1.0, axis=1)
        out[layer] = chosen.T @ chosen
    return out


def build_map(name: str, rows: int) -> dict:
    from dataengine.experts import maps, metrics

    started = time.perf_counter()
    if name == "map":
        builder = maps.MapBuilder(EXPERTS, TOP_K, 0.25, "en")
        for i, chosen in enumerate(choices(rows)):
            builder.add(maps.RoutedRow(f"r{i}", "chat", "en", "t", True, chosen))
        builder.build()
    else:  # the counts alone, the old way
        for chosen in choices(rows):
            one_hot_coactivation(chosen)
    return {"seconds": time.perf_counter() - started} | (
        {"same": bool((metrics.coactivation_counts(c, EXPERTS) == one_hot_coactivation(c)).all())}
        if name == "one_hot" and (c := next(choices(1))) is not None
        else {}
    )


def write(rows: int, folder: Path) -> None:
    """The route stage's output for `rows` rows (signatures only)."""
    from dataengine.rows import ROUTED_FEATURES, write_shards

    records = [{"id": f"r{i}", "routing_signature": s} for i, s in enumerate(signatures(rows))]
    write_shards(records, folder, features=ROUTED_FEATURES)


def read(name: str, folder: Path) -> dict:
    from dataengine.rows import read_matrices, read_rows

    started = time.perf_counter()
    if name == "read_numpy":
        read_matrices(folder, "routing_signature")
    else:
        read_rows(folder, ["id", "routing_signature"])
    return {"seconds": time.perf_counter() - started}


def run_part(name: str, rows: int, folder: Path | None = None) -> dict:
    where = ["--folder", str(folder)] if folder else []
    done = subprocess.run(
        [sys.executable, __file__, "--part", name, "--rows", str(rows), *where],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exact-rows", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--read-rows", type=int, default=10_000)
    parser.add_argument("--map-compare-rows", type=int, default=500)
    parser.add_argument("--map-rows", type=int, default=20_000)
    parser.add_argument("--part")
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    if args.part:
        if args.part in ("map", "one_hot"):
            result = build_map(args.part, args.rows)
        elif args.part == "write":
            write(args.rows, args.folder)
            result = {}
        else:
            result = read(args.part, args.folder) if args.part.startswith("read") else part(args.part, args.rows)
        print(json.dumps(result | {"peak_rss_mb": _peak_mb()}))
        return
    exact, sampled = run_part("exact", args.exact_rows), run_part("sampled", args.exact_rows)
    print(f"(a) {args.exact_rows} rows, select half: mean CV before {exact['cv_before']:.3f}")
    for name, r in (("exact greedy", exact), ("sampled greedy", sampled)):
        print(f"    {name:15s} {r['seconds']:8.1f} s  CV after {r['cv_after']:.3f}  peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"    sampled / exact time: {sampled['seconds'] / exact['seconds']:.3f}x")
    large = run_part("sampled", args.rows)
    print(
        f"(b) {args.rows} rows, select half, sampled: {large['seconds']:.1f} s, CV {large['cv_before']:.3f} -> "
        f"{large['cv_after']:.3f}, peak RSS {large['peak_rss_mb']:.0f} MB (the signatures alone: "
        f"{args.rows * LAYERS * EXPERTS * 4 / 2**20:.0f} MB)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "routing"
        run_part("write", args.read_rows, folder)
        as_numpy, as_lists = run_part("read_numpy", 0, folder), run_part("read_lists", 0, folder)
    size = args.read_rows * LAYERS * EXPERTS * 4 / 2**20
    print(f"(c) reading {args.read_rows} rows' signatures ({size:.0f} MB as int32):")
    for name, r in (("numpy array", as_numpy), ("Python lists", as_lists)):
        print(f"    {name:13s} {r['seconds']:6.2f} s  peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"    numpy / lists time: {as_numpy['seconds'] / as_lists['seconds']:.3f}x")
    built, one_hot = run_part("map", args.map_compare_rows), run_part("one_hot", args.map_compare_rows)
    print(f"(d) the routing map of {args.map_compare_rows} rows of {TOKENS} tokens (top-{TOP_K}):")
    print(f"    MapBuilder (bincount co-activation, all metrics) {built['seconds']:7.1f} s")
    print(
        f"    one-hot matmul co-activation counts alone         {one_hot['seconds']:7.1f} s "
        f"(same counts: {one_hot['same']}); MapBuilder / one-hot: {built['seconds'] / one_hot['seconds']:.3f}x"
    )
    large = run_part("map", args.map_rows)
    print(
        f"    MapBuilder over {args.map_rows} rows ({args.map_rows * TOKENS:,} tokens): {large['seconds']:.1f} s, "
        f"peak RSS {large['peak_rss_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()
