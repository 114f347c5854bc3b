#!/usr/bin/env bash
# A Slurm cluster with accounting, everything under one directory: one host on 127.0.0.1, or
# several hosts in network namespaces (HMSA_SLURM_HOSTS, below).
#
#   bash sbatch/local_cluster.sh start [DIR]   install-if-needed, start munge, MariaDB, slurmdbd,
#                                              slurmctld, slurmd; wait until the node is idle
#   bash sbatch/local_cluster.sh stop  [DIR]   stop every daemon by the PID in its pid file
#   bash sbatch/local_cluster.sh env   [DIR]   print `export SLURM_CONF=...` for clients
#   bash sbatch/local_cluster.sh node-down DIR NODE   a host crash: cut NODE's link, SIGKILL all
#                                              its processes (slurmd, slurmstepd, tasks)
#   bash sbatch/local_cluster.sh node-up   DIR NODE   reconnect NODE and start its slurmd again
#
# HMSA_SLURM_HOSTS=N (N >= 2) starts N slurmd "hosts", each in its own network namespace with
# its own address and hostname (rack1-node01, rack1-node02, ...), joined by veth pairs to a
# bridge in the root namespace that carries the controller's address. Names (namespaces,
# links, /etc/netns/*) and the 10.x.y.0/24 subnet derive from DIR, so clusters in different
# DIRs coexist; `stop` removes all of it. Debian's build also supports multiple-slurmd mode
# (MULTIPLE_SLURMD=Yes in `scontrol show config`), but those hosts would share one hostname and
# 127.0.0.1: rendezvous, name resolution and a lost host would not be tested (docs/sbatch.md).
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
HOSTS=${HMSA_SLURM_HOSTS:-1}
# per-DIR names: two clusters (two test sessions) never share a namespace, link or subnet
NETID=$(printf %s "$DIR" | sha1sum | cut -c1-6)
NETLOCK=/run/hmsa-local-cluster-net.lock

log() { echo "[local_cluster] $*" >&2; }

install_if_needed() {
  local missing=()
  for b in slurmctld slurmd slurmdbd sbatch munged mariadbd $(multi && echo ip); do
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
    slurmctld slurmd slurm-client munge slurmdbd mariadb-server iproute2 >/dev/null
}

# Start a daemon detached from our stdio: a daemon holding the caller's pipe open hangs it.
spawn() { setsid "$@" </dev/null >/dev/null 2>&1 & }

alive() {  # alive PIDFILE NAME: the pid file names a live (not zombie) process called NAME*
  local pidfile=$1 name=$2 pid state
  [[ -s $pidfile ]] || return 1
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
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
  cpus=${HMSA_SLURM_CPUS:-$(nproc)}  # per host; more than nproc needs config_overrides below
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  mkdir -p "$DIR"/{etc,log,run,state,spool,munge,mysql}
  cat >"$DIR/etc/slurm.conf" <<EOF
ClusterName=hmsa
SlurmctldHost=localhost($CTL_ADDR)
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
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
# a lost host is declared DOWN (and its jobs requeued) within seconds, not the default 5 min
SlurmdTimeout=$SLURMD_TIMEOUT
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
# seconds between SIGTERM and SIGKILL: how long a rank stuck in a collective with a lost host lives on
KillWait=$KILL_WAIT
$( ((cpus > $(nproc))) && echo "SlurmdParameters=config_overrides")
# slurmctld, sacct and sacctmgr do not use AuthInfo towards slurmdbd: name the socket here
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$SLURMDBD_PORT
AccountingStoragePass=$SOCK
$(node_lines "$cpus" "$mem")
PartitionName=debug Nodes=$(node_names | paste -sd,) Default=YES MaxTime=INFINITE State=UP
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

# ---------------------------------------------------------------- hosts (one, or namespaces)

multi() { [[ $HOSTS -gt 1 ]]; }

node_names() {  # one per line: the single host is "localhost"; namespaced hosts rack1-nodeNN
  if multi; then seq -f 'rack1-node%02g' 1 "$HOSTS"; else echo localhost; fi
}

netns_of() { echo "hmsa-$NETID-${1##*node}"; }  # rack1-node02 -> hmsa-<id>-02

node_addr() {  # node_addr NAME: 127.0.0.1, or .2, .3, ... of the cluster's subnet
  if multi; then echo "$SUBNET.$((10#${1##*node} + 1))"; else echo 127.0.0.1; fi
}

node_lines() {  # node_lines CPUS MEM: the NodeName lines of slurm.conf
  local n
  for n in $(node_names); do
    echo "NodeName=$n NodeAddr=$(node_addr "$n") CPUs=$1 RealMemory=$2 State=UNKNOWN"
  done
}

pick_subnet() {  # the first 10.x.y of a DIR-derived sequence that no route on this host uses
  local i a b
  for i in $(seq 0 63); do
    a=$((200 + (0x${NETID:0:2} + i) % 50)); b=$(((0x${NETID:2:2} + 7 * i) % 250 + 1))
    ip -4 route show | grep -q "^10\.$a\.$b\." || { echo "10.$a.$b"; return 0; }
  done
  log "no free 10.x.y.0/24 subnet found"; return 1
}

net_up() {  # bridge (controller side) + one namespace per host, under a host-wide lock
  local n ns i
  exec 9>"$NETLOCK"; flock 9
  SUBNET=$(pick_subnet)
  echo "SUBNET=$SUBNET" >"$DIR/etc/net.env"
  ip link add "hb$NETID" type bridge
  ip addr add "$SUBNET.1/24" dev "hb$NETID"
  ip link set "hb$NETID" up
  for n in $(node_names); do
    ns=$(netns_of "$n"); i=${n##*node}
    mkdir -p "/etc/netns/$ns"
    { echo "127.0.0.1 localhost"; echo "$SUBNET.1 hmsactl";
      for m in $(node_names); do echo "$(node_addr "$m") $m"; done; } >"/etc/netns/$ns/hosts"
    ip netns add "$ns"
    ip link add "hv$NETID$i" type veth peer name "hp$NETID$i"
    ip link set "hp$NETID$i" netns "$ns"
    ip link set "hv$NETID$i" master "hb$NETID" up
    ip -n "$ns" addr add "$(node_addr "$n")/24" dev "hp$NETID$i"
    ip -n "$ns" link set "hp$NETID$i" up
    ip -n "$ns" link set lo up
  done
  flock -u 9
}

net_down() {  # kill whatever still runs in the namespaces, then remove namespaces, links, files
  local n ns
  [[ -s $DIR/etc/net.env ]] || return 0
  for n in $(node_names); do
    ns=$(netns_of "$n")
    # delete the host end of the veth pair ourselves: a namespace outlives `ip netns del` while a
    # dying process still holds it, and the kernel frees its links later, asynchronously
    ip link del "hv$NETID${n##*node}" 2>/dev/null || true
    if ip netns list | grep -qw "$ns"; then
      ip netns pids "$ns" | xargs -r kill -9 2>/dev/null || true
      ip netns del "$ns" || true
    fi
    rm -rf "/etc/netns/$ns"
  done
  ip link del "hb$NETID" 2>/dev/null || true
  local i
  for i in $(seq 50); do  # wait (<= 10 s) until the kernel has let go of every link of this cluster
    ip -o link show | grep -qE "\bh[bvp]$NETID[0-9]*\b" || break
    sleep 0.2
  done
  rm -f "$DIR/etc/net.env"
}

start_slurmd() {  # start_slurmd NAME: as that host (its namespace and hostname) when namespaced
  local n=$1
  alive "$DIR/run/slurmd-$n.pid" slurmd && return 0
  if multi; then
    # nsenter --net + a private mount namespace with /etc/netns/NS/hosts bound over /etc/hosts
    # (what `ip netns exec` does, without its fresh /sys that hides /sys/fs/cgroup: slurmd
    # refuses to start without it); --uts: the host's own hostname (what gethostname(), gloo
    # and each rank's log see)
    spawn nsenter --net="/run/netns/$(netns_of "$n")" unshare --uts --mount --propagation private \
      sh -c 'mount --bind "$3" /etc/hosts && hostname "$1" && exec slurmd -D -N "$1" -f "$2"' \
      sh "$n" "$SLURM_CONF" "/etc/netns/$(netns_of "$n")/hosts"
  else
    spawn slurmd -D -N "$n" -f "$SLURM_CONF"
  fi
}

node_down() {  # node_down NAME: what a host crash looks like to the others (no FIN, no RST)
  local n=$1 ns
  ns=$(netns_of "$n")
  ip link set "hv$NETID${n##*node}" down
  ip netns pids "$ns" | xargs -r kill -9 2>/dev/null || true
  rm -f "$DIR/run/slurmd-$n.pid"
}

node_up() {
  ip link set "hv$NETID${1##*node}" up
  start_slurmd "$1"
}

# ---------------------------------------------------------------- daemons

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
  local n
  for n in $(node_names); do start_slurmd "$n"; done
  wait_for 60 "$HOSTS idle node(s)" bash -c "[[ \$(sinfo -h -N -o %T | grep -Ec '^(idle|mixed|allocated)') -ge $HOSTS ]]"
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

load_net() {  # the settings a start chose (stop and node-down/up run in fresh shells)
  # shellcheck disable=SC1091
  [[ -s $DIR/etc/net.env ]] && source "$DIR/etc/net.env"
  [[ -s $DIR/etc/hosts.env ]] && source "$DIR/etc/hosts.env"
  CTL_ADDR=${SUBNET:+$SUBNET.1}; CTL_ADDR=${CTL_ADDR:-127.0.0.1}
}

case "$CMD" in
  start)
    # a half-started cluster would hold ports and pid files: stop what did start
    trap 'log "start failed; stopping the daemons started so far"; bash "$0" stop "$DIR" || true' ERR
    install_if_needed
    export PATH=$PATH:/usr/sbin
    mkdir -p "$DIR/etc"
    echo "HOSTS=$HOSTS" >"$DIR/etc/hosts.env"
    CTL_ADDR=127.0.0.1
    SLURMD_TIMEOUT=300 KILL_WAIT=30
    if multi; then
      load_net; net_down  # leftovers of an earlier start in the same DIR
      net_up; load_net
      SLURMD_TIMEOUT=6 KILL_WAIT=10
    fi
    write_confs
    start_munge
    start_mysql
    start_slurm
    log "up: export SLURM_CONF=$DIR/etc/slurm.conf"
    ;;
  stop)
    export PATH=$PATH:/usr/sbin
    load_net
    for n in $(node_names); do stop_one "$DIR/run/slurmd-$n.pid" slurmd; done
    stop_one "$DIR/run/slurmctld.pid" slurmctld
    stop_one "$DIR/run/slurmdbd.pid" slurmdbd
    stop_one "$DIR/run/mysqld.pid" mariadbd
    stop_one "$DIR/run/munged.pid" munged
    net_down
    log "stopped ($DIR)"
    ;;
  node-down|node-up)
    export PATH=$PATH:/usr/sbin SLURM_CONF=$DIR/etc/slurm.conf
    load_net
    multi && [[ -n ${3:-} ]] || { echo "usage: $0 $CMD DIR NODE (a cluster of 2+ hosts)" >&2; exit 2; }
    node_names | grep -qx -- "$3" || { echo "$0: no node $3 in $DIR" >&2; exit 2; }
    "${CMD/-/_}" "$3"
    ;;
  env)
    echo "export SLURM_CONF=$DIR/etc/slurm.conf"
    ;;
  *)
    echo "usage: $0 start|stop|env [DIR] | node-down|node-up DIR NODE" >&2
    exit 2
    ;;
esac
