#!/bin/bash
# Entry point of a vigil node container: prepares the data directory the
# first time (initdb / pg_basebackup, or mariadb-install-db and GTID
# replication from the bootstrap node), then runs the sidecar, which starts
# and supervises the database itself.
#
# Environment: VIGIL_ENGINE (postgres|mariadb), VIGIL_BOOTSTRAP (1 on the
# node that creates the cluster), VIGIL_BOOTSTRAP_HOST (where the others
# copy from), and the passwords the config names (VIGIL_DB_PASSWORD,
# VIGIL_REPL_PASSWORD).
set -eu
DATA=/var/lib/vigil/data
CONFIG=/etc/vigil/vigil.toml

wait_for() { # host port
  until (echo > "/dev/tcp/$1/$2") 2>/dev/null; do sleep 1; done
}

if [ "$VIGIL_ENGINE" = postgres ] && [ ! -s "$DATA/PG_VERSION" ]; then
  if [ "${VIGIL_BOOTSTRAP:-0}" = 1 ]; then
    initdb -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 \
      --pwfile=<(printf '%s\n' "$VIGIL_DB_PASSWORD")
    cat /etc/vigil/postgresql.conf >> "$DATA/postgresql.conf"
    echo "host replication postgres all scram-sha-256" >> "$DATA/pg_hba.conf"
    echo "host all all all scram-sha-256" >> "$DATA/pg_hba.conf"
  else
    until PGPASSWORD="$VIGIL_DB_PASSWORD" pg_basebackup -h "$VIGIL_BOOTSTRAP_HOST" -U postgres -D "$DATA" -X stream -c fast -R; do
      echo "waiting for $VIGIL_BOOTSTRAP_HOST to serve a base backup"; rm -rf "$DATA"; sleep 2
    done
  fi
fi

if [ "$VIGIL_ENGINE" = mariadb ] && [ ! -d "$DATA/mysql" ]; then
  mariadb-install-db --no-defaults --datadir="$DATA" --auth-root-authentication-method=socket --skip-test-db >/dev/null
  mariadbd --defaults-file=/etc/vigil/my.cnf --skip-networking --read-only=OFF &
  until mariadb -uroot -e 'SELECT 1' >/dev/null 2>&1; do sleep 0.5; done
  if [ "${VIGIL_BOOTSTRAP:-0}" = 1 ]; then
    mariadb -uroot <<SQL
CREATE USER 'vigil'@'%' IDENTIFIED BY '$VIGIL_DB_PASSWORD';
GRANT ALL PRIVILEGES ON *.* TO 'vigil'@'%' WITH GRANT OPTION;
CREATE USER 'repl'@'%' IDENTIFIED BY '$VIGIL_REPL_PASSWORD';
GRANT REPLICATION SLAVE, BINLOG MONITOR, SLAVE MONITOR ON *.* TO 'repl'@'%';
SOURCE /usr/share/vigil/heartbeat.sql;
SQL
  else
    wait_for "$VIGIL_BOOTSTRAP_HOST" 3306
    mariadb -uroot -e "CHANGE MASTER TO MASTER_HOST='$VIGIL_BOOTSTRAP_HOST', MASTER_PORT=3306, MASTER_USER='repl', \
      MASTER_PASSWORD='$VIGIL_REPL_PASSWORD', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1"
  fi
  mariadb-admin -uroot shutdown
  wait
fi

# vigil refuses world-readable secret files; the mounted key is 0644.
if [ -f /etc/vigil/tsig.key ]; then
  install -m 0600 /etc/vigil/tsig.key /run/vigil/tsig.key
fi

exec vigil run --config "$CONFIG"
