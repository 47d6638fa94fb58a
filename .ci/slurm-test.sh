#!/usr/bin/env bash
# CI step: the workflow through Snakemake's Slurm executor (profiles/slurm) on a real single-node Slurm.
#
#   1. installs munge, slurmctld, slurmd and slurm-client from Debian (apt) if missing, and the `slurm` extra
#      (snakemake-executor-plugin-slurm) into .venv;
#   2. starts a private Slurm on 127.0.0.1: its own munge key and socket, slurm.conf, spool dirs, logs and ports,
#      all under one temp state dir (nothing in /etc; outside it only the link /run/slurm/conf/slurm.conf, see
#      below); the daemons run in the foreground as children of this script and their PIDs are recorded;
#   3. runs a tiny Table 3 config through `--profile profiles/slurm` and the same config with the local
#      executor; the outputs must be equal;
#   4. runs tests/slurm/Snakefile, where one job exits 3: snakemake must report it as failed and exit non-zero
#      within a bounded time (no hang);
#   5. on exit (trap, also on failure or Ctrl-C): cancels leftover jobs, stops exactly the daemons it started,
#      by PID, in reverse order, and deletes the configs it wrote with its state dir (a slurm.conf left behind
#      whose controller is down makes every later snakemake call wait ~10 s in the Slurm plugin's probe).
#
# Usage: bash .ci/slurm-test.sh        (root; Debian 12; ~1.5 min, plus ~15 s for apt on a clean machine)
# Env:   KICL_SLURM_KEEP=1 keeps the state dir (logs, workdirs) for debugging; the daemons are stopped anyway.
#        KICL_SLURM_PORT=N  slurmctld port (slurmd uses N+1); default 16817, clear of a system Slurm's 6817.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)
say() { printf '[slurm-test %4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
die() {
    say "FAIL: $*"
    exit 1
}
[ "$(id -u)" -eq 0 ] || die "run as root: this step installs Debian packages and starts slurmctld/slurmd"

# ---------------------------------------------------------------- 1. packages
missing=()
for pkg in munge slurmctld slurmd slurm-client; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    say "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -x .venv/bin/snakemake ] || make .venv/bin/.installed
if ! .venv/bin/python -c "import snakemake_executor_plugin_slurm" 2>/dev/null; then
    say "pip install -e '.[slurm]'"
    .venv/bin/pip install -q -c constraints.txt -e '.[slurm]' >/tmp/kicl-slurm-pip.log 2>&1 ||
        { cat /tmp/kicl-slurm-pip.log; die "pip install of the slurm extra failed"; }
    rm -f /tmp/kicl-slurm-pip.log
fi
SNAKEMAKE=("$ROOT/.venv/bin/snakemake")

# ---------------------------------------------------------------- 2. a private single-node Slurm
STATE=
PIDS=()      # daemons this script started, in start order
NAMES=()
WRITTEN=()   # files written outside $STATE
MADE_DIRS=() # directories made outside $STATE, innermost first

stop_pid() { # stop_pid NAME PID: SIGTERM, wait up to 10 s, then SIGKILL
    local name=$1 pid=$2
    kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 40); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
    say "stopped $name (pid $pid)"
}

RUNNING= # PID of the `timeout` around the snakemake call in progress

bounded() { # bounded LIMIT LOG CMD...: CMD under timeout, output to LOG; sets RC (124/137: timed out)
    local limit=$1 log=$2
    shift 2
    # in the background and waited for, so that a signal to this script interrupts it at once
    timeout -k 20 "$limit" "$@" >"$log" 2>&1 &
    RUNNING=$!
    set +e
    wait "$RUNNING"
    RC=$?
    set -e
    RUNNING=
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [ -n "$RUNNING" ] && kill -0 "$RUNNING" 2>/dev/null; then
        # interrupted during a snakemake call: stop it (timeout passes SIGTERM on), then its child by parent PID
        say "stopping the snakemake call in progress"
        kill "$RUNNING"
        sleep 5
        pkill -KILL -P "$RUNNING"
        stop_pid timeout "$RUNNING"
    fi
    if ((${#PIDS[@]})); then
        # jobs still queued or running (e.g. after a timeout) would outlive slurmd as orphaned slurmstepd
        local jobs
        jobs=$(squeue -h -o %i 2>/dev/null)
        if [ -n "$jobs" ]; then
            say "cancelling leftover jobs: $(echo $jobs)"
            scancel $jobs
            for _ in $(seq 60); do
                [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
                sleep 0.5
            done
        fi
        for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
            stop_pid "${NAMES[$i]}" "${PIDS[$i]}"
        done
    fi
    for f in "${WRITTEN[@]}"; do rm -f "$f"; done
    for d in "${MADE_DIRS[@]}"; do rmdir "$d"; done
    if [ $rc -ne 0 ] && [ -d "$STATE/log" ]; then
        for f in "$STATE"/log/*; do
            [ -s "$f" ] && { echo "---- tail of $f"; tail -n 30 "$f"; }
        done
    fi
    if [ -z "$STATE" ]; then
        :
    elif [ "${KICL_SLURM_KEEP:-0}" = 1 ]; then
        say "state kept in $STATE (configs included; delete it when done)"
    else
        rm -rf "$STATE" # the munge key, slurm.conf and everything else this script wrote
    fi
    say "exit $rc"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
STATE=$(mktemp -d "${TMPDIR:-/tmp}/kicl-slurm-ci.XXXXXX")
chmod 755 "$STATE" # munged insists that every directory above its socket is world-executable
mkdir -p "$STATE"/{munge,ctld,spool,log}

start() { # start NAME CMD...: run a daemon in the foreground as our child, record its PID
    local name=$1
    shift
    "$@" >"$STATE/log/$name.out" 2>&1 &
    PIDS+=($!)
    NAMES+=("$name")
    echo "$name $!" >>"$STATE/pids"
}
wait_for() { # wait_for WHAT CMD...: poll CMD for up to 30 s
    local what=$1
    shift
    for _ in $(seq 120); do
        "$@" >/dev/null 2>&1 && return 0
        kill -0 "${PIDS[-1]}" 2>/dev/null || die "$what: daemon exited (see its log below)"
        sleep 0.25
    done
    die "$what: not ready after 30 s"
}

NODE=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(($(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 8 / 10))
PORT=${KICL_SLURM_PORT:-16817}
for p in "$PORT" $((PORT + 1)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && die "port $p is in use; set KICL_SLURM_PORT"
done

dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$STATE/munge/munge.key"
start munged /usr/sbin/munged --foreground --socket="$STATE/munge/socket" --key-file="$STATE/munge/munge.key" \
    --pid-file="$STATE/munge/munged.pid" --seed-file="$STATE/munge/seed" --log-file="$STATE/log/munged.log"
munge_ok() { munge -S "$STATE/munge/socket" -n | unmunge -S "$STATE/munge/socket"; }
wait_for munged munge_ok

: >"$STATE/plugstack.conf" # keep the system's /etc/slurm/plugstack.conf out
export SLURM_CONF=$STATE/slurm.conf # every Slurm command (sbatch, squeue, scontrol ...) reads this file
cat >"$SLURM_CONF" <<CONF
# Written by .ci/slurm-test.sh; deleted with its state dir on exit.
ClusterName=kiclci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmctldPort=${PORT}
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=${STATE}/munge/socket
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
PlugStackConfig=${STATE}/plugstack.conf
# no accounting database: snakemake must poll with squeue (MinJobAge keeps finished jobs visible for 300 s)
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
StateSaveLocation=${STATE}/ctld
SlurmdSpoolDir=${STATE}/spool
SlurmctldPidFile=${STATE}/slurmctld.pid
SlurmdPidFile=${STATE}/slurmd.pid
SlurmctldLogFile=${STATE}/log/slurmctld.log
SlurmdLogFile=${STATE}/log/slurmd.log
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
CONF

# The job-side snakemake (slurm-jobstep executor) runs each job through a nested `srun` with every SLURM_*
# variable stripped, SLURM_CONF included, so srun falls back to the default locations: /etc/slurm/slurm.conf,
# then /run/slurm/conf/slurm.conf (where a configless slurmd caches its config). We link the second one to our
# config, refuse to shadow a real Slurm set-up, and remove the link (and the directories we made) on exit.
CLIENT_CONF=/run/slurm/conf/slurm.conf
[ -e /etc/slurm/slurm.conf ] && die "/etc/slurm/slurm.conf exists: this machine already has a Slurm set-up; run this test on a clean one"
if [ -L "$CLIENT_CONF" ] && [[ "$(readlink "$CLIENT_CONF")" == */kicl-slurm-ci.*/slurm.conf ]] &&
    [ ! -e "$CLIENT_CONF" ]; then
    rm -f "$CLIENT_CONF" # dangling link left by an earlier run that was killed with SIGKILL
fi
[ -e "$CLIENT_CONF" ] || [ -L "$CLIENT_CONF" ] && die "$CLIENT_CONF exists: this machine already has a Slurm set-up"
for d in /run/slurm /run/slurm/conf; do
    [ -d "$d" ] || { mkdir "$d" && MADE_DIRS=("$d" "${MADE_DIRS[@]}"); }
done
ln -s "$SLURM_CONF" "$CLIENT_CONF"
WRITTEN+=("$CLIENT_CONF")

start slurmctld /usr/sbin/slurmctld -D -f "$SLURM_CONF"
ctld_up() { scontrol ping | grep -q UP; }
wait_for slurmctld ctld_up
start slurmd /usr/sbin/slurmd -D -f "$SLURM_CONF" -N "$NODE"
node_idle() { sinfo -h -o %T | grep -qx idle; }
wait_for slurmd node_idle
say "Slurm up: node $NODE, $CPUS CPUs, ${MEM_MB} MB, partition debug; $(tr '\n' ' ' <"$STATE/pids")"

# Overrides of profiles/slurm for this cluster. --default-resources replaces the profile's whole
# default-resources entry, which drops its <your-...> partition/account placeholders; no accounting here, so
# job states come from squeue; first status check after 5 s instead of 40 s.
SLURM_CI_ARGS=(
    --profile "$ROOT/profiles/slurm"
    --workflow-profile none
    --default-resources slurm_partition=debug mem_mb=1000 runtime=10
    --slurm-status-command squeue
    --slurm-init-seconds-before-status-checks 5
)

# ---------------------------------------------------------------- 3. Table 3 through Slurm equals a local run
# A tiny theory config (3 HMMs x 20 prompts); the experiment is seeded, so both runs must agree exactly.
# The runs work in scratch dirs (-d), where the Snakefile's relative `configfile: "config.yaml"` is not found,
# so the embedded default is passed explicitly before the override.
cat >"$STATE/theory-ci.yaml" <<'YAML'
theory:
  n_hmms: 3
  n_prompts: 20
YAML
THEORY_TARGETS=(theory_table3_tables theory_table3_figure) # rule names: every Table 3 output
run_theory() { # run_theory NAME TIMEOUT ARGS...: snakemake in $STATE/work-NAME, log to $STATE/log
    local name=$1 limit=$2 t
    shift 2
    mkdir -p "$STATE/work-$name"
    t=$(date +%s)
    bounded "$limit" "$STATE/log/snakemake-$name.log" "${SNAKEMAKE[@]}" -s "$ROOT/Snakefile" -d "$STATE/work-$name" \
        --configfile "$ROOT/config.yaml" "$STATE/theory-ci.yaml" "$@" "${THEORY_TARGETS[@]}"
    say "$name run: snakemake exited $RC after $(($(date +%s) - t)) s"
    [ $RC -eq 0 ] || die "$name run of the theory stage failed (log: snakemake-$name.log)"
}
say "Table 3 (tiny config) with the local executor"
run_theory local 300 --workflow-profile none --cores 2
say "Table 3 (tiny config) through Slurm"
run_theory slurm 600 "${SLURM_CI_ARGS[@]}"
n_sbatch=$(grep -c "has been submitted with SLURM jobid" "$STATE/log/snakemake-slurm.log" || true)
[ "$n_sbatch" -ge 1 ] || die "no job was submitted to Slurm"
grep -q "slurm_logs/group_theory" "$STATE/log/snakemake-slurm.log" ||
    die "the theory group (profiles/slurm: groups) was not submitted as one Slurm job"
# finished jobs stay visible to squeue for MinJobAge: check what the profile asked Slurm for
squeue --states=all -h -o '%i|%P|%m|%l|%C|%T|%k' | tee "$STATE/log/squeue-theory.txt"
grep -q '^[0-9]*|debug|2000M|' "$STATE/log/squeue-theory.txt" ||
    die "the theory job did not get the profile's resources (partition debug, 2000 MB from set-resources)"
"$ROOT/.venv/bin/python" - "$STATE/work-local/results/theory" "$STATE/work-slurm/results/theory" <<'PY'
"""Compare two result folders: the same files; CSVs byte-equal or numerically equal, other files byte-equal."""
import filecmp, pathlib, sys
import pandas as pd

local, slurm = map(pathlib.Path, sys.argv[1:])
names = sorted(p.name for p in local.iterdir())
assert names, f"no outputs in {local}"
assert names == sorted(p.name for p in slurm.iterdir()), "different files in the local and Slurm results"
for name in names:
    if filecmp.cmp(local / name, slurm / name, shallow=False):
        print(f"  {name}: byte-identical")
    elif name.endswith(".csv"):
        pd.testing.assert_frame_equal(pd.read_csv(local / name), pd.read_csv(slurm / name), rtol=1e-12, atol=0)
        print(f"  {name}: numerically equal (rtol 1e-12)")
    else:
        sys.exit(f"{name} differs between the local and the Slurm run")
PY
say "OK: Table 3 through Slurm ($n_sbatch sbatch submissions) equals the local run"

# ---------------------------------------------------------------- 3b. forward passes and a conditions table
# Two conditions of a tiny random Llama on a tiny local task, through Slurm: the forward pass's resource
# functions (memory and time from the model and the prompt file), the dtype check and the condition paths are
# exercised by real submissions. The profile's GPU partition placeholder and its 4 threads (more than this
# 2-CPU node has: the job would pend forever) are replaced for forward_pass here.
WORK=$STATE/work-conditions
mkdir -p "$WORK"
"$ROOT/.venv/bin/python" - "$STATE" <<'PY'
"""A tiny random Llama with its tokenizer, and a two-class local task, for the Slurm conditions run."""
import json, pathlib, sys

sys.path.insert(0, "tests")
import numpy as np
from helpers import CONTENT, make_model_folder

state = pathlib.Path(sys.argv[1])
make_model_folder(state / "tiny-model", "llama")
data = state / "toy-task"
data.mkdir()
rng = np.random.default_rng(0)
for split, n in [("train", 40), ("validation", 24)]:
    rows = [{"text": " ".join(rng.choice(CONTENT, 3)), "label": int(rng.integers(0, 2))} for _ in range(n)]
    (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
PY
cat >"$STATE/conditions-ci.yaml" <<YAML
run: {models: [tiny], tasks: [toy], encoders: [], conditions: [paper, flipped_labels]}
models: {tiny: {source: local, local: {path: "$STATE/tiny-model"}, dtype: float32, device: cpu}}
tasks:
  toy:
    source: local
    local: {dir: "$STATE/toy-task"}
    eval_split: validation
    demo_split: train
    label_names: [negative, positive]
    verbalizers: [" negative", " positive"]
    template: {input_prefix: "Input: ", output_prefix: " Output:", delimiter: "\n"}
protocol: {n_demos: 3, n_select: 12, n_heldout: 12}
capture: {kv_prompts: 0, batch_size: 4, shard_size: 8}
conditions_stage: {tasks: [toy], head_maps: []}
causal: {tasks: []}
theory_icl: {enabled: false}
analysis: {bootstrap: {n_boot: 50}}
YAML
say "forward passes and a conditions table of two conditions (tiny model) through Slurm"
t=$(date +%s)
# the target comes first: --configfile and --set-resources take every value that follows them
bounded 900 "$STATE/log/snakemake-conditions.log" "${SNAKEMAKE[@]}" results/conditions/tiny/toy/conditions.csv \
    -s "$ROOT/Snakefile" -d "$WORK" "${SLURM_CI_ARGS[@]}" --set-resources forward_pass:slurm_partition=debug \
    --set-threads forward_pass=1 \
    --configfile "$ROOT/config.yaml" "$STATE/conditions-ci.yaml"
say "conditions run: snakemake exited $RC after $(($(date +%s) - t)) s"
[ $RC -eq 0 ] || { tail -40 "$STATE/log/snakemake-conditions.log"; die "the conditions run through Slurm failed"; }
for rule in dtype_check forward_pass conditions_numbers; do
    grep -q "slurm_logs/rule_$rule" "$STATE/log/snakemake-conditions.log" || die "no Slurm job of rule $rule"
done
n_forward=$(grep -cE "^(local)?rule forward_pass:" "$STATE/log/snakemake-conditions.log" || true)
[ "$n_forward" -eq 2 ] || die "expected 2 forward_pass jobs (one per condition), saw $n_forward"
for condition in paper flipped_labels; do
    [ -d "$WORK/results/forward/tiny/toy/$condition.zarr" ] || die "no forward store for condition $condition"
done
"$ROOT/.venv/bin/python" - "$WORK/results/conditions/tiny/toy/conditions.csv" <<'PY'
import sys
import pandas as pd

table = pd.read_csv(sys.argv[1])
assert list(table["condition"]) == ["paper", "flipped_labels"], table["condition"].tolist()
assert table["n"].eq(24).all(), table["n"].tolist()
print(table[["condition", "accuracy", "accuracy_diff", "yhat_change"]].to_string(index=False))
PY
say "OK: two conditions' forward passes and their conditions table through Slurm"

# ---------------------------------------------------------------- 4. a failing job is reported, no hang
WORK=$STATE/work-fail
mkdir -p "$WORK"
say "failing job through Slurm (tests/slurm/Snakefile)"
t=$(date +%s)
bounded 300 "$STATE/log/snakemake-fail.log" "${SNAKEMAKE[@]}" -s "$ROOT/tests/slurm/Snakefile" -d "$WORK" \
    "${SLURM_CI_ARGS[@]}" --keep-going --retries 0
say "snakemake exited $RC after $(($(date +%s) - t)) s"
[ $RC -eq 124 ] || [ $RC -eq 137 ] && die "snakemake hung on the failed job (killed by timeout after 300 s)"
[ $RC -ne 0 ] || die "snakemake exited 0 although rule 'fail' exits 3"
grep -q "Error in rule fail" "$STATE/log/snakemake-fail.log" || die "no 'Error in rule fail' in the snakemake log"
[ -s "$WORK/results/ok.txt" ] || die "the good job's output is missing"
[ ! -e "$WORK/results/fail.txt" ] || die "the failed job's output exists"
say "OK: the failed Slurm job was reported ($(grep -o "SLURM status is: '[A-Z_]*'" "$STATE/log/snakemake-fail.log" | head -1))"

say "all Slurm checks passed in $(($(date +%s) - T0)) s"
