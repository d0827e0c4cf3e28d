#!/usr/bin/env bash
# Runs Roster's whole test suite.
#
# The tests start real servers: our own `roster` binary and, for the
# compatibility tests, the real etcd and etcdctl (Debian packages etcd-server
# and etcd-client). The etcd-client crate used by the tests needs protoc
# and the well-known .proto files (Debian packages protobuf-compiler and
# libprotobuf-dev) to build. Whatever of those is missing is
# installed first; then `cargo test --workspace` runs, with any extra
# arguments passed through.
#
# Then the portable tests (the server's `portable::` modules: KV, watch,
# lease, lock and election as a client sees them) run a second time against
# the real etcd, so that what they expect stays etcd's answer. Set
# ROSTER_TEST_SKIP_ETCD=1 to skip that pass.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
if ((${#missing[@]})); then
  echo "scripts/test.sh: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

start=$SECONDS
cargo test --workspace "$@"
if [ -z "${ROSTER_TEST_SKIP_ETCD:-}" ]; then
  echo "scripts/test.sh: the portable tests again, against etcd $(etcd --version | head -1)"
  ROSTER_TEST_AGAINST_ETCD=1 cargo test -p roster-server --test it -- portable::
fi
echo "scripts/test.sh: all tests passed in $((SECONDS - start)) s"
