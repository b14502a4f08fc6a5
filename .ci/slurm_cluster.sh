#!/usr/bin/env bash
# A single-node SLURM cluster on localhost for tests: munged + slurmctld + slurmd, config, state and logs in one temp
# folder, its own ports and munge socket (no system service touched). Needs root and slurm-wlm + munge (Debian:
# apt-get install slurm-wlm munge).
#   bash .ci/slurm_cluster.sh COMMAND...   # start, run COMMAND with SLURM_CONF set, stop and remove (what .ci/run does)
#   bash .ci/slurm_cluster.sh start DIR     # start into DIR (prints SLURM_CONF=...); `stop DIR` ends it
# KillWait=2: a scancelled job gets SIGKILL 2 s after SIGTERM (submitit ignores SIGTERM), so tests see it end at once.
set -euo pipefail

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start() {
  local dir=$1
  for bin in munged slurmctld slurmd; do
    command -v "$bin" >/dev/null || { echo "slurm_cluster: '$bin' not found (apt-get install slurm-wlm munge)" >&2; exit 3; }
  done
  [ "$(id -u)" = 0 ] || { echo "slurm_cluster: slurmd needs root" >&2; exit 3; }
  mkdir -p "$dir"/{state,spool,log}
  chmod 700 "$dir"
  dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 status=none
  chmod 600 "$dir/munge.key"
  munged --force --socket="$dir/munge.sock" --key-file="$dir/munge.key" --log-file="$dir/log/munged.log" \
    --pid-file="$dir/munged.pid" --seed-file="$dir/munged.seed"
  local mem_mb
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  cat > "$dir/slurm.conf" <<CONF
ClusterName=sweeps-test
SlurmctldHost=localhost
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
AuthInfo=socket=$dir/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF=$dir/slurm.conf
  slurmctld -i
  slurmd -N localhost
  for _ in $(seq 60); do  # until the node is idle: jobs can run
    sinfo -h -o %t 2>/dev/null | grep -qx idle && { echo "SLURM_CONF=$SLURM_CONF"; return 0; }
    sleep 0.5
  done
  echo "slurm_cluster: the node did not come up; logs in $dir/log" >&2
  tail -n 20 "$dir"/log/*.log >&2 || true
  stop "$dir"
  exit 4
}

stop() {
  local dir=$1
  export SLURM_CONF=$dir/slurm.conf
  scancel --full --quiet -u root 2>/dev/null || true
  for pidfile in slurmd.pid slurmctld.pid munged.pid; do
    [ -f "$dir/$pidfile" ] && kill "$(cat "$dir/$pidfile")" 2>/dev/null || true
  done
  sleep 1
  rm -rf "$dir"
}

case "${1:-}" in
  start) start "$2" ;;
  stop) stop "$2" ;;
  "") echo "usage: bash .ci/slurm_cluster.sh COMMAND... | start DIR | stop DIR" >&2; exit 2 ;;
  *)
    dir=$(mktemp -d /tmp/sweeps-slurm-XXXXXX)
    start "$dir" >&2
    trap 'stop "$dir"' EXIT
    export SLURM_CONF=$dir/slurm.conf
    "$@"
    ;;
esac
