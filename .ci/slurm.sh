#!/usr/bin/env bash
# docs/cluster.md on a real Slurm: a one-node cluster (munged, slurmctld, slurmd) started from a temporary folder,
# `sbatch --array=0-3` generating a 40-prompt file on the demo model into per-shard folders with --resume, one task
# requeued mid-run (`scontrol requeue`), then: the merged manifests hold every index exactly once, and every image is
# byte-identical to a single-process run. Installs slurm-wlm and munge with apt when they are missing (needs root, as
# in CI); the daemons it starts are stopped by their pids at exit. Needs a build (dist/): run after `npm test`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "$(id -u)" != 0 ]; then
  echo "slurm test: skipped (needs root to install and run the Slurm daemons)" >&2
  exit 0
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  echo "slurm test: installing slurm-wlm and munge" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

T=$(mktemp -d /tmp/onestep-slurm-XXXXXX)
chmod 755 "$T"
PIDS=()
cleanup() {
  local rc=$?
  set +e
  if [ -f "$T/slurm.conf" ] && [ -n "${JOB:-}" ]; then SLURM_CONF=$T/slurm.conf scancel "$JOB" 2>/dev/null; fi
  for f in "$T/slurmd.pid" "$T/slurmctld.pid" "$T/munge/munged.pid"; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null
  done
  sleep 1
  for f in "$T/slurmd.pid" "$T/slurmctld.pid" "$T/munge/munged.pid"; do
    [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null
  done
  if [ "$rc" != 0 ]; then
    echo "slurm test FAILED (rc $rc); logs:" >&2
    for f in "$T"/*.log "$T"/logs/*; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 30 "$f" >&2; }; done
  fi
  rm -rf "$T"
  exit "$rc"
}
trap cleanup EXIT

# munge: its own key, socket, pid and log files under $T.
mkdir -m 700 "$T/munge"
dd if=/dev/urandom of="$T/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$T/munge/munge.key"
SOCKET=$T/munge/munge.socket
munged --force --key-file="$T/munge/munge.key" --socket="$SOCKET" --pid-file="$T/munge/munged.pid" \
  --log-file="$T/munge/munged.log" --seed-file="$T/munge/munged.seed"

HOST=$(hostname -s)
CPUS=4
PORT=$((20000 + RANDOM % 20000))
mkdir -p "$T/state" "$T/spool" "$T/logs" "$T/out"
cat >"$T/slurm.conf" <<EOF
ClusterName=onestep-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=5
SlurmdParameters=config_overrides
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$T/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
  sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)' && break
  sleep 0.5
done
sinfo -h -o '%t' | grep -qE '^(idle|mix|alloc)' || { echo "the Slurm node did not come up" >&2; sinfo >&2; exit 1; }
echo "slurm test: one-node cluster up (${SECONDS} s)" >&2

# 40 prompts; the demo model is converted once into a cache the tasks share.
export ONESTEP_CACHE=$T/cache
for i in $(seq 0 39); do echo "a test prompt number $i, on the demo model"; done >"$T/prompts.txt"
GEN=(node "$ROOT/bin/run.js" generate "$T/prompts.txt" --seed 42 --width 128 --height 128 --threads 1 -q)
"${GEN[@]}" -o "$T/single"
echo "slurm test: single-process reference done (${SECONDS} s)" >&2

cat >"$T/onestep.sbatch" <<EOF
#!/bin/bash
#SBATCH --job-name=onestep-ci
#SBATCH --array=0-3
#SBATCH --cpus-per-task=1
#SBATCH --requeue
#SBATCH --output=$T/logs/%A_%a.out
set -euo pipefail
OUT=$T/out/shard-\$(printf '%02d' "\$SLURM_ARRAY_TASK_ID")
echo "task \$SLURM_ARRAY_TASK_ID restart \${SLURM_RESTART_COUNT:-0} on \$(hostname)"
# The shard comes from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT (docs/cluster.md).
srun ${GEN[*]} -o "\$OUT" --resume
EOF
JOB=$(sbatch --parsable "$T/onestep.sbatch")
echo "slurm test: job array $JOB submitted (${SECONDS} s)" >&2

# Requeue task 1 once it has written some but not all of its 10 images.
M1=$T/out/shard-01/manifest.jsonl
requeued=0
for _ in $(seq 600); do
  n=$( [ -f "$M1" ] && wc -l <"$M1" || echo 0)
  if [ "$n" -ge 1 ] && [ "$n" -lt 10 ]; then
    scontrol requeue "${JOB}_1"
    requeued=$n
    break
  fi
  [ "$n" -ge 10 ] && break
  sleep 0.1
done
[ "$requeued" -gt 0 ] || { echo "task 1 finished before it could be requeued mid-run" >&2; exit 1; }
echo "slurm test: task 1 requeued after $requeued of its 10 images (${SECONDS} s)" >&2
# Slurm gives a requeued job a begin time about two minutes ahead; once it is pending again, make it eligible now.
for _ in $(seq 100); do
  if [ "$(squeue -h -j "${JOB}_1" -o '%T' 2>/dev/null)" = PENDING ] && scontrol update JobId="${JOB}_1" StartTime=now 2>/dev/null; then break; fi
  sleep 0.2
done

for _ in $(seq 900); do
  [ -z "$(squeue -h -j "$JOB" 2>/dev/null)" ] && break
  sleep 0.2
  [ -n "${SLURM_TEST_VERBOSE:-}" ] && squeue -h -o '%i %T %r %S' 2>/dev/null
done
[ -z "$(squeue -h -j "$JOB")" ] || { echo "the job array did not finish in 3 minutes" >&2; squeue >&2; exit 1; }
echo "slurm test: the array finished (${SECONDS} s)" >&2
grep -q 'restart 1' "$T"/logs/"${JOB}"_1.out || { echo "task 1 did not run again after the requeue" >&2; exit 1; }

node --input-type=module - "$T" <<'EOF'
import fs from 'node:fs';
import path from 'node:path';
const T = process.argv[2];
const read = (dir) => fs.readFileSync(path.join(dir, 'manifest.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
const single = new Map(read(path.join(T, 'single')).map((e) => [e.index, fs.readFileSync(path.join(T, 'single', e.file))]));
const seen = new Map();
for (const shard of fs.readdirSync(path.join(T, 'out')).sort()) {
  const dir = path.join(T, 'out', shard);
  for (const e of read(dir)) {
    if (seen.has(e.index)) throw new Error(`index ${e.index} twice (${seen.get(e.index)} and ${shard})`);
    seen.set(e.index, shard);
    if (!fs.readFileSync(path.join(dir, e.file)).equals(single.get(e.index))) throw new Error(`image ${e.index} (${shard}/${e.file}) differs from the single-process run`);
  }
}
const missing = [...Array(40).keys()].filter((i) => !seen.has(i));
if (single.size !== 40 || missing.length) throw new Error(`missing indices: ${missing.join(', ')}`);
console.error(`slurm test: 40 indices once each across ${new Set(seen.values()).size} shard manifests, images byte-identical to the single run`);
EOF
