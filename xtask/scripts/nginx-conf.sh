# Sourced by the gateway scripts: `conf NAME HTTP_BLOCK` writes
# $d/NAME/nginx.conf, one single-process nginx (no master, one worker, no
# access log, keep-alive without limit) with HTTP_BLOCK inside `http`.
conf() {
  mkdir -p "$d/$1/logs"
  cat > "$d/$1/nginx.conf" <<C
daemon off; master_process off; worker_processes 1; user root; pid $d/$1/nginx.pid;
error_log $d/$1/logs/error.log crit; events { worker_connections 4096; }
http { access_log off; client_body_temp_path $d/$1/b; proxy_temp_path $d/$1/p; fastcgi_temp_path $d/$1/f;
uwsgi_temp_path $d/$1/u; scgi_temp_path $d/$1/s; keepalive_requests 1000000; $2 }
C
}
