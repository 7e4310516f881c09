#!/usr/bin/env bash
# Bring up a single-node SLURM cluster on this machine, so that CI can run the workflow
# with `--profile profiles/slurm-ci` through real sbatch/squeue instead of a mock.
#
# Runs as root on a fresh Debian 12 machine without systemd: installs the Debian packages
# (slurm 22.05), writes /etc/slurm/slurm.conf for one node with this machine's real CPUs and
# memory plus one fake GPU, and starts munged, slurmctld and slurmd by hand. PID files land in
# /run so that .ci/slurm-down.sh can stop exactly these daemons. Safe to run twice: it installs
# only what is missing and leaves daemons alone that already run with the current config.
#
# The config lives at the compiled-in default /etc/slurm/slurm.conf so that every client (sbatch
# and squeue run by Snakemake, srun inside the jobs) finds it without SLURM_CONF, which the
# executor plugin drops from its environment when it finds itself inside a SLURM job.
set -euo pipefail

readonly SLURM_CONF=/etc/slurm/slurm.conf
readonly GRES_CONF=/etc/slurm/gres.conf
readonly MUNGE_PID=/run/munge/munged.pid
readonly SLURMCTLD_PID=/run/slurmctld.pid
readonly SLURMD_PID=/run/slurmd.pid
readonly LOG_DIR=/var/log/slurm
readonly READY_TIMEOUT_S=${SLURM_READY_TIMEOUT_S:-60}
# Memory left to the OS and to the Snakemake process that submits the jobs.
readonly MEM_HEADROOM_MB=${SLURM_MEM_HEADROOM_MB:-1024}

log() { echo "slurm-up: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (it installs packages and starts system daemons)"
    exit 1
fi

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sinfo >/dev/null && command -v munged >/dev/null; then
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Without systemd the packages' maintainer scripts would try to start the daemons through
    # their init scripts with the stock config; a policy-rc.d that answers 101 forbids that.
    local own_policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    log "installing slurmctld slurmd slurm-client munge"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
    if [[ -n $own_policy ]]; then rm -f /usr/sbin/policy-rc.d; fi
}

# Prints the pid stored in pid file $1 if that process is alive and is the daemon $2 (a stale
# pid file may name a pid the kernel has since given to another program), else nothing.
live_pid() {
    local pid
    [[ -s $1 ]] || return 0
    pid=$(<"$1")
    if [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]]; then echo "$pid"; fi
}

# `slurmd -C` reports what slurmd will detect at registration; a node configured with more
# CPUs or memory than that is set to INVALID/DRAIN, so both numbers come from there.
node_line() {
    local host detected real_mem mem
    host=$(hostname -s)
    detected=$(slurmd -C | head -n1)
    real_mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$detected")
    if [[ $detected != NodeName=*CPUs=* || -z $real_mem ]]; then
        log "could not parse 'slurmd -C' output: $detected"
        exit 1
    fi
    mem=$((real_mem - MEM_HEADROOM_MB))
    ((mem >= 1024)) || mem=$((real_mem / 2))
    # Keep slurmd's topology (sockets/cores/threads) so it matches what slurmd registers.
    sed -e "s/^NodeName=[^ ]*/NodeName=$host/" -e "s/ RealMemory=[0-9]*/ RealMemory=$mem/" \
        <<<"$detected" | tr -d '\n'
    echo " NodeAddr=127.0.0.1 Gres=gpu:1 State=UNKNOWN"
}

write_config() {
    local host node new_conf new_gres
    host=$(hostname -s)
    node=$(node_line)
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR"
    new_conf=$(
        cat <<CONF
# Written by .ci/slurm-up.sh: single-node CI cluster, no accounting database, no systemd.
ClusterName=ci
SlurmctldHost=$host(127.0.0.1)
# Jobs and daemons run as root on the CI machine.
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
MailProg=/bin/true
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups in a container/VM without systemd.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A node that was DOWN (e.g. from a previous run's saved state) comes back on registration.
ReturnToService=2
# Without accounting, squeue is the only record of finished jobs: the executor plugin needs them
# visible for >= 3x its poll interval, and CI checks every job of a run after it ends.
MinJobAge=3600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
$node
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    )
    # A fake GPU. Without File= slurmd 22.05 reports 0 GPUs and slurmctld drains the node ("gres/gpu
    # count reported lower than configured"); any device file will do, /dev/null exists
    # everywhere and nothing opens it (no cgroup device confinement with task/none). Jobs with
    # --gpus=1 or --gres=gpu:1 schedule, one at a time, and get CUDA_VISIBLE_DEVICES=0.
    new_gres="NodeName=$host Name=gpu Count=1 File=/dev/null"
    if [[ ! -f $SLURM_CONF || $(<"$SLURM_CONF") != "$new_conf" \
        || ! -f $GRES_CONF || $(<"$GRES_CONF") != "$new_gres" ]]; then
        if [[ -n $(live_pid "$SLURMCTLD_PID" slurmctld) || -n $(live_pid "$SLURMD_PID" slurmd) ]]; then
            log "config changed: restarting the running slurm daemons"
            "$(dirname "${BASH_SOURCE[0]}")/slurm-down.sh"
        fi
        printf '%s\n' "$new_conf" >"$SLURM_CONF"
        printf '%s\n' "$new_gres" >"$GRES_CONF"
    fi
}

start_munge() {
    if [[ -n $(live_pid "$MUNGE_PID" munged) ]]; then return; fi
    mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating the munge key"
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
    chmod 0700 /etc/munge
    chmod 0400 /etc/munge/munge.key
    # munged runs as its own user, which owns the key; --force replaces a stale socket left
    # behind by a killed daemon.
    runuser -u munge -- /usr/sbin/munged --force --pid-file="$MUNGE_PID"
}

start_slurm() {
    # -c: start from a clean slate. Saved state would bring back jobs of an earlier run and a
    # node DRAINED by an earlier, broken config (ReturnToService does not undo a drain).
    if [[ -z $(live_pid "$SLURMCTLD_PID" slurmctld) ]]; then /usr/sbin/slurmctld -c; fi
    if [[ -z $(live_pid "$SLURMD_PID" slurmd) ]]; then /usr/sbin/slurmd; fi
}

dump_logs() {
    local f
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
        echo "===== $f (last 40 lines)" >&2
        tail -n 40 "$f" >&2 2>/dev/null || echo "(missing)" >&2
    done
}

wait_until_idle() {
    local host state waited=0
    host=$(hostname -s)
    while ((waited < READY_TIMEOUT_S)); do
        state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
        # A node that is already running CI jobs is just as ready as an idle one.
        if [[ $state =~ ^(idle|mixed|allocated)$ ]]; then return; fi
        sleep 1
        waited=$((waited + 1))
    done
    log "node $host not idle after ${READY_TIMEOUT_S}s (state: '${state:-no answer}')"
    sinfo -N -l >&2 || true
    scontrol show node "$host" >&2 || true
    dump_logs
    exit 1
}

# One real GPU job through munge, slurmctld and slurmd: a broken setup fails here, with the logs,
# instead of deep inside a workflow run. Skipped while CI jobs occupy the node.
smoke_test() {
    local host
    host=$(hostname -s)
    [[ $(sinfo -h -n "$host" -o %T) == idle ]] || return 0
    # shellcheck disable=SC2016  # expanded inside the job, not here
    if ! timeout 60 srun --quiet --time=1 --mem=10 --gpus=1 --job-name=slurm-up-smoke \
        bash -c '[[ $CUDA_VISIBLE_DEVICES == 0 ]]'; then
        log "smoke test failed: 'srun --gpus=1' did not run on the fake GPU"
        dump_logs
        exit 1
    fi
}

install_packages
write_config
start_munge
start_slurm
wait_until_idle
smoke_test
sinfo -N -o '%N %T %c %m %G'
