#!/bin/bash
# Start a single-node Slurm (Debian's slurm-wlm + munge) for the tests, in a private folder; print its SLURM_CONF.
#   bash tools/slurm_single_node.sh start DIR   -> installs the packages if missing (root + apt), starts munged,
#                                                  slurmctld and slurmd with DIR/slurm.conf, waits until the node
#                                                  is idle; prints "SLURM_CONF=DIR/slurm.conf"
#   bash tools/slurm_single_node.sh stop DIR    -> stops the daemons it started (by their pid files)
# Exit code 3 with one line on stderr when Slurm cannot run here (not root, no apt, daemons do not start).
set -u
cmd=${1:?start|stop}; dir=${2:?folder}
mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
fail() { echo "slurm_single_node: $*" >&2; exit 3; }

if [ "$cmd" = stop ]; then
    for d in slurmd slurmctld munged; do
        [ -f "$dir/$d.pid" ] && kill "$(cat "$dir/$d.pid")" 2>/dev/null
    done
    [ -L "$dir/munge" ] && rm -rf "$(readlink "$dir/munge")" "$dir/munge"
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    [ "$(id -u)" = 0 ] || fail "slurmctld/slurmd/munged are not installed and this is not root (cannot apt-get)"
    command -v apt-get >/dev/null || fail "slurmctld/slurmd/munged are not installed and there is no apt-get"
    export DEBIAN_FRONTEND=noninteractive
    (apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >"$dir/apt.log" 2>&1 ||
     { apt-get update >>"$dir/apt.log" 2>&1 &&
       apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >>"$dir/apt.log" 2>&1; }) ||
        fail "apt-get install slurmctld slurmd slurm-client munge failed (see $dir/apt.log)"
fi
[ "$(id -u)" = 0 ] || fail "slurmd must run as root to start jobs as their user; this is uid $(id -u)"

# munge: one key, a private socket, its own pid file, in a folder the munge user can reach (DIR may be private)
mdir=$(mktemp -d /tmp/slurm-munge.XXXXXX); chown munge: "$mdir"; chmod 755 "$mdir"; ln -sfn "$mdir" "$dir/munge"
[ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=128 2>/dev/null; chown munge: /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
sock="$mdir/munge.socket"
runuser -u munge -- munged --socket="$sock" --pid-file="$mdir/munged.pid" --log-file="$mdir/munged.log" \
    --seed-file="$mdir/munged.seed" 2>"$dir/munged.err" || fail "munged did not start: $(head -c 300 "$dir/munged.err")"
cp "$mdir/munged.pid" "$dir/munged.pid" 2>/dev/null

# Ports nobody listens on: daemons left by an earlier run that was killed (kill -9 skips the stop) keep theirs, and
# a new slurmctld on the same port fails to bind while sbatch reaches the old one, whose folder is gone ("I/O error
# writing script/environment to file").
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ctld_port=
for base in $(seq 16817 100 18817); do
    in_use "$base" || in_use $((base + 1)) || { ctld_port=$base; break; }
done
[ -n "$ctld_port" ] || fail "no free port pair between 16817 and 18818 for slurmctld/slurmd (old daemons? pkill slurmctld slurmd)"
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
mkdir -p "$dir/state" "$dir/spool" "$dir/log"
cat >"$dir/slurm.conf" <<CONF
ClusterName=ci
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait=30
SlurmctldPort=$ctld_port
SlurmdPort=$((ctld_port + 1))
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -i 2>"$dir/slurmctld.err" || fail "slurmctld did not start: $(tail -c 300 "$dir/log/slurmctld.log" 2>/dev/null)"
slurmd 2>"$dir/slurmd.err" || fail "slurmd did not start: $(tail -c 300 "$dir/log/slurmd.log" 2>/dev/null)"
for _ in $(seq 60); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -n1)
    case "$state" in idle*|mix*|alloc*) echo "SLURM_CONF=$SLURM_CONF"; exit 0 ;; esac
    sleep 1
done
fail "the node did not become idle within 60 s (state '${state:-none}'; logs in $dir/log)"
