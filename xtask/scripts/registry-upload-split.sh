#!/bin/bash
# Where one 512 MiB upload's CPU goes (BENCHMARKS.md, registry, fourth
# session): starts the release bronze-registry (build it first:
# `cargo build --release -p bronze-registry`), then RUNS times uploads a
# fresh 512 MiB file with curl -T (POST + PUT, as `cargo xtask bench
# registry`), after `sync` and, as root, dropping the page cache. Prints
# curl's result, the registry's CPU per thread, curl's CPU and the whole
# machine's (jiffies, from /proc/stat around the curl).
# Usage: xtask/scripts/registry-upload-split.sh [RUNS]
set -euo pipefail
RUNS=${1:-3}
DIR=$(mktemp -d)
BIN=${BIN:-target/release/bronze-registry}
PORT=5999
trap 'kill $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
"$BIN" --root "$DIR/root" --addr 127.0.0.1:$PORT --grpc-addr 127.0.0.1:5998 >"$DIR/log" 2>&1 &
PID=$!
dd if=/dev/urandom of="$DIR/blob" bs=1M count=512 status=none
until curl -sf "http://127.0.0.1:$PORT/v2/" -o /dev/null; do sleep 0.1; done
snap() {
  for t in /proc/$PID/task/*; do
    echo "$(basename "$t")_$(tr ' ' _ <"$t/comm") $(awk '{print $14, $15}' "$t/stat")"
  done | sort
}
for run in $(seq "$RUNS"); do
  head -c 8 /dev/urandom | dd of="$DIR/blob" bs=1 count=8 conv=notrunc status=none
  DIGEST=sha256:$(sha256sum "$DIR/blob" | cut -d' ' -f1)
  sync
  if [ "$(id -u)" = 0 ]; then echo 3 >/proc/sys/vm/drop_caches; fi
  snap >"$DIR/before"
  LOC=$(curl -s -i -X POST "http://127.0.0.1:$PORT/v2/bench/blobs/uploads/" | tr -d '\r' | awk 'tolower($1) == "location:" {print $2}')
  case $LOC in http*) ;; *) LOC="http://127.0.0.1:$PORT$LOC" ;; esac
  case $LOC in *\?*) SEP='&' ;; *) SEP='?' ;; esac
  a=($(head -1 /proc/stat))
  echo "run $run: $(/usr/bin/time -f 'curl user %U s, sys %S s' -o "$DIR/time" \
    curl -s -o /dev/null -w '%{http_code}, %{speed_upload} B/s, %{time_total} s' -X PUT \
    -H 'Content-Type: application/octet-stream' -T "$DIR/blob" "$LOC${SEP}digest=$DIGEST")"
  b=($(head -1 /proc/stat))
  cat "$DIR/time"
  echo "machine (jiffies): user $((b[1] - a[1])) system $((b[3] - a[3])) softirq $((b[7] - a[7])) idle $((b[4] - a[4])) iowait $((b[5] - a[5]))"
  snap >"$DIR/after"
  join -a 2 -e 0 -o 0,1.2,1.3,2.2,2.3 "$DIR/before" "$DIR/after" | awk '{u = $4 - $2; s = $5 - $3; if (u + s > 0) printf "  thread %s: user %.2f s, system %.2f s\n", $1, u / 100, s / 100}'
done
