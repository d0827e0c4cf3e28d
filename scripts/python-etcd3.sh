#!/usr/bin/env bash
# python-etcd3's own test suite (the tests/ of its 0.12.0 sdist on PyPI)
# against Roster or against the real etcd 3.4, to compare the two.
#
#   scripts/python-etcd3.sh [roster|etcd] [--all] [--no-build] [-- PYTEST_ARGS...]
#
# roster     (the default) builds `cargo build --release -p roster` and runs
#            the suite against target/release/roster;
# etcd       runs it against /usr/bin/etcd (Debian's etcd-server, 3.4).
# --all      also runs the three tests that need pifpaf's three-member
#            cluster (see below); they fail on any single server.
# --no-build use the existing target/release/roster.
# After --, arguments go to pytest: `-- -x -vv -k test_snapshot`.
#
# The sdist and a virtualenv with the versions pinned below are kept in
# target/python-etcd3 (PYTHON_ETCD3_CACHE to change it), so only the first
# run downloads. The server always listens on 127.0.0.1:2379 with a fresh
# data directory: several of the tests ignore PYTHON_ETCD_HTTP_URL and call
# etcd3.client() (localhost:2379) or etcdctl with no endpoint. The script
# stops if something already listens there, and stops the server at exit.
#
# Exits with pytest's status. Reference (December 2026, Python 3.11): etcd
# 3.4.23 passes 79 of the 79 tests run by default; see
# bench/runs/2026-12-07-python-etcd3/README.md for Roster's result.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

server=roster
all=0
pytest_args=()
while (($#)); do
  case "$1" in
    roster | etcd) server=$1 ;;
    --all) all=1 ;;
    --no-build) build=0 ;;
    --)
      shift
      pytest_args=("$@")
      break
      ;;
    -h | --help)
      help_text
      exit 0
      ;;
    *)
      echo "usage: $0 [roster|etcd] [--all] [--no-build] [-- PYTEST_ARGS...]" >&2
      exit 2
      ;;
  esac
  shift
done

# What the suite needs. The 0.12.0 sdist pins grpcio 1.27 and protobuf 3.6,
# which have no wheels for current Pythons, so:
# - protobuf stays below 4: the sdist's *_pb2.py build descriptors directly,
#   which protobuf 4 refuses ("Descriptors cannot be created directly");
# - grpcio is any release with wheels for this Python (it does not depend on
#   protobuf);
# - tenacity stays at the sdist's 6.1.0: etcd3's Lock passes a wait function
#   of the old (attempt, delay) signature, which tenacity 8 calls wrongly
#   (TypeError in test_lock_acquire and two others, on etcd too);
# - hypothesis stays at the sdist's 4.56.3: from 5.x on, hypothesis fails
#   every @given test that uses the function-scoped `etcd` fixture
#   (FailedHealthCheck), on etcd too;
# - pytest and mock are current ones: the sdist's pytest 4.6 does not run on
#   Python 3.10+.
SDIST_VERSION=0.12.0
SDIST_SHA256=89a704cb389bf0a010a1fa050ce19342d23bf6371ebda1c21cfe8ff3ed488726
PINS=(
  protobuf==3.20.3
  grpcio==1.62.3
  six==1.16.0
  tenacity==6.1.0
  hypothesis==4.56.3
  pytest==8.3.4
  mock==5.1.0
)
# The version the tests' skipif marks compare with: two txn tests are skipped
# below v3.3. Roster speaks etcd 3.4's API, so both servers get the same.
TEST_ETCD_VERSION=v3.4.23
# These use pifpaf's cluster: test_member_list wants three members named
# pifpaf*, and the two serializable-read tests SIGSTOP the processes named
# `--name pifpaf1` and `pifpaf2` (pgrep fails when there are none).
CLUSTER_TESTS=(
  tests/test_etcd3.py::TestEtcd3::test_member_list
  tests/test_etcd3.py::TestEtcd3::test_get_key_serializable
  tests/test_etcd3.py::TestEtcd3::test_get_prefix_serializable
)

# --- tools -------------------------------------------------------------------

# etcdctl is needed for Roster too: the tests shell out to it.
missing=()
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
if [ "$server" = etcd ]; then command -v etcd >/dev/null 2>&1 || missing+=(etcd-server); fi
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
need pgrep procps

if [ "$server" = roster ]; then roster_binary; fi

# --- the sdist and its virtualenv ----------------------------------------------

cache=${PYTHON_ETCD3_CACHE:-$PWD/target/python-etcd3}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
venv=$cache/venv
src=$cache/etcd3-$SDIST_VERSION
tarball=$cache/etcd3-$SDIST_VERSION.tar.gz

# The venv is rebuilt whenever the pins (or the Python) change.
stamp="$(python3 --version) ${PINS[*]}"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.pins" 2>/dev/null)" != "$stamp" ]; then
  log "creating $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${PINS[@]}"
  echo "$stamp" >"$venv/.pins"
fi

if [ ! -f "$tarball" ]; then
  log "downloading etcd3==$SDIST_VERSION (sdist)"
  "$venv/bin/pip" download -q --disable-pip-version-check --no-deps \
    --no-binary :all: "etcd3==$SDIST_VERSION" -d "$cache"
fi
echo "$SDIST_SHA256  $tarball" | sha256sum -c --quiet - || {
  echo "$tarball is not the sdist this script was written for: remove it" >&2
  exit 1
}
# Unpacked anew each run, so that nothing a previous run left in it (such as
# hypothesis's example database) changes this one.
rm -rf "$src"
tar -xzf "$tarball" -C "$cache"

# --- the server ------------------------------------------------------------------

ep=127.0.0.1:2379
if (exec 3<>/dev/tcp/127.0.0.1/2379) 2>/dev/null; then
  echo "something already listens on $ep; the suite needs that port (see the header)" >&2
  exit 1
fi
read -r peer_port < <(free_ports 1)
peer=127.0.0.1:$peer_port
make_work python-etcd3
grace=1 # SIGTERM first, so that etcd and Roster shut down as usual
server_log=$cache/$server.log
: >"$server_log"
start_server "$server" "$work/data" "$server_log"
server_pid=$pid
# sed, not head: head's early exit would kill etcd with SIGPIPE (pipefail).
if [ "$server" = etcd ]; then
  version=$(etcd --version | sed -n 1p)
else
  version=$("$roster" --version)
fi
ready=0
for _ in $(seq 150); do
  if ETCDCTL_API=3 etcdctl --endpoints "$ep" --command-timeout 1s endpoint health >/dev/null 2>&1; then
    ready=1
    break
  fi
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.2
done
if ((!ready)); then
  echo "$server did not become ready on $ep; its log:" >&2
  cat "$server_log" >&2
  exit 1
fi
log "$version on $ep (log: $server_log)"

# --- the suite ---------------------------------------------------------------------

deselect=()
if ((!all)); then
  for t in "${CLUSTER_TESTS[@]}"; do deselect+=(--deselect "$t"); done
  log "not running ${#CLUSTER_TESTS[@]} tests that need pifpaf's 3-member cluster (--all runs them)"
fi

# etcdctl finds the server by its default endpoint, 127.0.0.1:2379: setting
# ETCDCTL_ENDPOINTS would make every etcdctl call the tests make with
# --endpoints fail ("conflicting environment variable ... is shadowed").
# PYTHONPATH as the project's tox.ini sets it: the sdist's root, for etcd3,
# and etcd3/ itself, for test_user_pwd_auth's mock.patch('etcdrpc.AuthStub').
# The tests are run from the sdist's root: they open tests/ca.crt and such.
status=0
(
  cd "$src"
  export PYTHONPATH="$src:$src/etcd3" \
    PYTHON_ETCD_HTTP_URL="http://$ep" \
    ETCDCTL_API=3 \
    TEST_ETCD_VERSION
  exec "$venv/bin/python" -m pytest tests -p no:cacheprovider -q -rfEs \
    "${deselect[@]}" "${pytest_args[@]}"
) || status=$?

log "python-etcd3 $SDIST_VERSION against $server: pytest exited $status"
exit "$status"
