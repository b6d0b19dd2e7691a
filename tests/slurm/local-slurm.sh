#!/bin/bash
# Copy of the team tool ../shared/tools/local-slurm.sh (kept here so CI machines have it); tests/test_slurm.py runs it.
# Single-machine Slurm (Debian bookworm slurm-wlm 22.05.8) with N fake nodes, for testing job templates.
# Usage: as root: [FAKE_GPUS=4] bash local-slurm.sh [NNODES=2] [STATE_DIR]
# FAKE_GPUS>0 adds gres/gpu backed by char-device nodes (mknod c 1 3 == /dev/null) so --gpus-per-node works
# and Slurm exports CUDA_VISIBLE_DEVICES.
# Verified on a 2-core container with no systemd (Debian bookworm).
set -euo pipefail
NNODES=${1:-2}
D=${2:-/tmp/slurm-local}
HOST=$(hostname)
export DEBIAN_FRONTEND=noninteractive
command -v slurmctld >/dev/null || { apt-get update -qq; apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }
mkdir -p "$D"/{state,log} /run/munge
for i in $(seq 1 "$NNODES"); do mkdir -p "$D/spool-n$i"; done
chown munge:munge /run/munge
chown -R slurm:slurm "$D"
NCPU=$(nproc)
FAKE_GPUS=${FAKE_GPUS:-0}
GRES=""
if [ "$FAKE_GPUS" -gt 0 ]; then
  mkdir -p "$D/fakegpu"
  for g in $(seq 0 $((FAKE_GPUS-1))); do [ -c "$D/fakegpu/nvidia$g" ] || mknod "$D/fakegpu/nvidia$g" c 1 3; done
  printf 'AutoDetect=off\nName=gpu File=%s/fakegpu/nvidia[0-%d]\n' "$D" $((FAKE_GPUS-1)) > /etc/slurm/gres.conf
  GRES=" Gres=gpu:$FAKE_GPUS"
else
  rm -f /etc/slurm/gres.conf
fi
cat > /etc/slurm/slurm.conf <<EOF
GresTypes=gpu
ClusterName=localcluster
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool-%n
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
SlurmctldPort=6817
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
EOF
NODES=""
for i in $(seq 1 "$NNODES"); do
  echo "NodeName=n$i NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((17000+i)) CPUs=$NCPU RealMemory=4000${GRES} State=UNKNOWN" >> /etc/slurm/slurm.conf
  NODES="${NODES:+$NODES,}n$i"
done
echo "PartitionName=debug Nodes=$NODES Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES" >> /etc/slurm/slurm.conf
rm -f /etc/slurm/cgroup.conf   # Slurm 22.05 has no CgroupPlugin=disabled; with no file slurmd starts fine
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
/usr/sbin/slurmctld
sleep 2
for i in $(seq 1 "$NNODES"); do /usr/sbin/slurmd -N "n$i"; done
for _ in $(seq 1 20); do sinfo -h -o %T | grep -q idle && break; sleep 1; done
sinfo
