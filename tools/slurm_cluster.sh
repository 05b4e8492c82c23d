#!/usr/bin/env bash
# A real one-node SLURM cluster on 127.0.0.1, for the tests marked `slurm` (pytest -m slurm).
#   sudo bash tools/slurm_cluster.sh start   # install slurm-wlm and munge, configure, start, wait for an idle node
#   sudo bash tools/slurm_cluster.sh stop    # stop the daemons (the packages and the config stay)
# The node has this machine's CPUs and memory, one partition `cpu`, no accounting database and no
# cgroups: the setup of a small cluster that never had slurmdbd, which is where the profile's
# status command must not depend on `sacct`. Needs root and Debian's package registry.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
NODE=$(hostname -s)
LOGS=/var/log/slurm

install_packages() {
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge
  fi
}

start_munge() {
  install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
  install -d -o munge -g munge -m 0755 /run/munge
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
  munge -n | unmunge >/dev/null
}

write_config() {
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))  # leave 1 GiB to the system
  install -d /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGS"
  cat >"$CONF" <<EOF
# Written by rnnsweep's tools/slurm_cluster.sh: one node on 127.0.0.1.
ClusterName=rnnsweep
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${LOGS}/slurmctld.log
SlurmdLogFile=${LOGS}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# Finished jobs stay visible to squeue for 5 minutes: how Snakemake learns that a job ended.
MinJobAge=300
# scancel and time limits send SIGTERM, then SIGKILL this many seconds later.
KillWait=30
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=cpu Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
EOF
}

start_slurm() {
  pgrep -x slurmctld >/dev/null || slurmctld
  pgrep -x slurmd >/dev/null || slurmd
  for _ in $(seq 60); do
    if [ "$(sinfo -h -n "$NODE" -o %t 2>/dev/null)" = "idle" ]; then
      sinfo
      return 0
    fi
    sleep 1
  done
  echo "slurm_cluster: node $NODE is not idle after 60 s:" >&2
  sinfo >&2 || true
  tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
  return 1
}

stop() {
  pkill -x slurmd || true
  pkill -x slurmctld || true
}

case "${1:-start}" in
  start)
    [ "$(id -u)" = 0 ] || { echo "slurm_cluster: run as root (it installs packages and starts daemons)" >&2; exit 2; }
    install_packages
    start_munge
    write_config
    start_slurm
    ;;
  stop) stop ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
