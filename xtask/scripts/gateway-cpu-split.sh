#!/usr/bin/env bash
# Where a proxied request's CPU goes on this machine: for nginx as the proxy
# and for bronze-gateway (--workers 1), in alternating rounds, wrk -t1 -c50
# through each to one nginx backend; during 7 s of each 8 s run, CPU time
# from /proc (user and system of the proxy; the backend's and wrk's; the
# machine's idle) divided by the requests answered, in microseconds.
#   xtask/scripts/gateway-cpu-split.sh [ROUNDS] [path/to/bronze-gateway]
# Needs nginx-light and wrk (apt-get install nginx-light wrk).
set -euo pipefail
rounds=${1:-3}
bin=${2:-target/release/bronze-gateway}
d=$(mktemp -d)
trap 'kill $backend $proxy $gateway 2>/dev/null || true; rm -rf "$d"' EXIT
. "$(dirname "$0")/nginx-conf.sh"
conf backend "server { listen 127.0.0.1:18280 backlog=4096; location / { default_type text/plain; return 200 'hello from the backend\n'; } }"
conf proxy "upstream b { server 127.0.0.1:18280; keepalive 64; keepalive_requests 1000000; }
server { listen 127.0.0.1:18281 backlog=4096; location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
echo '{"_format_version":"3.0","services":[{"name":"b","url":"http://127.0.0.1:18280","routes":[{"name":"all","paths":["/"]}]}]}' > "$d/kong.json"
nginx -p "$d/backend" -c "$d/backend/nginx.conf" & backend=$!
nginx -p "$d/proxy" -c "$d/proxy/nginx.conf" & proxy=$!
RUST_LOG=error "$bin" --workers 1 --addr 127.0.0.1:18282 --admin-addr 127.0.0.1:18292 --data-dir '' \
  --declarative-config "$d/kong.json" & gateway=$!
sleep 1
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; } # user, system (clock ticks)
idle() { awk '/^cpu /{print $5 + $6}' /proc/stat; }
hz=$(getconf CLK_TCK)
run() { # name, port, pid
  wrk -t1 -c50 -d2s "http://127.0.0.1:$2/" >/dev/null
  wrk -t1 -c50 -d8s "http://127.0.0.1:$2/" > "$d/wrk.out" & local w=$!
  sleep 0.5
  local p0 b0 w0 i0 p1 b1 w1 i1
  p0=$(ticks "$3"); b0=$(ticks "$backend"); w0=$(ticks $w); i0=$(idle)
  sleep 7
  p1=$(ticks "$3"); b1=$(ticks "$backend"); w1=$(ticks $w); i1=$(idle)
  wait $w
  local rps
  rps=$(awk '/Requests\/sec/{print $2}' "$d/wrk.out")
  echo "$1 $rps $p0 $p1 $b0 $b1 $w0 $w1 $i0 $i1" | awk -v hz="$hz" '{
    n = $2 * 7 / (1e6 / hz);  # requests per microsecond-tick
    printf "%-14s %7.0f req/s  proxy user %5.2f  system %5.2f  backend %5.2f  wrk %5.2f  idle %5.2f  (us per request)\n",
      $1, $2, ($5 - $3) / n, ($6 - $4) / n, ($9 + $10 - $7 - $8) / n, ($13 + $14 - $11 - $12) / n, ($16 - $15) / n }'
}
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then
    run nginx 18281 $proxy; run bronze-gateway 18282 $gateway
  else
    run bronze-gateway 18282 $gateway; run nginx 18281 $proxy
  fi
done
