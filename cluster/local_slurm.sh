#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for CI and for trying `bertline submit` on a laptop.
#
#   bash cluster/local_slurm.sh install   # Debian packages: slurmctld slurmd slurm-client munge (root)
#   bash cluster/local_slurm.sh start     # slurm.conf for this host, munged + slurmctld + slurmd, wait for idle
#   bash cluster/local_slurm.sh stop      # scontrol shutdown, then munged
#
# Runs as root without systemd (a container or CI machine). Nothing here is needed on a real cluster.
set -euo pipefail

HOST=$(hostname -s)
CPUS=$(nproc)
# Leave a quarter of the memory to the system; slurmd refuses a node that claims more than it has.
MEMORY_MB=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.75}' /proc/meminfo)
CONF=/etc/slurm/slurm.conf

install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    cat >"$CONF" <<EOF
# Written by bertline's cluster/local_slurm.sh: one node, this host, $CPUS CPUs.
ClusterName=bertline-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds (default 120) before it may start again; CI should not.
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
NodeName=$HOST CPUs=$CPUS RealMemory=$MEMORY_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    command -v slurmctld >/dev/null || { echo "local_slurm.sh: slurmctld is not installed; run '$0 install' first (root, Debian)" >&2; exit 1; }
    write_conf
    mkdir -p /run/munge && chown munge:munge /run/munge
    pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
    pgrep -x slurmctld >/dev/null || slurmctld
    pgrep -x slurmd >/dev/null || slurmd
    for _ in $(seq 1 60); do
        state=$(sinfo -h -o %T 2>/dev/null || true)
        if [ "$state" = idle ]; then
            echo "local_slurm.sh: node $HOST is idle ($CPUS CPUs, ${MEMORY_MB} MB)"
            return 0
        fi
        sleep 0.5
    done
    echo "local_slurm.sh: the node did not become idle (state '${state:-none}'); see /var/log/slurm/" >&2
    exit 1
}

running() { pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; }

stop() {
    scontrol shutdown >/dev/null 2>&1 || true
    for _ in $(seq 1 40); do running || break; sleep 0.5; done
    if running; then pkill -x slurmctld; pkill -x slurmd; sleep 2; fi
    if running; then pkill -9 -x slurmctld; pkill -9 -x slurmd; sleep 1; fi
    if [ -f /run/munge/munged.pid ]; then kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true; fi
    for _ in $(seq 1 20); do pgrep -x munged >/dev/null || break; sleep 0.5; done
    echo "local_slurm.sh: stopped"
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
