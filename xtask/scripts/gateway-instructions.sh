#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: repeatable
# whatever else the machine is doing (unlike requests/s on a shared machine).
# One nginx backend answering a fixed 200; wrk -t1 -c50 through the proxy under
# callgrind; counters zeroed after a warm-up, dumped after a 5 s run.
#   xtask/scripts/gateway-instructions.sh bronze  [path/to/bronze-gateway]
#   xtask/scripts/gateway-instructions.sh nginx
#   xtask/scripts/gateway-instructions.sh bronze-plugins [path/to/bronze-gateway]
#     (the route with key-auth, rate-limiting and prometheus, as in
#     `cargo xtask bench gateway`)
# Needs nginx-light, wrk, valgrind (apt-get install nginx-light wrk valgrind).
set -euo pipefail
what=${1:?bronze, bronze-plugins or nginx}
bin=${2:-target/release/bronze-gateway}
d=$(mktemp -d)
trap 'kill $pid $backend 2>/dev/null || true; rm -rf "$d"' EXIT
. "$(dirname "$0")/nginx-conf.sh"
conf backend "server { listen 127.0.0.1:18180; location / { default_type text/plain; return 200 'hello from the backend\n'; } }"
nginx -p "$d/backend" -c "$d/backend/nginx.conf" & backend=$!
out="$d/callgrind.out"
if [ "$what" = nginx ]; then
  conf proxy "upstream b { server 127.0.0.1:18180; keepalive 64; keepalive_requests 1000000; }
server { listen 127.0.0.1:18181; location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
  valgrind --tool=callgrind --callgrind-out-file="$out" nginx -p "$d/proxy" -c "$d/proxy/nginx.conf" >/dev/null 2>&1 & pid=$!
else
  echo '{"_format_version":"3.0","services":[{"name":"b","url":"http://127.0.0.1:18180","routes":[{"name":"all","paths":["/"]}]}]}' > "$d/kong.json"
  if [ "$what" = bronze-plugins ]; then
    echo '{"_format_version":"3.0","consumers":[{"username":"bench","keyauth_credentials":[{"key":"bench-key"}]}],
      "services":[{"name":"b","url":"http://127.0.0.1:18180","routes":[{"name":"all","paths":["/"],"plugins":[
      {"name":"key-auth"},{"name":"rate-limiting","config":{"second":1000000000,"limit_by":"consumer"}},
      {"name":"prometheus","config":{"status_code_metrics":true,"latency_metrics":true}}]}]}]}' > "$d/kong.json"
  fi
  RUST_LOG=error valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --workers 1 --data-dir '' \
    --addr 127.0.0.1:18181 --admin-addr 127.0.0.1:18182 --declarative-config "$d/kong.json" >/dev/null 2>&1 & pid=$!
fi
key=(-H 'apikey: bench-key')
for _ in $(seq 200); do curl -sf -o /dev/null "${key[@]}" http://127.0.0.1:18181/ && break; sleep 0.3; done
wrk -t1 -c50 -d3s "${key[@]}" http://127.0.0.1:18181/ >/dev/null
callgrind_control -z $pid >/dev/null
n=$(wrk -t1 -c50 -d5s "${key[@]}" http://127.0.0.1:18181/ | awk '/requests in/ {print $1}')
callgrind_control -d $pid >/dev/null
ir=$(callgrind_annotate "$(ls -t "$out".* | head -1)" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
echo "$what: $n requests, $ir instructions, $((ir / n)) per request"
