#!/usr/bin/env bash
# A single-node Slurm cluster with accounting on 127.0.0.1, everything under one directory.
#
#   bash sbatch/local_cluster.sh start [DIR]   install-if-needed, start munge, MariaDB, slurmdbd,
#                                              slurmctld, slurmd; wait until the node is idle
#   bash sbatch/local_cluster.sh stop  [DIR]   stop every daemon by the PID in its pid file
#   bash sbatch/local_cluster.sh env   [DIR]   print `export SLURM_CONF=...` for clients
#
# DIR defaults to $HMSA_SLURM_DIR or /tmp/hmsa-slurm. Clients (sbatch, sacct, submitit, the
# launcher) need SLURM_CONF=DIR/etc/slurm.conf. Needs root (SlurmUser=root) and Debian's
# slurmctld slurmd slurm-client munge slurmdbd mariadb-server, installed with apt-get when
# missing (as .ci/install.sh --slurm does; HMSA_SLURM_INSTALL=0 turns that off). What was found to matter on a container
# without systemd is recorded in ../shared/notes/local-slurm.md; the comments say why per line.
set -Eeuo pipefail

CMD=${1:-}
DIR=$(realpath -m "${2:-${HMSA_SLURM_DIR:-/tmp/hmsa-slurm}}")
SLURMCTLD_PORT=${HMSA_SLURMCTLD_PORT:-6917}
SLURMD_PORT=${HMSA_SLURMD_PORT:-6918}
SLURMDBD_PORT=${HMSA_SLURMDBD_PORT:-6919}
MYSQL_PORT=${HMSA_MYSQL_PORT:-6920}
SOCK=$DIR/munge/munge.socket

log() { echo "[local_cluster] $*" >&2; }

install_if_needed() {
  local missing=()
  for b in slurmctld slurmd slurmdbd sbatch munged mariadbd; do
    command -v "$b" >/dev/null || PATH=$PATH:/usr/sbin command -v "$b" >/dev/null || missing+=("$b")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ "${HMSA_SLURM_INSTALL:-1}" != 1 || $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    log "missing: ${missing[*]}; install with 'bash .ci/install.sh --slurm' (root, Debian)"
    exit 3
  fi
  log "installing Debian's Slurm, munge and MariaDB (missing: ${missing[*]})"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge slurmdbd mariadb-server >/dev/null
}

# Start a daemon detached from our stdio: a daemon holding the caller's pipe open hangs it.
spawn() { setsid "$@" </dev/null >/dev/null 2>&1 & }

alive() {  # alive PIDFILE NAME: the pid file names a live (not zombie) process called NAME*
  local pidfile=$1 name=$2 pid state
  [[ -s $pidfile ]] || return 1
  pid=$(cat "$pidfile")
  [[ -r /proc/$pid/comm ]] || return 1
  [[ $(cat "/proc/$pid/comm") == "$name"* ]] || return 1
  state=$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo Z)
  [[ $state != Z ]]
}

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= end)); then log "timed out waiting for $what (logs under $DIR/log)"; return 1; fi
    sleep 0.2
  done
}

write_confs() {
  local cpus mem
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  mkdir -p "$DIR"/{etc,log,run,state,spool,munge,mysql}
  cat >"$DIR/etc/slurm.conf" <<EOF
ClusterName=hmsa
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire=10: the default 120 s also holds every requeued job for two minutes
AuthInfo=socket=$SOCK,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# otherwise a requeued job waits about 40 s more
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
MailProg=/bin/true
MaxArraySize=10001
MaxJobCount=100000
MinJobAge=300
KillWait=30
# slurmctld, sacct and sacctmgr do not use AuthInfo towards slurmdbd: name the socket here
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$SLURMDBD_PORT
AccountingStoragePass=$SOCK
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$SLURMDBD_PORT
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/etc/slurmdbd.conf"
}

start_munge() {
  alive "$DIR/run/munged.pid" munged && return 0
  chmod 755 "$DIR/munge"  # munged refuses a socket directory others cannot traverse
  if [[ ! -s $DIR/etc/munge.key ]]; then
    head -c 1024 /dev/urandom >"$DIR/etc/munge.key"
    chmod 400 "$DIR/etc/munge.key"
  fi
  spawn munged --key-file "$DIR/etc/munge.key" --socket "$SOCK" --pid-file "$DIR/run/munged.pid" \
    --log-file "$DIR/log/munged.log" --seed-file "$DIR/munge/munge.seed" --force
  wait_for 10 munge bash -c "munge -S '$SOCK' -n | unmunge -S '$SOCK'"
}

start_mysql() {
  alive "$DIR/run/mysqld.pid" mariadbd && return 0
  if [[ ! -d $DIR/mysql/mysql ]]; then
    mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql" --auth-root-authentication-method=normal \
      >"$DIR/log/mariadb-install.log" 2>&1
  fi
  spawn mariadbd --no-defaults --user=root --datadir="$DIR/mysql" --bind-address=127.0.0.1 \
    --port="$MYSQL_PORT" --socket="$DIR/run/mysqld.sock" --pid-file="$DIR/run/mysqld.pid" \
    --log-error="$DIR/log/mariadb.log" --skip-log-bin
  wait_for 30 MariaDB mariadb --no-defaults -uroot --socket="$DIR/run/mysqld.sock" -e 'select 1'
  mariadb --no-defaults -uroot --socket="$DIR/run/mysqld.sock" -e \
    "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
     CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
     GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
     GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

start_slurm() {
  export SLURM_CONF=$DIR/etc/slurm.conf
  if ! alive "$DIR/run/slurmdbd.pid" slurmdbd; then
    SLURM_CONF=$DIR/etc/slurm.conf spawn slurmdbd -D
    wait_for 30 slurmdbd sacctmgr -i list cluster
  fi
  sacctmgr -i list cluster -n -P | grep -q '^hmsa' || sacctmgr -i add cluster hmsa >/dev/null
  if ! alive "$DIR/run/slurmctld.pid" slurmctld; then
    spawn slurmctld -D -f "$SLURM_CONF"
    wait_for 30 slurmctld scontrol ping
  fi
  if ! alive "$DIR/run/slurmd.pid" slurmd; then
    spawn slurmd -D -N localhost -f "$SLURM_CONF"
  fi
  wait_for 60 "an idle node" bash -c "sinfo -h -o %T | grep -Eq '^(idle|mixed|allocated)'"
}

stop_one() {  # stop_one PIDFILE NAME
  local pidfile=$1 name=$2 pid i
  alive "$pidfile" "$name" || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for i in $(seq 50); do alive "$pidfile" "$name" || break; sleep 0.1; done
  alive "$pidfile" "$name" && kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

case "$CMD" in
  start)
    # a half-started cluster would hold ports and pid files: stop what did start
    trap 'log "start failed; stopping the daemons started so far"; bash "$0" stop "$DIR" || true' ERR
    install_if_needed
    export PATH=$PATH:/usr/sbin
    write_confs
    start_munge
    start_mysql
    start_slurm
    log "up: export SLURM_CONF=$DIR/etc/slurm.conf"
    ;;
  stop)
    export PATH=$PATH:/usr/sbin
    stop_one "$DIR/run/slurmd.pid" slurmd
    stop_one "$DIR/run/slurmctld.pid" slurmctld
    stop_one "$DIR/run/slurmdbd.pid" slurmdbd
    stop_one "$DIR/run/mysqld.pid" mariadbd
    stop_one "$DIR/run/munged.pid" munged
    log "stopped ($DIR)"
    ;;
  env)
    echo "export SLURM_CONF=$DIR/etc/slurm.conf"
    ;;
  *)
    echo "usage: $0 start|stop|env [DIR]" >&2
    exit 2
    ;;
esac
