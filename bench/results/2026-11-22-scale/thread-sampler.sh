#!/usr/bin/env bash
# Per-thread CPU of a Roster holding 100k leases (TTL 30), sampled every 100 ms:
# what runs, and what stops, during a lease checkpoint.
set -euo pipefail
R=${ROSTER:-target/release/roster}
work=$(mktemp -d /tmp/thr.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill -9 $p 2>/dev/null || true; done; rm -rf $work' EXIT
ep=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn $R serve --data-dir $work/d --listen-client-urls http://$ep >$work/roster.log 2>&1 & pid=$!; pids+=($pid)
$R bench ready --endpoints $ep >/dev/null
$R bench hold-leases --endpoints $ep --leases 100000 --streams 100 --conns 10 --clients 100 --ttl 30 --hold 20s --no-revoke --json >$work/b.json 2>$work/b.err &
b=$!; pids+=($b)
until grep -q holding $work/b.err; do sleep 0.05; done
echo "threads: $(for t in /proc/$pid/task/*; do echo -n "$(basename $t)=$(cat $t/comm) "; done)"
t0=$(date +%s%N)
for i in $(seq 1 120); do
  now=$(( ($(date +%s%N) - t0) / 1000000 ))
  line="$now"
  for t in /proc/$pid/task/*; do
    read -r st u s <<<"$(awk '{print $3, $14, $15}' $t/stat)"
    line="$line $(cat $t/comm):$st:$((u + s))"
  done
  echo "$line"
  sleep 0.1
done
wait $b || true
python3 "$(dirname "$0")/summ.py" <$work/b.json
