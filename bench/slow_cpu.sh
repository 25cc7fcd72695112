#!/usr/bin/env bash
# Run a command as if on the 2-core AVX2-only EPYC (the first-run issue; shared/DESIGN.md): torch, oneDNN
# and MKL capped at AVX2 (no native bfloat16, so the engine picks float32), and the command's process tree held to
# QUOTA of one core's time across all cores by a cgroup CPU quota.
#
#     bench/slow_cpu.sh [--quota 0.66 | --per-core 0.33] COMMAND [ARG...]
#     bench/slow_cpu.sh .venv/bin/python bench/generate.py --prompts 32 --max-tokens 96 --contenders stage
#
# The default quota is calibrated on that machine's one figure of the engine's kind: vLLM offline in float32 on
# both cores, 32 prompts x 96 tokens, 57.6 tokens/s there; 56.2 with this quota on the 2-core EPYC of
# bench/BENCHMARKS.md ("An emulated AVX2-only EPYC"). A quota slows what runs on both cores 3x to 4x there, but a single
# busy thread only 1.5x (it may use the whole quota alone), so single-threaded work runs faster here than there:
# a bare matmul 2x, while transformers decoding a small batch on one thread came within 7% of that machine's figure
# (bench/BENCHMARKS.md, "A third figure to check the emulation by"), where the per-core share ran it at half.
# `--per-core SHARE` instead leaves every core to the command (and to everything else on the machine) only SHARE of
# the time: a real-time thread pinned to each core spins the rest, so one busy thread slows as much as two.
# Needs root: the quota a writable cgroup CPU controller (v1 `cpu.cfs_quota_us` or v2 `cpu.max`; the cgroup is
# removed when the command ends), the spinners real-time priority.
set -euo pipefail

quota=0.66
share=""
case "${1:-}" in
    --quota) quota=${2:?--quota needs a number of cores, e.g. 0.66}; shift 2 ;;
    --per-core) share=${2:?--per-core needs a share of each core, e.g. 0.33}; shift 2 ;;
esac
if [[ $# -eq 0 ]]; then
    echo "usage: bench/slow_cpu.sh [--quota CORES | --per-core SHARE] COMMAND [ARG...]" >&2
    exit 2
fi
if [[ -n "$share" ]]; then
    awk -v s="$share" 'BEGIN { exit !(s + 0 > 0 && s + 0 < 1) }' || { echo "--per-core: a share between 0 and 1, got $share" >&2; exit 2; }
    # the cores this script may run on (not `nproc`, which follows OMP_NUM_THREADS)
    cpus=$(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))')
else
    awk -v q="$quota" 'BEGIN { exit !(q + 0 >= 0.01) }' || { echo "--quota: a number of cores of 0.01 or more, got $quota" >&2; exit 2; }
fi

group=""
spinners=()
cleanup() {
    [[ ${#spinners[@]} -eq 0 ]] || kill "${spinners[@]}" 2>/dev/null || true
    [[ -z "$group" ]] || rmdir "$group" 2>/dev/null || echo "bench/slow_cpu.sh: processes left in $group" >&2
}
trap cleanup EXIT
if [[ -z "$share" ]]; then
    period=100000
    limit=$(awk -v q="$quota" -v p="$period" 'BEGIN { printf "%d", q * p }')
    name="dataengine-slow-cpu-$$"
    if [[ -w /sys/fs/cgroup/cpu ]]; then  # cgroup v1
        mkdir "/sys/fs/cgroup/cpu/$name"
        group=/sys/fs/cgroup/cpu/$name
        echo "$period" >"$group/cpu.cfs_period_us"
        echo "$limit" >"$group/cpu.cfs_quota_us"
    elif [[ -w /sys/fs/cgroup/cgroup.subtree_control ]] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then  # v2
        echo +cpu >/sys/fs/cgroup/cgroup.subtree_control
        mkdir "/sys/fs/cgroup/$name"
        group=/sys/fs/cgroup/$name
        echo "$limit $period" >"$group/cpu.max"
    else
        echo "bench/slow_cpu.sh: no writable cgroup CPU controller here (needs root, cgroup v1 cpu or v2 cpu.max)" >&2
        exit 1
    fi
else
    # busy the first (1 - SHARE) of every 9 ms of the clock at real-time priority, which takes the core from any
    # ordinary thread, then sleep to the next 9 ms. Every core's spinner keeps the same phase, so the command's
    # threads get their cores at the same moments: threads that wait for each other (OpenMP's) lose no more than
    # on a CPU that is slower throughout. The kernel lets real-time threads have up to 95% of a core. A spinner
    # ends when this script does, even killed with SIGKILL (its parent changes), so none is left spinning.
    for cpu in $cpus; do
        python3 -c '
import os, sys, time
parent = os.getppid()
os.sched_setaffinity(0, {int(sys.argv[1])})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
period = 0.009
busy = period * (1 - float(sys.argv[2]))
while os.getppid() == parent:
    while time.monotonic() % period < busy:
        pass
    time.sleep(period - time.monotonic() % period)
' "$cpu" "$share" &
        spinners+=($!)
    done
    sleep 0.5
    for pid in "${spinners[@]}"; do
        kill -0 "$pid" 2>/dev/null || { echo "bench/slow_cpu.sh: a spinner could not start (real-time priority needs root)" >&2; exit 1; }
    done
fi

# the command runs in a child shell (moved into the quota's group), in the background so that a TERM or Ctrl-C here
# reaches it at once; the group goes once it has ended (rmdir fails while a leftover process is still in it: that is
# reported, not hidden)
(
    [[ -z "$group" ]] || echo "$BASHPID" >"$group/cgroup.procs"
    export ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
    exec "$@"
) &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
while kill -0 "$child" 2>/dev/null; do
    wait "$child" || true  # a trapped signal ends the wait early: wait again until the command has ended
done
rc=0
wait "$child" || rc=$?  # bash keeps the ended command's status
exit "$rc"
