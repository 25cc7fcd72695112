"""A training phase through `accelerate launch` (`train.launch`).

The stage writes what the phase needs into the phase's folder (`launch.json`, the phase's rows as a `datasets`
folder that every process memory-maps); accelerate starts the processes (data parallel, or FSDP / DeepSpeed
from the user's accelerate config file); each runs
`python -m dataengine.train.launch <launch.json>`, which calls the same phase function the stage calls in
process (`phases.run_phase`). Checkpoints, resuming and the phase's `final/` are unchanged; rank 0 writes it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dataengine.errors import StageError
from dataengine.recipe import DistillSettings, DPOSettings, LaunchSettings, SFTSettings, TrainerSettings, resolve_path

if TYPE_CHECKING:
    from datasets import Dataset

SPEC = "launch.json"
LOG = "launch.log"
SETTINGS = {"sft": SFTSettings, "dpo": DPOSettings, "distill": DistillSettings}


def launch_phase(
    phase: str,
    start: Path,
    rows: Dataset,
    settings: TrainerSettings,
    out: Path,
    launch: LaunchSettings,
    base_dir: Path,
    log: Callable[[str], None],
    **extra: Any,
) -> Path:
    """Train `phase` ("sft", "dpo" or "distill") from `start` on `rows` (in the phase's form, `data.phase_rows`)
    in `out` through accelerate launch;
    `extra` (teacher, teacher_url, top_k) as `phases.run_phase` takes them. Returns the phase's `final/`."""
    from dataengine.train.phases import DONE

    out.mkdir(parents=True, exist_ok=True)
    # written whole once, so no process maps it half-written or races another to build it
    saved, tmp = out / "rows", out / "rows.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    rows.save_to_disk(str(tmp))
    shutil.rmtree(saved, ignore_errors=True)
    os.replace(tmp, saved)
    spec = {
        "phase": phase,
        "start": str(start),
        "rows": str(saved),
        "settings": settings.model_dump(mode="json", exclude_unset=True),
        "out": str(out),
        **extra,
    }
    (out / SPEC).write_text(json.dumps(spec, indent=2))
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch_args(launch, base_dir)]
    command += ["-m", "dataengine.train.launch", str(out / SPEC)]
    log(f"{phase}: accelerate launch on {launch.num_processes} process(es); log: {out / LOG}")
    with open(out / LOG, "ab") as fh:
        fh.write(f"\n$ {' '.join(command)}\n".encode())
        fh.flush()
        code = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    final = out / "final"
    if code != 0 or not (final / DONE).is_file():
        tail = "\n".join((out / LOG).read_text(errors="replace").splitlines()[-20:])
        raise StageError(
            f"{phase}: accelerate launch exited with code {code}; the last lines of {out / LOG}:\n{tail}\n"
            "Run again to resume from the phase's last checkpoint"
        )
    return final


def launch_args(launch: LaunchSettings, base_dir: Path) -> list[str]:
    """accelerate launch's arguments: the user's config file as it is, else plain data parallel (--multi_gpu, which
    on a machine without GPUs runs CPU processes over gloo)."""
    args = ["--num_processes", str(launch.num_processes)]
    if launch.config_file is not None:
        return ["--config_file", str(resolve_path(launch.config_file, base_dir)), *args]
    # the values accelerate would otherwise warn it assumed; the precision is the trainer's (bf16 or fp32)
    args += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return (["--multi_gpu"] if launch.num_processes > 1 else []) + args


def main(argv: list[str]) -> int:
    from datasets import load_from_disk

    from dataengine.train.phases import run_phase

    spec = json.loads(Path(argv[0]).read_text())
    phase = spec.pop("phase")
    settings = SETTINGS[phase].model_validate(spec.pop("settings"))
    rows = load_from_disk(spec.pop("rows"))
    run_phase(phase, Path(spec.pop("start")), rows, settings, Path(spec.pop("out")), print, **spec)
    # the process group ends before the interpreter does, as TRL's scripts end theirs (`trainer.end()`): left to
    # the exit, a gloo process once aborted after the phase was saved ("terminate called without an active
    # exception", SIGABRT), and torchrun failed the launch
    from accelerate import PartialState

    PartialState().destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
