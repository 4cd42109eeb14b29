#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, from Debian's packages, for the
# Slurm executor's tests (and for trying `run --executor slurm` by hand).
#
#   scripts/slurm-local.sh start    install slurm-wlm + munge if missing, write
#                                   /etc/slurm/slurm.conf, start munged,
#                                   slurmctld, slurmd; wait until `srun` works
#   scripts/slurm-local.sh stop     stop the three daemons
#   scripts/slurm-local.sh status   exit 0 when the cluster answers
#
# Needs root (or sudo). An /etc/slurm/slurm.conf that this script did not
# write is left alone and used as it is.
set -euo pipefail

MARK="# written by seedconv scripts/slurm-local.sh"
CONF=/etc/slurm/slurm.conf
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

install() {
    if command -v slurmctld >/dev/null && command -v munged >/dev/null; then return; fi
    echo "installing slurm-wlm and munge (Debian packages)"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurm-wlm munge >/dev/null
}

write_conf() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        echo "using the existing $CONF"
        return
    fi
    local host cpus mem
    host="$(hostname -s)"
    cpus="$(nproc)"
    # A little under the machine's memory, so slurmd accepts the node.
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
    $SUDO mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    $SUDO tee "$CONF" >/dev/null <<EOF
$MARK
ClusterName=seedconv-local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# No accounting: finished jobs stay visible to squeue for 10 minutes (a
# following run reads their states); array tasks count against
# MaxJobCount, so room for 10,000-task plans (bench slurm).
MinJobAge=600
MaxJobCount=100000
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=$(( mem / cpus ))
EOF
}

running() { pgrep -x "$1" >/dev/null; }

start() {
    install
    write_conf
    restart_if_changed
    if ! running munged; then
        $SUDO mkdir -p /run/munge /var/log/munge /var/lib/munge
        $SUDO chown munge:munge /run/munge /var/log/munge /var/lib/munge
        $SUDO runuser -u munge -- /usr/sbin/munged
    fi
    running slurmctld || $SUDO /usr/sbin/slurmctld
    running slurmd || $SUDO /usr/sbin/slurmd
    for _ in $(seq 1 60); do
        if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            timeout 60 srun -N1 -n1 hostname >/dev/null
            echo "slurm up: $(sinfo -h -o '%P %D %c %m %T' | head -1)"
            return 0
        fi
        # A node left DOWN by an earlier stop comes back.
        $SUDO scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true
        sleep 1
    done
    echo "slurm did not come up; see /var/log/slurm/*.log" >&2
    return 1
}

restart_if_changed() {
    # A config written by an older version of this script: restart.
    if running slurmctld && ! scontrol show config 2>/dev/null | grep -q "MaxJobCount *= *100000"; then
        if grep -qF "$MARK" "$CONF"; then stop; fi
    fi
}

stop() {
    for d in slurmd slurmctld munged; do
        if running "$d"; then $SUDO pkill -x "$d" || true; fi
    done
    for _ in $(seq 1 20); do
        running slurmd || running slurmctld || running munged || return 0
        sleep 0.5
    done
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) sinfo -h >/dev/null 2>&1 ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
