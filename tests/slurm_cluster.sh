#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for the tests (Debian slurm-wlm + munge).
#   tests/slurm_cluster.sh start   # prints the SLURM_CONF to export
#   tests/slurm_cluster.sh stop
# Everything lives under $RBD_SLURM_DIR (default /tmp/rbd-slurm): config, state, spool, logs.
# No cgroups (proctrack/linuxproc, task/none) so it runs inside containers.
set -euo pipefail
DIR="${RBD_SLURM_DIR:-/tmp/rbd-slurm}"
CONF="$DIR/slurm.conf"
NODE="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

start_munge() {
  if ! pgrep -x munged >/dev/null; then
    [ -f /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key -f; }
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge /etc/munge/munge.key
    chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key; chmod 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged
  fi
  for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "munge did not start" >&2; return 1
}

write_conf() {
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  # Like most sites' epilogs: remove the job user's MPI shared-memory segments. A step that
  # was killed (requeue, preemption) leaves MPICH's /dev/shm/mpich_shm_* behind, and the
  # requeued job's step has the same job and step id, so its MPI_Init would attach to the
  # stale segment and fail.
  cat > "$DIR/epilog.sh" <<'EPILOG'
#!/bin/sh
find /dev/shm -maxdepth 1 -name 'mpich_shm_*' -uid "${SLURM_JOB_UID:-0}" -delete 2>/dev/null
exit 0
EPILOG
  chmod +x "$DIR/epilog.sh"
  cat > "$CONF" <<CONF
ClusterName=rbdtest
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=${RBD_SLURMCTLD_PORT:-6917}
SlurmdPort=${RBD_SLURMD_PORT:-6918}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
Epilog=$DIR/epilog.sh
# requeued jobs may start again at once (the default holds them back)
SchedulerParameters=nohold_on_prolog_fail
KillWait=30
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
}

case "${1:-}" in
  start)
    # a fresh cluster numbers its jobs from 1 again: stale MPICH segments left by killed steps
    # of an earlier cluster would be attached by the new jobs of the same ids
    find /dev/shm -maxdepth 1 -name 'mpich_shm_*' -uid "$(id -u)" -delete 2>/dev/null || true
    start_munge
    write_conf
    export SLURM_CONF="$CONF"
    pgrep -f "slurmctld -f $CONF" >/dev/null || slurmctld -f "$CONF"
    pgrep -f "slurmd -f $CONF" >/dev/null || slurmd -f "$CONF"
    for _ in $(seq 100); do
      if sinfo -h -o %T 2>/dev/null | grep -qE "^(idle|mixed|allocated)"; then
        echo "SLURM_CONF=$CONF"; exit 0
      fi
      scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
      sleep 0.2
    done
    echo "slurm did not come up; see $DIR/log" >&2; exit 1 ;;
  stop)
    # end every job first: with proctrack/linuxproc, killing slurmd would orphan job steps
    if [ -f "$CONF" ]; then
      export SLURM_CONF="$CONF"
      scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
      for _ in $(seq 100); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.3; done
    fi
    pkill -f "slurmd -f $CONF" 2>/dev/null || true
    pkill -f "slurmctld -f $CONF" 2>/dev/null || true
    for _ in $(seq 50); do pgrep -f "slurm(ctld|d) -f $CONF" >/dev/null || break; sleep 0.1; done
    rm -rf "$DIR/state" "$DIR/spool" ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
