#!/usr/bin/env bash
# Makes sure the machine has what the tests need, and stops again what it started.
#   scripts/services.sh ensure   install missing apt packages (as root), start PostgreSQL and Redis if
#                                they are not answering; what it started is listed in $STATE
#   scripts/services.sh stop     stop what `ensure` started
set -euo pipefail
STATE=${GL_SERVICES_STATE:-/tmp/gl-watchdog-services.started}
PKGS=(prometheus prometheus-alertmanager chromium redis-server postgresql curl)
BINS=(prometheus prometheus-alertmanager chromium redis-server pg_ctlcluster curl)

log() { printf 'services: %s\n' "$*" >&2; }

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }

install_missing() {
  local missing=() i
  for i in "${!BINS[@]}"; do
    command -v "${BINS[$i]}" >/dev/null 2>&1 || missing+=("${PKGS[$i]}")
  done
  command -v pg_isready >/dev/null 2>&1 || missing+=(postgresql-client)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    log "missing packages ${missing[*]}; run as root or install them: apt-get install ${missing[*]}"
    return 1
  fi
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure() {
  install_missing
  : >>"$STATE"
  if ! pg_up; then
    log "starting PostgreSQL"
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    echo "postgresql $version" >>"$STATE"
    for _ in $(seq 50); do pg_up && break; sleep 0.2; done
    # Trust auth on loopback for the test user, as on the development machines.
    psql -h 127.0.0.1 -U postgres -c 'select 1' >/dev/null 2>&1 || {
      log "PostgreSQL does not accept user postgres on 127.0.0.1 without a password; set GL_TEST_POSTGRES_DSN"
    }
  fi
  if ! redis_up; then
    log "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp --logfile /tmp/gl-watchdog-redis.log
    echo "redis" >>"$STATE"
    for _ in $(seq 50); do redis_up && break; sleep 0.1; done
  fi
  pg_up || { log "PostgreSQL is not reachable on 127.0.0.1:5432"; return 1; }
  redis_up || { log "Redis is not reachable on 127.0.0.1:6379"; return 1; }
}

stop() {
  [ -f "$STATE" ] || return 0
  while read -r what arg; do
    case "$what" in
      postgresql) log "stopping PostgreSQL"; pg_ctlcluster --skip-systemctl-redirect "$arg" main stop || true ;;
      redis) log "stopping Redis"; redis-cli -h 127.0.0.1 -p 6379 shutdown nosave >/dev/null 2>&1 || true ;;
    esac
  done <"$STATE"
  rm -f "$STATE"
}

case "${1:-}" in
  ensure) ensure ;;
  stop) stop ;;
  *) echo "usage: $0 ensure|stop" >&2; exit 2 ;;
esac
