#!/usr/bin/env bash
# Runs Roster's whole test suite.
#
# The tests start real servers: our own `roster` binary and, for the
# compatibility tests, the real etcd and etcdctl (Debian packages etcd-server
# and etcd-client). The etcd-client crate used by the tests needs protoc
# (Debian package protobuf-compiler) to build. Whatever of those is missing is
# installed first; then `cargo test --workspace` runs, with any extra
# arguments passed through.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
if ((${#missing[@]})); then
  echo "scripts/test.sh: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo test --workspace "$@"
