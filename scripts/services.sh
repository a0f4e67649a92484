#!/usr/bin/env bash
# Starts the servers the tests run against -- PostgreSQL, MariaDB (the MySQL path) and
# Redis, from Debian's packages that scripts/setup.sh installs -- waits until each
# answers, and makes sure a user `orderflow` (password `orderflow`) that may create
# databases exists on PostgreSQL and MariaDB. Idempotent: a server already running is
# left alone, an existing user is only reset to the known password.
#
# Usage: run it, do not source it. Progress goes to stderr; stdout is exactly three
# shell lines for the caller to eval (scripts/test.sh does):
#   export TEST_POSTGRES_URL=postgres://orderflow:orderflow@127.0.0.1:5432/postgres
#   export TEST_MYSQL_URL=mysql://orderflow:orderflow@127.0.0.1:3306/test
#   export TEST_REDIS_URL=redis://127.0.0.1:6379
#   env="$(scripts/services.sh)" && eval "$env"
# Any failure prints what failed (with the server's log tail) and exits non-zero.
set -euo pipefail
cd / # as_user below runs tools as postgres, who may not read the caller's directory

log() { echo "services: $*" >&2; }
fail() {
  echo "services: ERROR: $*" >&2
  exit 1
}

# Runs a command as another OS user: directly when we are that user, with runuser
# as root, with sudo otherwise.
as_user() {
  local user="$1"
  shift
  if [ "$(id -un)" = "$user" ]; then
    "$@"
  elif [ "$(id -u)" -eq 0 ]; then
    runuser -u "$user" -- "$@"
  else
    sudo -u "$user" -- "$@"
  fi
}
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

# Calls "$@" once a second until it succeeds or $1 seconds have passed.
wait_for() {
  local seconds="$1"
  shift
  local i
  for ((i = 0; i < seconds; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  "$@" >/dev/null 2>&1
}

show_log() {
  if [ -r "$1" ]; then
    echo "--- last lines of $1 ---" >&2
    tail -n 30 "$1" >&2
  fi
}

for tool in pg_lsclusters pg_ctlcluster psql mariadbd mariadb mariadb-admin redis-server redis-cli; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] \
    || fail "$tool not found: run scripts/setup.sh --test first (it installs postgresql, mariadb-server, redis-server)"
done

# ---------------------------------------------------------------------------------
# PostgreSQL: the first cluster pg_lsclusters lists (Debian 12: 15/main).
# ---------------------------------------------------------------------------------
cluster="$(pg_lsclusters --no-header 2>/dev/null | awk 'NR == 1 { print $1, $2, $3, $7 }')"
if [ -z "$cluster" ]; then
  log "PostgreSQL: no cluster, creating 15/main"
  $sudo pg_createcluster 15 main >&2 || fail "PostgreSQL: pg_createcluster 15 main failed"
  cluster="$(pg_lsclusters --no-header | awk 'NR == 1 { print $1, $2, $3, $7 }')"
fi
read -r pg_version pg_cluster pg_port pg_logfile <<<"$cluster"
# /run is a tmpfs: the socket directory is gone after a reboot.
$sudo install -d -o postgres -g postgres -m 2775 /run/postgresql
if as_user postgres pg_isready -q -p "$pg_port"; then
  log "PostgreSQL $pg_version/$pg_cluster already running on port $pg_port"
else
  log "PostgreSQL: starting $pg_version/$pg_cluster"
  if ! $sudo pg_ctlcluster --skip-systemctl-redirect "$pg_version" "$pg_cluster" start >&2; then
    show_log "$pg_logfile"
    fail "PostgreSQL $pg_version/$pg_cluster did not start (pg_ctlcluster failed)"
  fi
fi
if ! wait_for 60 as_user postgres pg_isready -q -h 127.0.0.1 -p "$pg_port"; then
  show_log "$pg_logfile"
  fail "PostgreSQL did not answer on 127.0.0.1:$pg_port within 60 s"
fi
# A login role that may create (and drop) its own databases; the password is reset
# every time so a role left from elsewhere still matches the URL below.
if ! as_user postgres psql -X -q -v ON_ERROR_STOP=1 -p "$pg_port" -d postgres >&2 <<'SQL'; then
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orderflow') THEN
    CREATE ROLE orderflow LOGIN CREATEDB PASSWORD 'orderflow';
  ELSE
    ALTER ROLE orderflow LOGIN CREATEDB PASSWORD 'orderflow';
  END IF;
END
$$;
SQL
  fail "PostgreSQL: could not create the role orderflow"
fi
if ! PGPASSWORD=orderflow psql -X -q -h 127.0.0.1 -p "$pg_port" -U orderflow -d postgres \
  -c 'SELECT 1' >/dev/null 2>&1; then
  fail "PostgreSQL: orderflow cannot log in over TCP at 127.0.0.1:$pg_port (check pg_hba.conf)"
fi
log "PostgreSQL ready at 127.0.0.1:$pg_port"

# ---------------------------------------------------------------------------------
# MariaDB (Debian's config: bind 127.0.0.1, port 3306, pid file in /run/mysqld).
# ---------------------------------------------------------------------------------
mysql_log=/var/log/mysql/error.log
mariadbd_bin=/usr/sbin/mariadbd
mysql_ping() { $sudo mariadb-admin --protocol=socket ping; }
if mysql_ping >/dev/null 2>&1; then
  log "MariaDB already running"
else
  log "MariaDB: starting"
  $sudo install -d -o mysql -g root -m 0755 /run/mysqld
  $sudo install -d -o mysql -g adm -m 2750 /var/log/mysql
  # A fresh data dir (a package installed with its post-install steps skipped)
  # gets its system tables first.
  if [ ! -d /var/lib/mysql/mysql ]; then
    log "MariaDB: initialising /var/lib/mysql"
    $sudo mariadb-install-db --user=mysql --datadir=/var/lib/mysql >&2 \
      || fail "MariaDB: mariadb-install-db failed"
  fi
  if ! $sudo start-stop-daemon --start --oknodo --background \
    --pidfile /run/mysqld/mysqld.pid --exec "$mariadbd_bin" -- \
    --user=mysql --log-error="$mysql_log" >&2; then
    fail "MariaDB: start-stop-daemon could not start $mariadbd_bin"
  fi
fi
if ! wait_for 60 mysql_ping; then
  show_log "$mysql_log"
  fail "MariaDB did not answer within 60 s"
fi
# The same user by every host name a TCP client from this machine may appear as;
# it may create and drop databases (each test makes its own).
if ! $sudo mariadb --protocol=socket >&2 <<'SQL'; then
CREATE USER IF NOT EXISTS 'orderflow'@'localhost' IDENTIFIED BY 'orderflow';
CREATE USER IF NOT EXISTS 'orderflow'@'127.0.0.1' IDENTIFIED BY 'orderflow';
CREATE USER IF NOT EXISTS 'orderflow'@'%' IDENTIFIED BY 'orderflow';
ALTER USER 'orderflow'@'localhost' IDENTIFIED BY 'orderflow';
ALTER USER 'orderflow'@'127.0.0.1' IDENTIFIED BY 'orderflow';
ALTER USER 'orderflow'@'%' IDENTIFIED BY 'orderflow';
GRANT ALL PRIVILEGES ON *.* TO 'orderflow'@'localhost';
GRANT ALL PRIVILEGES ON *.* TO 'orderflow'@'127.0.0.1';
GRANT ALL PRIVILEGES ON *.* TO 'orderflow'@'%';
CREATE DATABASE IF NOT EXISTS test;
SQL
  fail "MariaDB: could not create the user orderflow"
fi
mysql_port="$($sudo mariadb --protocol=socket -N -B -e 'SELECT @@port')"
if ! mariadb --protocol=tcp -h 127.0.0.1 -P "$mysql_port" -u orderflow -porderflow test \
  -e 'SELECT 1' >/dev/null 2>&1; then
  fail "MariaDB: orderflow cannot log in over TCP at 127.0.0.1:$mysql_port"
fi
log "MariaDB ready at 127.0.0.1:$mysql_port"

# ---------------------------------------------------------------------------------
# Redis: no persistence, local only.
# ---------------------------------------------------------------------------------
redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }
if redis_ping; then
  log "Redis already running"
else
  log "Redis: starting"
  redis_log=/tmp/orderflow-redis.log
  if ! redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" \
    --appendonly no --logfile "$redis_log" >&2; then
    fail "Redis: redis-server did not start"
  fi
  if ! wait_for 30 redis_ping; then
    show_log "$redis_log"
    fail "Redis did not answer on 127.0.0.1:6379 within 30 s"
  fi
fi
log "Redis ready at 127.0.0.1:6379"

echo "export TEST_POSTGRES_URL=postgres://orderflow:orderflow@127.0.0.1:$pg_port/postgres"
echo "export TEST_MYSQL_URL=mysql://orderflow:orderflow@127.0.0.1:$mysql_port/test"
echo "export TEST_REDIS_URL=redis://127.0.0.1:6379"
