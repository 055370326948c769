#!/usr/bin/env bash
# Single-node Slurm cluster for cnnstress tests and CI (Debian 12, root, no systemd).
#
#   slurm/dev-cluster.sh up       install if missing, write config, start daemons, wait until usable;
#                                 after a reboot it cancels the jobs the saved state still lists
#   slurm/dev-cluster.sh down     stop only the daemons that `up` started (PIDs recorded in a state dir)
#   slurm/dev-cluster.sh status   show daemons, `scontrol ping`, `sinfo`; exit 0 when up, 1 when down
#
# Environment:
#   SLURM_DEV_ACCOUNTING=1|0   1 (default): slurmdbd + private MariaDB so `sacct` works; 0: no accounting
#   SLURM_DEV_TIMEOUT=SECONDS  how long `up` waits for each readiness step (default 90)
#
# It refuses to overwrite /etc/slurm/slurm.conf or slurmdbd.conf unless they carry $MARKER.
set -euo pipefail

readonly MARKER="# written by cnnstress slurm/dev-cluster.sh"
readonly CLUSTER_NAME="cnnstress"
readonly PARTITION="debug"
readonly CONF_DIR="/etc/slurm"
readonly CONF="$CONF_DIR/slurm.conf"
readonly DBD_CONF="$CONF_DIR/slurmdbd.conf"
readonly STATE_DIR="/var/lib/slurm-dev"
readonly PID_DIR="$STATE_DIR/pids"
readonly RUN_DIR="/run/slurm-dev"
readonly LOG_DIR="/var/log/slurm-dev"
readonly DB_DIR="$STATE_DIR/mysql"
readonly DB_RUN_DIR="$RUN_DIR/mysql"
readonly DB_SOCKET="$DB_RUN_DIR/mysqld.sock"
readonly DB_PASS_FILE="$STATE_DIR/dbpass"
readonly MUNGE_KEY="/etc/munge/munge.key"
readonly MUNGE_PIDFILE="/run/munge/munged.pid"

ACCOUNTING="${SLURM_DEV_ACCOUNTING:-1}"
TIMEOUT="${SLURM_DEV_TIMEOUT:-90}"
NODE="$(hostname -s)"
# Our client calls must read our config, whatever the caller's environment says.
export SLURM_CONF="$CONF"

die() {
    echo "dev-cluster: ERROR: $*" >&2
    exit 1
}

log() {
    echo "dev-cluster: $*"
}

# --- process bookkeeping -------------------------------------------------------------------

# True when PID exists, is not a zombie (PID 1 here reaps late) and its comm is NAME.
pid_alive() {
    local pid="$1" name="$2" stat rest state comm
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    rest="${stat##*) }"
    state="${rest%% *}"
    [[ "$state" != "Z" && "$state" != "X" ]] || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
    [[ "$comm" == "$name" ]]
}

recorded_pid() {
    local daemon="$1"
    cat "$PID_DIR/$daemon.pid" 2>/dev/null || true
}

# True when the daemon that `up` recorded is still running.
daemon_alive() {
    local daemon="$1"
    pid_alive "$(recorded_pid "$daemon")" "$daemon"
}

record_pid() {
    local daemon="$1" pid="$2"
    install -d -m 0755 "$PID_DIR"
    echo "$pid" >"$PID_DIR/$daemon.pid"
}

# Waits up to SECONDS for PIDFILE to name a live NAME process, then prints the pid.
wait_pidfile() {
    local pidfile="$1" name="$2" seconds="$3" pid i
    for ((i = 0; i < seconds * 5; i++)); do
        pid="$(cat "$pidfile" 2>/dev/null || true)"
        if pid_alive "$pid" "$name"; then
            echo "$pid"
            return 0
        fi
        sleep 0.2
    done
    return 1
}

show_log() {
    local file="$1"
    echo "---- last lines of $file ----" >&2
    tail -n 30 "$file" >&2 2>/dev/null || echo "(no log file)" >&2
    echo "----" >&2
}

# Stops the recorded daemon (TERM, then KILL after 20 s); only ever signals a pid we recorded.
stop_daemon() {
    local daemon="$1" pid i
    pid="$(recorded_pid "$daemon")"
    if [[ -z "$pid" ]]; then
        return 0
    fi
    if ! pid_alive "$pid" "$daemon"; then
        rm -f "$PID_DIR/$daemon.pid"
        return 0
    fi
    log "stopping $daemon (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        pid_alive "$pid" "$daemon" || break
        sleep 0.2
    done
    if pid_alive "$pid" "$daemon"; then
        log "$daemon (pid $pid) ignored SIGTERM for 20 s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            pid_alive "$pid" "$daemon" || break
            sleep 0.2
        done
    fi
    pid_alive "$pid" "$daemon" && die "$daemon (pid $pid) is still running"
    rm -f "$PID_DIR/$daemon.pid"
}

# --- installation --------------------------------------------------------------------------

pkg_installed() {
    local pkg="$1"
    [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" == "install ok installed" ]]
}

ensure_packages() {
    local pkgs=(slurmctld slurmd slurm-client munge) missing=() pkg created_policy=0 start
    if [[ "$ACCOUNTING" == "1" ]]; then
        pkgs+=(slurmdbd mariadb-server)
    fi
    for pkg in "${pkgs[@]}"; do
        pkg_installed "$pkg" || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]}"
    start=$SECONDS
    # Keep the packages' init scripts from starting system daemons we would not own.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; then
        log "install failed; running apt-get update and retrying"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" || {
            ((created_policy)) && rm -f /usr/sbin/policy-rc.d
            die "apt-get install ${missing[*]} failed"
        }
    fi
    ((created_policy)) && rm -f /usr/sbin/policy-rc.d
    log "installed in $((SECONDS - start)) s"
}

# --- configuration -------------------------------------------------------------------------

# Exits non-zero when FILE exists but was not written by this script.
refuse_foreign() {
    local file="$1"
    if [[ -e "$file" ]] && ! grep -qxF "$MARKER" "$file"; then
        die "$file exists and was not written by this script (no line '$MARKER').
    Refusing to overwrite it: this machine seems to have its own Slurm configuration.
    Move it away (e.g. mv $file $file.orig) if you want the cnnstress dev cluster here."
    fi
}

# Prints the node line from `slurmd -C` with RealMemory lowered to 95 % (room for the OS).
node_line() {
    local line mem
    line="$(slurmd -C | head -n 1)"
    [[ "$line" == NodeName=* ]] || die "unexpected 'slurmd -C' output: $line"
    mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$line")"
    [[ -n "$mem" ]] || die "no RealMemory in 'slurmd -C' output: $line"
    line="$(sed "s/RealMemory=[0-9]*/RealMemory=$((mem * 95 / 100))/; s/^NodeName=[^ ]*/NodeName=$NODE/" <<<"$line")"
    echo "$line NodeAddr=127.0.0.1 State=UNKNOWN"
}

# Default memory per CPU so a job without --mem takes a share, not the whole node.
def_mem_per_cpu() {
    local line="$1" mem cpus
    mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$line")"
    cpus="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$line")"
    echo $((mem / (cpus > 0 ? cpus : 1)))
}

write_slurm_conf() {
    local node tmp storage gather
    node="$(node_line)"
    if [[ "$ACCOUNTING" == "1" ]]; then
        storage="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost"
        gather="jobacct_gather/linux"
    else
        storage="AccountingStorageType=accounting_storage/none"
        gather="jobacct_gather/none"
    fi
    tmp="$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")"
    cat >"$tmp" <<EOF
$MARKER
# Single-node dev cluster; regenerated by every 'up' (edits are lost). Accounting: $ACCOUNTING
ClusterName=$CLUSTER_NAME
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire+1 s before it may start again (default 120).
AuthInfo=cred_expire=30
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(def_mem_per_cpu "$node")
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
Waittime=0
# Keep finished jobs visible in squeue/scontrol for an hour.
MinJobAge=3600
MaxArraySize=1001
MaxJobCount=20000
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$storage
JobAcctGatherType=$gather
JobAcctGatherFrequency=30
$node
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    chmod 0644 "$tmp"
    mv -f "$tmp" "$CONF"
}

db_password() {
    if [[ ! -s "$DB_PASS_FILE" ]]; then
        (umask 077 && head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24 >"$DB_PASS_FILE")
    fi
    cat "$DB_PASS_FILE"
}

write_slurmdbd_conf() {
    local tmp
    tmp="$(mktemp "$CONF_DIR/.slurmdbd.conf.XXXXXX")"
    chmod 0600 "$tmp"
    cat >"$tmp" <<EOF
$MARKER
# Private MariaDB of the dev cluster: unix socket $DB_SOCKET (slurmdbd gets MYSQL_UNIX_PORT).
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$(db_password)
EOF
    chown root:root "$tmp"
    mv -f "$tmp" "$DBD_CONF"
}

prepare_dirs() {
    install -d -m 0755 "$CONF_DIR" "$STATE_DIR" "$PID_DIR" "$RUN_DIR" "$LOG_DIR"
    install -d -m 0700 "$STATE_DIR/slurmctld"
    install -d -m 0755 "$STATE_DIR/slurmd"
}

# --- daemons -------------------------------------------------------------------------------

munge_works() {
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1
}

start_munge() {
    local pid
    if daemon_alive munged; then
        return 0
    fi
    if munge_works; then
        log "munged already running (not started by this script; left alone)"
        rm -f "$PID_DIR/munged.pid"
        return 0
    fi
    if [[ ! -s "$MUNGE_KEY" ]]; then
        log "creating munge key $MUNGE_KEY"
        install -d -o munge -g munge -m 0700 "$(dirname "$MUNGE_KEY")"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$MUNGE_KEY" --force
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
    install -d -o munge -g munge -m 0755 /run/munge
    rm -f "$MUNGE_PIDFILE"
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PIDFILE" ||
        { show_log /var/log/munge/munged.log; die "munged failed to start"; }
    pid="$(wait_pidfile "$MUNGE_PIDFILE" munged 10)" ||
        { show_log /var/log/munge/munged.log; die "munged did not come up"; }
    record_pid munged "$pid"
    munge_works || { show_log /var/log/munge/munged.log; die "munge -n | unmunge fails"; }
}

db_sql() {
    mariadb --no-defaults --protocol=socket -S "$DB_SOCKET" -u root -e "$1"
}

start_mariadb() {
    local pid i
    if daemon_alive mariadbd; then
        return 0
    fi
    install -d -o mysql -g mysql -m 0750 "$DB_DIR"
    install -d -o mysql -g mysql -m 0755 "$DB_RUN_DIR"
    touch "$LOG_DIR/mariadb.log"
    chown mysql:mysql "$LOG_DIR/mariadb.log"
    if [[ ! -d "$DB_DIR/mysql" ]]; then
        log "initialising private MariaDB data dir $DB_DIR"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR" \
            --auth-root-authentication-method=socket --skip-test-db \
            >>"$LOG_DIR/mariadb.log" 2>&1 ||
            { show_log "$LOG_DIR/mariadb.log"; die "mariadb-install-db failed"; }
    fi
    rm -f "$DB_RUN_DIR/mariadbd.pid"
    log "starting mariadbd (unix socket only: $DB_SOCKET)"
    # setsid + nohup: the server must outlive this script and its terminal. 512M is the least
    # buffer pool slurmdbd accepts without logging an error; its pages are touched lazily.
    setsid nohup mariadbd --no-defaults --user=mysql --datadir="$DB_DIR" \
        --socket="$DB_SOCKET" --pid-file="$DB_RUN_DIR/mariadbd.pid" --skip-networking \
        --log-error="$LOG_DIR/mariadb.log" --innodb-buffer-pool-size=512M \
        --innodb-lock-wait-timeout=900 </dev/null >>"$LOG_DIR/mariadb.log" 2>&1 &
    pid="$(wait_pidfile "$DB_RUN_DIR/mariadbd.pid" mariadbd "$TIMEOUT")" ||
        { show_log "$LOG_DIR/mariadb.log"; die "mariadbd did not come up"; }
    record_pid mariadbd "$pid"
    for ((i = 0; i < TIMEOUT * 2; i++)); do
        if mariadb-admin --no-defaults -S "$DB_SOCKET" -u root ping >/dev/null 2>&1; then
            break
        fi
        sleep 0.5
    done
    mariadb-admin --no-defaults -S "$DB_SOCKET" -u root ping >/dev/null 2>&1 ||
        { show_log "$LOG_DIR/mariadb.log"; die "mariadbd does not answer on $DB_SOCKET"; }
    local pass
    pass="$(db_password)"
    db_sql "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
            ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" ||
        die "could not create the MariaDB user for slurmdbd"
}

# Starts a self-daemonising Slurm daemon unless the recorded one is alive.
start_slurm_daemon() {
    local daemon="$1" pidfile="$RUN_DIR/$1.pid" logfile="$LOG_DIR/$1.log" pid
    shift
    if daemon_alive "$daemon"; then
        return 0
    fi
    rm -f "$pidfile"
    log "starting $daemon"
    "$@" </dev/null || { show_log "$logfile"; die "$daemon failed to start"; }
    pid="$(wait_pidfile "$pidfile" "$daemon" 20)" ||
        { show_log "$logfile"; die "$daemon did not come up"; }
    record_pid "$daemon" "$pid"
}

dbd_answers() {
    sacctmgr -n show cluster >/dev/null 2>&1
}

cluster_listed() {
    sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qxF "$CLUSTER_NAME"
}

# Waits until COMMAND... succeeds; fails early when a daemon we started died, else on timeout,
# printing the relevant log's tail.
wait_for() {
    local what="$1" logfile="$2" i d
    shift 2
    for ((i = 0; i < TIMEOUT; i++)); do
        if "$@"; then
            return 0
        fi
        for d in mariadbd slurmdbd slurmctld slurmd; do
            if [[ -n "$(recorded_pid "$d")" ]] && ! daemon_alive "$d"; then
                show_log "$LOG_DIR/${d/mariadbd/mariadb}.log"
                die "$d (pid $(recorded_pid "$d")) died while waiting for $what"
            fi
        done
        sleep 1
    done
    show_log "$logfile"
    die "timed out after $TIMEOUT s waiting for $what"
}

ping_up() {
    scontrol ping 2>/dev/null | grep -q 'is UP'
}

node_ready() {
    local state
    state="$(sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n 1)"
    [[ "$state" =~ ^(idle|mix|alloc|comp)$ ]]
}

dbd_connected() {
    # ControlHost is filled in once slurmctld has registered with slurmdbd.
    sacctmgr -n -P show cluster format=cluster,controlhost 2>/dev/null |
        grep -q "^$CLUSTER_NAME|."
}

# Daemons `up` is responsible for, in start order.
wanted_daemons() {
    if [[ -f "$STATE_DIR/accounting" && "$(cat "$STATE_DIR/accounting")" == "1" ]]; then
        echo munged mariadbd slurmdbd slurmctld slurmd
    else
        echo munged slurmctld slurmd
    fi
}

# True when every daemon this script runs is alive and slurmctld answers.
cluster_up() {
    local d
    [[ -f "$CONF" ]] && grep -qxF "$MARKER" "$CONF" || return 1
    for d in $(wanted_daemons); do
        if [[ "$d" == munged ]]; then
            munge_works || return 1
        else
            daemon_alive "$d" || return 1
        fi
    done
    ping_up
}

# After a reboot (or a container restart: CI runs on a machine whose /var/lib survived but whose
# processes did not) the records name daemons that are gone; wait_for would take each for one that
# died just now. Forget them so `up` starts everything afresh.
RESTARTED=0
forget_dead_daemons() {
    local d pid
    for d in munged mariadbd slurmdbd slurmctld slurmd; do
        pid="$(recorded_pid "$d")"
        if [[ -n "$pid" ]] && ! pid_alive "$pid" "$d"; then
            log "forgetting $d (pid $pid): recorded by an earlier 'up', no longer running"
            rm -f "$PID_DIR/$d.pid"
            [[ "$d" != slurmctld ]] || RESTARTED=1
        fi
    done
}

queue_empty() {
    [[ -z "$(squeue -h -o %A 2>/dev/null)" ]]
}

# slurmctld restores the jobs of its saved state. After a reboot the running ones are ghosts, their
# processes gone with the machine, yet RUNNING on the node's CPUs (seen here: still RUNNING 30 s
# after `up`); the queued ones would start and train for test runs whose files are gone. This
# cluster serves tests and CI: cancel them all. (A clean `down` removes the records: the next `up`
# cancels nothing, and slurmd finds the steps that outlived it.)
cancel_jobs_from_before_restart() {
    local ids
    ids="$(squeue -h -o %A 2>/dev/null | sort -nu | tr '\n' ' ')"  # numeric: 99 before 100
    [[ -n "${ids// /}" ]] || return 0
    log "cancelling jobs left from before the restart (their processes died with it): ${ids% }"
    # shellcheck disable=SC2086 # one argument per job id
    scancel $ids || true
    wait_for "the cancelled jobs to leave the queue" "$LOG_DIR/slurmctld.log" queue_empty
}

# --- commands ------------------------------------------------------------------------------

cmd_up() {
    local start=$SECONDS
    [[ "$ACCOUNTING" == "0" || "$ACCOUNTING" == "1" ]] ||
        die "SLURM_DEV_ACCOUNTING must be 0 or 1, got '$ACCOUNTING'"
    [[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "SLURM_DEV_TIMEOUT must be whole seconds, got '$TIMEOUT'"
    refuse_foreign "$CONF"
    refuse_foreign "$DBD_CONF"
    if cluster_up; then
        log "already up (node $NODE, partition $PARTITION, accounting $(cat "$STATE_DIR/accounting"))"
        if [[ "$(cat "$STATE_DIR/accounting")" != "$ACCOUNTING" ]]; then
            log "note: SLURM_DEV_ACCOUNTING=$ACCOUNTING differs; run 'down' then 'up' to switch"
        fi
        return 0
    fi
    forget_dead_daemons
    ensure_packages
    prepare_dirs
    # Daemons still alive from an earlier 'up' keep their config; only write it when none runs.
    if ! daemon_alive slurmctld && ! daemon_alive slurmd && ! daemon_alive slurmdbd; then
        echo "$ACCOUNTING" >"$STATE_DIR/accounting"
        write_slurm_conf
        if [[ "$ACCOUNTING" == "1" ]]; then
            write_slurmdbd_conf
        else
            rm -f "$DBD_CONF"
        fi
    fi
    start_munge
    if [[ "$(cat "$STATE_DIR/accounting")" == "1" ]]; then
        start_mariadb
        MYSQL_UNIX_PORT="$DB_SOCKET" start_slurm_daemon slurmdbd slurmdbd
        wait_for "slurmdbd to answer sacctmgr" "$LOG_DIR/slurmdbd.log" dbd_answers
        if ! cluster_listed; then
            sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null ||
                die "sacctmgr add cluster $CLUSTER_NAME failed"
        fi
    fi
    start_slurm_daemon slurmctld slurmctld
    start_slurm_daemon slurmd slurmd
    wait_for "slurmctld to answer 'scontrol ping'" "$LOG_DIR/slurmctld.log" ping_up
    if ((RESTARTED)); then
        cancel_jobs_from_before_restart
    fi
    wait_for "node $NODE to be idle in sinfo" "$LOG_DIR/slurmd.log" node_ready
    if [[ "$(cat "$STATE_DIR/accounting")" == "1" ]]; then
        wait_for "slurmctld to register with slurmdbd" "$LOG_DIR/slurmctld.log" dbd_connected
    fi
    log "up in $((SECONDS - start)) s: node $NODE, partition $PARTITION, accounting $(cat "$STATE_DIR/accounting"), logs in $LOG_DIR"
}

cmd_down() {
    local d stopped=0
    for d in slurmd slurmctld slurmdbd mariadbd munged; do
        if [[ -n "$(recorded_pid "$d")" ]]; then
            stop_daemon "$d"
            stopped=1
        fi
    done
    if ((stopped)); then
        log "down"
    else
        log "nothing to stop (no daemon recorded in $PID_DIR)"
    fi
}

cmd_status() {
    local d pid rc=0
    for d in $(wanted_daemons); do
        pid="$(recorded_pid "$d")"
        if daemon_alive "$d"; then
            printf '%-10s running (pid %s)\n' "$d" "$pid"
        elif [[ "$d" == munged ]] && munge_works; then
            printf '%-10s running (not started by this script)\n' "$d"
        else
            printf '%-10s not running\n' "$d"
            rc=1
        fi
    done
    if command -v scontrol >/dev/null && [[ -f "$CONF" ]]; then
        scontrol ping 2>&1 || true
        ping_up || rc=1
        sinfo 2>&1 || true
    else
        echo "slurm is not installed or not configured"
        rc=1
    fi
    if ((rc == 0)); then
        echo "cluster: up"
    else
        echo "cluster: down"
    fi
    return "$rc"
}

main() {
    [[ $# -eq 1 ]] || die "usage: $0 up|down|status"
    [[ "$(id -u)" == "0" ]] || die "must run as root (installs packages, starts daemons)"
    case "$1" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) die "unknown command '$1'; allowed: up, down, status" ;;
    esac
}

main "$@"
