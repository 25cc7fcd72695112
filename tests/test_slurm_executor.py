"""`curate.executor: slurm` through datatrove's SlurmPipelineExecutor, up to the cluster boundary.

There is no Slurm here, so `sbatch`, `srun`, `squeue` and `scontrol` are small stand-ins on PATH: sbatch runs the
generated array script once per array index, as a cluster would, with the job's SLURM_* variables set. The
launch scripts, the pickled executors and launch_pickled_pipeline are datatrove's real ones.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
from datatrove.pipeline.readers import JsonlReader

from dataengine.curate.dedup import dedup_language
from dataengine.errors import StageError
from dataengine.executors import pipeline_runner
from dataengine.recipe import DedupConfig, ExecutorSettings, SlurmSettings
from tests.planted_corpus import groups, planted_corpus
from tests.test_dedup import write_docs

pytestmark = pytest.mark.slow

SBATCH = """#!{python}
import os, re, subprocess, sys
script = sys.argv[-1]
text = open(script).read()
env = dict(os.environ)
for arg in sys.argv[1:-1]:
    if arg.startswith("--export=ALL,"):
        env.update(kv.split("=", 1) for kv in arg.split(",")[1:])
found = re.search(r"#SBATCH --array=(\\d+)-(\\d+)", text)
indices = range(int(found.group(1)), int(found.group(2)) + 1) if found else [0]
if {run_jobs}:
    for i in indices:
        job = {{"SLURM_ARRAY_TASK_ID": str(i), "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "localhost"}}
        subprocess.run(["bash", script], env={{**env, **job}},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print("Submitted batch job 4242")
"""


def fake_slurm(folder: Path, run_jobs: bool = True) -> Path:
    folder.mkdir()
    tools = {
        "sbatch": SBATCH.format(python=sys.executable, run_jobs=run_jobs),
        "srun": '#!/bin/bash\nexec "${@: -2}"\n',  # srun ... -l -n 1 launch_pickled_pipeline PATH
        "squeue": "#!/bin/bash\nexit 0\n",  # nothing queued: every job has ended
        "scontrol": '#!/bin/bash\n[ "$1 $2" = "show hostnames" ] && echo localhost\n',
    }
    for name, text in tools.items():
        (folder / name).write_text(text)
        (folder / name).chmod(stat.S_IRWXU)
    return folder


def _slurm(workers: int) -> ExecutorSettings:
    return ExecutorSettings(executor="slurm", workers=workers, slurm=SlurmSettings(partition="cpu", poll_s=0.1))


def test_dedup_on_slurm(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_slurm(tmp_path / 'bin')}:{Path(sys.executable).parent}:{os.environ['PATH']}")
    planted = planted_corpus(distinct=40, exact=8, near=8, edits=1, seed=2)
    write_docs(tmp_path / "in", planted.docs, shards=2)
    run = pipeline_runner(_slurm(2), tmp_path / "logs")
    dedup_language(
        "en", tmp_path / "in", tmp_path / "work", tmp_path / "rejected", tmp_path / "out", DedupConfig(), run
    )
    kept = {d.id for d in JsonlReader(str(tmp_path / "out")).run()}
    assert len(kept) == 40 and all(len(g & kept) == 1 for g in groups(planted))
    script = (tmp_path / "logs" / "minhash-sigs-en" / "launch_script.slurm").read_text()
    assert "#SBATCH --partition=cpu" in script and "launch_pickled_pipeline" in script


def test_a_slurm_job_that_ends_unfinished_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_slurm(tmp_path / 'bin', run_jobs=False)}:{os.environ['PATH']}")
    write_docs(tmp_path / "in", planted_corpus(distinct=5, exact=0, near=0).docs)
    run = pipeline_runner(_slurm(1), tmp_path / "logs")
    with pytest.raises(
        StageError,
        match=r"exact-sigs-en: 1 of 1 tasks unfinished on slurm; task\(s\) 0 ended unfinished \(see .*slurm_logs\)",
    ):
        run("exact-sigs-en", [JsonlReader(str(tmp_path / "in"))], 1)
