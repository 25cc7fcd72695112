"""How the train stage's data grows with the number of rows: peak memory and seconds from a stage's shards to
the SFT phase's dataset, side by side at each size, each path in a process of its own:

- mapped: what the train stage does (`train.data`): the shards converted once to arrow in the work folder and
  memory-mapped (`load_rows`), the held-out split a selection by the ids (`split_rows`), the 64 rows a pruned
  student is scored on (`lowest_ids`), the prompt-completion form a `map` (`sft_rows`);
- list: what it did before: every row read into a Python list (`rows.read_rows`), split in Python, the form
  made with `Dataset.from_list`.

With --trainer N,M, the mapped path also builds TRL's SFTTrainer at those sizes, which tokenizes every row
(the last step before the first optimizer step; training itself costs the same per batch either way).

    .venv/bin/python bench/train_rows.py [--sizes 100000,1000000] [--trainer 10000,100000]

Two peaks: RSS (the kernel's VmHWM), which counts the pages of a memory-mapped file the process has read, and
private memory (RssAnon, sampled), what the kernel cannot take back. The rows are bench/rows.py's synthetic
chat rows (60-160 words an answer), written as a stage's shards.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def shards(n: int, folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "bench"))
    from rows import make_rows

    from dataengine.rows import SAMPLE_FEATURES, write_shards

    write_shards(make_rows(n), folder, features=SAMPLE_FEATURES)
    return folder


def mapped(stage: Path, work: Path, trainer: bool) -> dict:
    from dataengine.train.data import load_rows, lowest_ids, sft_rows, split_rows

    rows = load_rows(stage, work / "datasets")
    train, held_out = split_rows(rows, 0.05, 8)
    lowest_ids(train, 64)
    formed = sft_rows(train)
    result = {"train": len(formed), "held_out": len(held_out)}
    if trainer:
        result["tokenized"] = _trainer(formed, work)
    return result


def listed(stage: Path) -> dict:
    from datasets import Dataset

    from dataengine.rows import held_out_ids, read_rows

    rows = read_rows(stage)
    held = held_out_ids([r["id"] for r in rows], 0.05, 8)
    train = [r for r in rows if r["id"] not in held]
    held_out = [r for r in rows if r["id"] in held]
    formed = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in train])
    return {"train": len(formed), "held_out": len(held_out)}


def _trainer(rows, work: Path) -> int:
    """TRL's SFTTrainer on the builtin teacher's tokenizer and a two-layer student of its shape: it tokenizes
    every row when it is built."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    from dataengine.recipe import load_recipe
    from dataengine.teacher.server import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(load_recipe(ROOT / "recipes" / "quickstart.yaml").teacher))
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    )
    config = SFTConfig(output_dir=str(work / "out"), max_length=512, report_to=[], bf16=False)
    trainer = SFTTrainer(model=model, args=config, train_dataset=rows, processing_class=tokenizer)
    return len(trainer.train_dataset)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--trainer", default="", help="also build TRL's SFTTrainer at these sizes")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        peaks, started = Peaks(), time.perf_counter()
        stage, work = Path(args.stage), Path(args.work)
        result = listed(stage) if args.one == "list" else mapped(stage, work, args.one == "trainer")
        print(json.dumps({**result, "seconds": time.perf_counter() - started, **peaks.stop()}))
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    trainer = [int(s) for s in args.trainer.split(",") if s]
    print(f"{'rows':>10}  {'path':<8}{'trained':>10}{'held out':>10}{'seconds':>10}{'RSS MB':>10}{'anon MB':>11}")
    for n in sorted(set(sizes) | set(trainer)):
        paths = (["list", "mapped"] if n in sizes else []) + (["trainer"] if n in trainer else [])
        with tempfile.TemporaryDirectory(prefix="bench-train-rows-") as folder:
            stage = shards(n, Path(folder) / "curated")
            for path in paths:
                _measure(n, path, stage, Path(folder) / path)


def _measure(n: int, path: str, stage: Path, work: Path) -> None:
    """One path in a process of its own, which reports its own peaks."""
    command = [sys.executable, __file__, "--one", path, "--stage", str(stage), "--work", str(work)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"{n:>10}  {path:<8} failed: {done.stderr[-1500:]}")
        return
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"{n:>10}  {path:<8}{result['train']:>10}{result['held_out']:>10}{result['seconds']:>10.1f}"
        f"{result['peak_rss_mb']:>10.0f}{result['peak_anon_mb']:>11.0f}",
        flush=True,
    )


class Peaks:
    """This process's peak RSS (VmHWM) and peak private memory (RssAnon, sampled every 20 ms)."""

    def __init__(self) -> None:
        self.anon_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.anon_kb = max(self.anon_kb, _status("RssAnon"))

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self.anon_kb = max(self.anon_kb, _status("RssAnon"))
        return {"peak_rss_mb": _status("VmHWM") / 1024, "peak_anon_mb": self.anon_kb / 1024}


def _status(field: str) -> int:
    """A field of /proc/self/status, in KB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


if __name__ == "__main__":
    main()
