#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests (Debian's postgresql package), on 127.0.0.1
# only, trusting local connections, its data in a temporary folder.
#   bash scripts/postgres.sh start DIR   # prints the URL: postgresql://postgres@127.0.0.1:PORT/postgres
#   bash scripts/postgres.sh stop DIR    # stops it and deletes DIR
# Installs the package when its binaries are missing (apt-get; sudo when not root).
set -euo pipefail
cmd=${1:?start or stop}; dir=${2:?a folder for the cluster}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
if [ "$cmd" = stop ]; then
  [ -n "$bin" ] && [ -d "$dir/data" ] && \
    { [ "$(id -u)" = 0 ] && runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -m immediate stop \
      || "$bin/pg_ctl" -D "$dir/data" -m immediate stop; } >/dev/null 2>&1 || true
  rm -rf "$dir"
  exit 0
fi
if [ -z "$bin" ]; then
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
      postgresql; } >/dev/null 2>&1 || { echo "error: could not install Debian's postgresql" >&2; exit 1; }
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
as=()   # the server refuses to run as root: run it as the package's postgres user
if [ "$(id -u)" = 0 ]; then as=(runuser -u postgres --); fi
mkdir -p "$dir"
[ "$(id -u)" = 0 ] && chown postgres "$dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
  || { echo "error: initdb failed (log: $dir/initdb.log)" >&2; exit 1; }
"${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $port -k $dir" start >/dev/null \
  || { echo "error: the PostgreSQL server did not start (log: $dir/server.log)" >&2; exit 1; }
echo "postgresql://postgres@127.0.0.1:$port/postgres"
