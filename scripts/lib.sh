# shellcheck shell=bash
# What the bench scripts (bench-vs-etcd.sh, bench-scale.sh, bench-stalls.sh,
# bench-gateway.sh) have in common. Each of them changes to the repository's
# root and then sources this file; it is not meant to be run on its own.
#
# Sourcing it sets an exit trap: at exit every process listed in `pids` is
# killed (with grace=1, SIGTERM first and up to 5 s to go; then SIGKILL)
# and waited for, the script's own `on_exit` runs if it defines one, and the
# temporary directory `work` is removed. Ctrl-C exits with 130, SIGTERM
# with 143.
#
# Variables the helpers share with the scripts:
#   pids     processes to kill at exit
#   pid      the process spawn or start_server started last
#   work     the temporary directory (make_work)
#   roster   the roster binary (roster_binary)
#   ep       the server's client address, host:port (the script sets it;
#            start_server and wait_ready use it)
#   peer     etcd's peer address, host:port (likewise)
#   build    0 after --no-build (parse_args; 1 by default)

pids=()
pid=""
work=""
roster=""
ep=""
peer=""
build=1

# log MESSAGE...: a line on stderr, with the time.
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# --- arguments ---------------------------------------------------------------

# parse_args "$@": reads the command line by the table the script fills in
# first, an associative array from flag to variable:
#   declare -A FLAGS=([--quick]=quick=1 [--no-build]=build=0 [--rounds]=rounds)
# An entry NAME=VALUE is a switch that sets NAME to VALUE; a bare NAME takes
# the flag's argument. -h and --help print the script's header comment and
# exit 0; anything else prints "usage: $USAGE" on stderr and exits 2. The
# words it was given are kept in BENCH_ARGS, for the run's record.
parse_args() {
  BENCH_ARGS=("$@")
  local flag spec
  while (($#)); do
    flag=$1
    case "$flag" in
      -h | --help)
        help_text
        exit 0
        ;;
    esac
    spec=${FLAGS[$flag]-}
    [ -n "$spec" ] || usage_error
    if [[ $spec == *=* ]]; then
      printf -v "${spec%%=*}" '%s' "${spec#*=}"
    else
      (($# >= 2)) || usage_error
      printf -v "$spec" '%s' "$2"
      shift
    fi
    shift
  done
}

usage_error() {
  echo "usage: $USAGE" >&2
  exit 2
}

# help_text: the comment at the top of the script, without its '#'.
help_text() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

# --- the run's directory and record ------------------------------------------

# new_run_dir TOPIC: where a new run's results go, bench/runs/DATE-TOPIC (UTC
# date); if that exists already, the time of day is added.
new_run_dir() {
  local dir
  dir="bench/runs/$(date -u +%Y-%m-%d)-$1"
  if [ -e "$dir" ]; then dir="$dir-$(date -u +%H%M%S)"; fi
  echo "$dir"
}

# machine_header TOOL...: the first lines of a run's machine.txt: when, the
# command, the commit the binary comes from, the version of each TOOL (etcd,
# wrk), the machine, and the filesystem the work directory (the servers'
# data) is on.
machine_header() {
  local tool
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "command: $0 ${BENCH_ARGS[*]}"
  echo "roster: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty tree)')"
  for tool in "$@"; do
    case "$tool" in
      wrk) echo "wrk: $(wrk -v 2>&1 | head -1)" ;;
      *) echo "$tool: $("$tool" --version 2>&1 | head -1)" ;;
    esac
  done
  echo "cpu: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
  echo "memory: $(free -g | awk '/^Mem:/ {print $2}') GiB"
  echo "kernel: $(uname -r)"
  echo "filesystem: $(df -PT "${work:-.}" | awk 'NR == 2 {print $2 " on " $1}')"
}

# --- tools and binaries ------------------------------------------------------

# need TOOL [DEBIAN_PACKAGE]: stops the script unless TOOL is installed.
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "$(basename "$0" .sh): needs $1${2:+ (Debian package $2)}" >&2
  exit 1
}

# roster_binary: unless the script has set roster already (to a binary it
# was given), builds the release binary (not with build=0) and sets roster
# to target/release/roster.
roster_binary() {
  if [ -z "$roster" ]; then
    if ((build)); then cargo build --release -p roster; fi
    roster="$PWD/target/release/roster"
  fi
  [ -x "$roster" ] || {
    echo "no $roster: build it or drop --no-build" >&2
    exit 1
  }
}

# make_work NAME [BASE]: a fresh temporary directory in work, under BASE
# (/tmp by default); it is removed at exit.
make_work() {
  work=$(mktemp -d "${2:-/tmp}/roster-$1.XXXXXX")
}

# --- processes ---------------------------------------------------------------

# free_ports N: N distinct loopback ports that nothing listens on now.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# spawn LOG COMMAND...: runs COMMAND in the background with its output
# appended to LOG; sets pid and adds it to pids. Variables assigned before
# the call (RUST_LOG=warn spawn ...) reach COMMAND's environment.
spawn() {
  local out=$1
  shift
  "$@" </dev/null >>"$out" 2>&1 &
  pid=$!
  pids+=("$pid")
}

# start_server SERVER DATA_DIR LOG: starts etcd or roster on ep (and etcd's
# peer listener on peer) with that data directory; sets pid. It does not
# wait: see wait_ready.
start_server() {
  local server=$1 dir=$2 out=$3
  case "$server" in
    etcd)
      spawn "$out" etcd --name default --data-dir "$dir" \
        --listen-client-urls "http://$ep" --advertise-client-urls "http://$ep" \
        --listen-peer-urls "http://$peer" --initial-advertise-peer-urls "http://$peer" \
        --initial-cluster "default=http://$peer"
      ;;
    roster)
      RUST_LOG=warn spawn "$out" "$roster" serve --data-dir "$dir" \
        --listen-client-urls "http://$ep"
      ;;
    *)
      echo "start_server: unknown server $server" >&2
      exit 2
      ;;
  esac
}

# wait_ready TIMEOUT: waits until the server on ep answers a linearizable
# Range (`roster bench ready`), for at most TIMEOUT (60s, say).
wait_ready() {
  "$roster" bench ready --endpoints "$ep" --timeout "$1" >/dev/null
}

# stop_server: kill -9 the server started last and wait until it is gone.
stop_server() {
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}

# forget PID: takes a process that has been waited for off pids, so that
# the exit trap never signals a number the system may have given to
# another process since.
forget() {
  local p kept=()
  for p in "${pids[@]}"; do
    if [ "$p" != "$1" ]; then kept+=("$p"); fi
  done
  pids=("${kept[@]}")
}

# wait_addr LOG PID REGEX: waits (at most 15 s) for the first line of LOG
# that matches REGEX and prints the http://ADDR it names (ADDR alone). Fails,
# showing LOG, if PID exits first or the line does not come.
wait_addr() {
  local out=$1 p=$2 regex=$3 line
  for _ in $(seq 150); do
    line=$(grep -m1 -E "$regex" "$out" 2>/dev/null || true)
    if [[ $line =~ http://([^ ]+) ]]; then
      echo "${BASH_REMATCH[1]}"
      return 0
    fi
    kill -0 "$p" 2>/dev/null || break
    sleep 0.1
  done
  echo "$(basename "$0" .sh): no '$regex' in $out:" >&2
  cat "$out" >&2
  return 1
}

# --- what /proc says of a process --------------------------------------------

# cpu_ticks PID: user + system CPU the process has used, in 1/100 s; 0 if
# it is gone.
cpu_ticks() {
  local stat f
  read -r stat 2>/dev/null <"/proc/$1/stat" || {
    echo 0
    return 0
  }
  # Fields 14 and 15; 12 and 13 once pid and (comm) are cut off.
  stat=${stat##*) }
  read -ra f <<<"$stat"
  echo $((f[11] + f[12]))
}

# rss_kb PID, anon_kb PID: VmRSS, and RssAnon (the process's own memory:
# VmRSS also counts the resident pages of files it maps, such as etcd's
# database), in kB.
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
anon_kb() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status"; }

# --- exit ----------------------------------------------------------------------

cleanup() {
  local status=$? p alive
  trap - EXIT INT TERM
  if ((${grace:-0})); then
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
      alive=0
      for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
      ((alive)) || break
      sleep 0.1
    done
  fi
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if declare -F on_exit >/dev/null; then on_exit || true; fi
  if [ -n "$work" ]; then rm -rf "$work"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
