#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by .ci/slurm-up.sh: slurmd, slurmctld, munged,
# each by its PID file (never by process name, so nothing else on the machine is touched).
# Safe when nothing runs, and meant for `trap .ci/slurm-down.sh EXIT`; it always exits 0, as
# there is nothing left to report once the daemons are gone.
set -uo pipefail

readonly STOP_TIMEOUT_S=${SLURM_STOP_TIMEOUT_S:-20}
readonly SLURMD_PID=/run/slurmd.pid
readonly SLURMCTLD_PID=/run/slurmctld.pid
readonly MUNGE_PID=/run/munge/munged.pid

log() { echo "slurm-down: $*" >&2; }

# Prints the pid stored in pid file $1 if that process is alive and is the daemon $2 (a stale
# pid file may name a pid the kernel has since given to another program), else nothing.
live_pid() {
    local pid
    [[ -s $1 ]] || return 0
    pid=$(<"$1")
    if [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]]; then echo "$pid"; fi
}

# Polls (every 0.1 s, up to STOP_TIMEOUT_S) until the command "$@" fails.
wait_while() {
    local ticks=0
    while "$@" && ((ticks < STOP_TIMEOUT_S * 10)); do
        sleep 0.1
        ticks=$((ticks + 1))
    done
}

# Jobs left over from an aborted run would keep their slurmstepd and payload processes alive
# after slurmd exits: cancel them by job id while slurmctld still answers, and let them end.
cancel_leftover_jobs() {
    local ids
    [[ -n $(live_pid "$SLURMCTLD_PID" slurmctld) ]] || return 0
    ids=$(squeue -h -o %i 2>/dev/null) || return 0
    [[ -n $ids ]] || return 0
    log "cancelling leftover jobs: $(tr '\n' ' ' <<<"$ids")"
    # shellcheck disable=SC2086  # one argument per job id
    scancel $ids 2>/dev/null || true
    wait_while jobs_still_running
}

# shellcheck disable=SC2329  # called through wait_while
jobs_still_running() {
    [[ -n $(squeue -h -t RUNNING,COMPLETING -o %i 2>/dev/null) ]]
}

# Stops daemon $1 whose pid is in file $2: SIGTERM, wait, then SIGKILL.
stop_by_pidfile() {
    local name=$1 pidfile=$2 pid
    pid=$(live_pid "$pidfile" "$name")
    if [[ -n $pid ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        wait_while kill -0 "$pid" 2>/dev/null
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT_S}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

cancel_leftover_jobs
# slurmd first (it reports to slurmctld), munged last (both daemons authenticate through it).
stop_by_pidfile slurmd "$SLURMD_PID"
stop_by_pidfile slurmctld "$SLURMCTLD_PID"
stop_by_pidfile munged "$MUNGE_PID"
exit 0
