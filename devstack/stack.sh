#!/usr/bin/env bash
# flowproof's local services without Docker: PostgreSQL and Redis from Debian's packages, Apache
# Kafka (KRaft, single node) and Apicurio Registry (a schema registry, for the registry tests)
# from Maven Central, each on loopback with its own port, data and log folder under .devstack/.
#
#   devstack/stack.sh up       install what is missing, start what is not running, write .devstack/env
#   devstack/stack.sh up --kafka-cluster
#                              the same, and a 3-node KRaft Kafka cluster beside the single broker
#                              (replication factor 3, min.insync.replicas 2); its bootstrap list
#                              is DEVSTACK_KAFKA_CLUSTER_BOOTSTRAP_SERVERS in .devstack/env
#   devstack/stack.sh down     stop exactly the processes `up` started (pid files), nothing else
#   devstack/stack.sh down --kafka-cluster
#                              stop the 3-node Kafka cluster only (and drop it from .devstack/env)
#   devstack/stack.sh status   say what runs where
#
# Beside the single Redis server, a primary with a replica and a Sentinel, and a 3-primary Redis
# Cluster (devstack/redis_topologies.sh).
#
# Environment: DEVSTACK_DIR (default .devstack), DEVSTACK_TIMEOUT (health wait, default 90 s).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK=${DEVSTACK_DIR:-$ROOT/.devstack}
TIMEOUT=${DEVSTACK_TIMEOUT:-90}
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/devstack/kafka/pom.xml")
KAFKA_LIBS=$STACK/kafka-libs-$KAFKA_VERSION
APICURIO_VERSION=$(sed -n 's:.*<apicurio.version>\(.*\)</apicurio.version>.*:\1:p' "$ROOT/devstack/apicurio/pom.xml")
APICURIO_APP=$STACK/apicurio-$APICURIO_VERSION

# First choices of port; the next free one is taken when a port is in use by something else.
declare -A BASE_PORT=([postgres]=55432 [redis]=56379 [kafka]=59092 [kafka_controller]=59093
  [schema_registry]=58081 [schema_registry_management]=58082
  [kafka_cluster_1]=59192 [kafka_cluster_2]=59194 [kafka_cluster_3]=59196
  [kafka_cluster_controller_1]=59193 [kafka_cluster_controller_2]=59195
  [kafka_cluster_controller_3]=59197)
KAFKA_CLUSTER_NODES=(1 2 3)

say() { printf 'devstack: %s\n' "$*"; }
# shellcheck source=devstack/redis_topologies.sh
. "$ROOT/devstack/redis_topologies.sh"
die() { printf 'devstack: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# helpers

port_in_use() { # port -> 0 if something listens on 127.0.0.1:port
  python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
EOF
}

pick_port() { # name -> prints the remembered port, or the first free one from the base
  local name=$1 file=$STACK/ports/$1 port
  if [[ -f $file ]]; then cat "$file"; return; fi
  port=${BASE_PORT[$name]}
  while port_in_use "$port" || grep -qx "$port" "$STACK"/ports/* 2>/dev/null; do
    port=$((port + 10))
  done
  mkdir -p "$STACK/ports"
  echo "$port" > "$file"
  echo "$port"
}

pid_alive() { # pidfile [pattern] -> 0 if the pid in the file runs (and its command matches)
  local pidfile=$1 pattern=${2:-} pid
  [[ -s $pidfile ]] || return 1
  pid=$(head -n1 "$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [[ -z $pattern ]] || tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$pattern"
}

wait_for() { # name logfile command... -> waits until the command succeeds, or prints the log tail
  local name=$1 logfile=$2; shift 2
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      printf 'devstack: %s did not become healthy within %ss; last lines of %s:\n' \
        "$name" "$TIMEOUT" "$logfile" >&2
      tail -n 40 "$logfile" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
}

pg_bin() { # the newest installed PostgreSQL server binaries
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  [[ -n $dir && -x $dir/postgres ]] && echo "$dir"
}

as_pg() { # run a PostgreSQL binary as the postgres user when we are root (initdb refuses root)
  if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# ---------------------------------------------------------------------------------------------
# install

install_packages() {
  local missing=()
  pg_bin >/dev/null || missing+=(postgresql)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  command -v promtool >/dev/null || missing+=(prometheus)
  # The status page's test loads it in a real headless browser (tests/browser.py).
  command -v chromium >/dev/null || missing+=(chromium)
  ((${#missing[@]})) || return 0
  if [[ $EUID -ne 0 ]]; then
    die "missing packages: ${missing[*]}; install them (sudo apt-get install ${missing[*]}) or run as root"
  fi
  say "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's packages may start their own servers; ours run on other ports, but stop theirs
  # only if the package install itself started them (never a server that was already running).
}

install_kafka() {
  [[ -f $KAFKA_LIBS/.complete ]] && return 0
  say "fetching Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_LIBS"
  rm -rf "$KAFKA_LIBS"
  mvn -B -q -f "$ROOT/devstack/kafka/pom.xml" package \
    -DoutputDirectory="$KAFKA_LIBS" \
    || die "mvn could not fetch the Kafka broker (is Maven Central reachable?)"
  rm -rf "$ROOT/devstack/kafka/target"
  ls "$KAFKA_LIBS"/kafka_2.13-*.jar >/dev/null 2>&1 || die "no kafka_2.13 jar in $KAFKA_LIBS"
  touch "$KAFKA_LIBS/.complete"
}

install_apicurio() {
  [[ -f $APICURIO_APP/.complete ]] && return 0
  say "fetching Apicurio Registry $APICURIO_VERSION (about 151 MiB) from Maven Central into $APICURIO_APP"
  # target/ holds the plugin's "already unpacked" markers: a stale one would skip the unpack.
  rm -rf "$APICURIO_APP" "$ROOT/devstack/apicurio/target"
  mvn -B -q -f "$ROOT/devstack/apicurio/pom.xml" package \
    -DoutputDirectory="$APICURIO_APP" \
    || die "mvn could not fetch Apicurio Registry (is Maven Central reachable?)"
  rm -rf "$ROOT/devstack/apicurio/target"
  [[ -f $APICURIO_APP/quarkus-run.jar ]] || die "no quarkus-run.jar in $APICURIO_APP"
  touch "$APICURIO_APP/.complete"
}

java_major() { # java binary -> its feature version (17, 21, 25...)
  "$1" -XshowSettings:properties -version 2>&1 \
    | sed -n 's/^ *java\.specification\.version = \([0-9]*\).*/\1/p' | head -n1
}

java21() { # prints the newest java of version 21 or later: APICURIO_JAVA, JAVA_HOME, PATH, /usr/lib/jvm
  local candidate major best="" best_major=0
  for candidate in "${APICURIO_JAVA:-}" "${JAVA_HOME:+$JAVA_HOME/bin/java}" \
      "$(command -v java || true)" /usr/lib/jvm/*/bin/java; do
    [[ -n $candidate && -x $candidate ]] || continue
    major=$(java_major "$candidate")
    [[ $major =~ ^[0-9]+$ ]] || continue
    if ((major >= 21 && major > best_major)); then best=$candidate; best_major=$major; fi
  done
  [[ -n $best ]] || return 1
  echo "$best"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL

pg_dir() { # data must be reachable by the postgres user when we are root
  local dir=$STACK/postgres
  if [[ $EUID -eq 0 ]] && ! runuser -u postgres -- test -x "$STACK" 2>/dev/null; then
    local alt
    alt=/var/tmp/flowproof-devstack/$(echo -n "$STACK" | sha1sum | cut -c1-12)/postgres
    mkdir -p "$alt"
    [[ -L $dir ]] || { rm -rf "$dir"; ln -s "$alt" "$dir"; }
  fi
  echo "$dir"
}

start_postgres() {
  local bin dir port
  bin=$(pg_bin) || die "PostgreSQL server binaries not found"
  dir=$(pg_dir)
  port=$(pick_port postgres)
  mkdir -p "$dir/run" "$dir/log"
  [[ $EUID -eq 0 ]] && chown -R postgres:postgres "$dir/"
  if [[ ! -f $dir/data/PG_VERSION ]]; then
    say "initialising PostgreSQL in $dir/data"
    as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
      > "$dir/log/initdb.log" 2>&1 || { tail -n 20 "$dir/log/initdb.log" >&2; die "initdb failed"; }
    cat >> "$dir/data/postgresql.conf" <<EOF
# flowproof devstack: loopback only, sized for tests. fsync is off because this data is
# throw-away; never copy these lines to a real server.
listen_addresses = '127.0.0.1'
max_connections = 300
shared_buffers = 256MB
fsync = off
full_page_writes = off
synchronous_commit = off
max_wal_size = 2GB
EOF
  fi
  if as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    say "postgres already running on 127.0.0.1:$port"
  else
    say "starting postgres on 127.0.0.1:$port"
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log/postgres.log" -w -t "$TIMEOUT" \
      -o "-p $port -k $dir/run" start >/dev/null \
      || { tail -n 40 "$dir/log/postgres.log" >&2; die "postgres did not start"; }
  fi
  wait_for postgres "$dir/log/postgres.log" "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"
  if ! "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -Atqc \
      "SELECT 1 FROM pg_database WHERE datname = 'flowproof'" | grep -q 1; then
    "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -qc "CREATE DATABASE flowproof" >/dev/null
  fi
}

stop_postgres() {
  local bin dir=$STACK/postgres
  bin=$(pg_bin) || return 0
  [[ -f $dir/data/postmaster.pid ]] || return 0
  say "stopping postgres"
  as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# Redis

start_redis() {
  local dir=$STACK/redis port
  port=$(pick_port redis)
  mkdir -p "$dir/data" "$dir/log"
  if pid_alive "$dir/redis.pid" redis-server; then
    say "redis already running on 127.0.0.1:$port"
  else
    say "starting redis on 127.0.0.1:$port"
    cat > "$dir/redis.conf" <<EOF
bind 127.0.0.1
port $port
daemonize yes
pidfile $dir/redis.pid
logfile $dir/log/redis.log
dir $dir/data
save ""
appendonly yes
appendfsync everysec
protected-mode yes
EOF
    redis-server "$dir/redis.conf" || { tail -n 40 "$dir/log/redis.log" >&2; die "redis did not start"; }
  fi
  wait_for redis "$dir/log/redis.log" redis-cli -h 127.0.0.1 -p "$port" ping
}

stop_redis() {
  local dir=$STACK/redis pid
  pid_alive "$dir/redis.pid" redis-server || return 0
  pid=$(head -n1 "$dir/redis.pid")
  say "stopping redis (pid $pid)"
  kill "$pid"
  wait_gone "$pid"
}

# ---------------------------------------------------------------------------------------------
# Kafka

kafka_healthy() { # the broker answers and has logged that it started
  local port=$1 log=$2
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && grep -q "Kafka Server started" "$log"
}

kafka_log4j() { # dir -> a broker's log4j2.properties, logging to dir/log/server.log
  cat > "$1/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $1/log/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
EOF
}

start_kafka() {
  local dir=$STACK/kafka port cport
  port=$(pick_port kafka)
  cport=$(pick_port kafka_controller)
  mkdir -p "$dir/data" "$dir/log"
  if pid_alive "$dir/kafka.pid" kafka.Kafka; then
    say "kafka already running on 127.0.0.1:$port"
    return 0
  fi
  cat > "$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=3
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
EOF
  kafka_log4j "$dir"
  local java_opts=(-Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$dir/log4j2.properties")
  if [[ ! -f $dir/data/meta.properties ]]; then
    say "formatting kafka storage in $dir/data"
    local cluster_id
    cluster_id=$(java -cp "$KAFKA_LIBS/*" "${java_opts[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)
    java -cp "$KAFKA_LIBS/*" "${java_opts[@]}" kafka.tools.StorageTool format \
      -t "$cluster_id" -c "$dir/server.properties" > "$dir/log/format.log" 2>&1 \
      || { tail -n 20 "$dir/log/format.log" >&2; die "kafka storage format failed"; }
  fi
  say "starting kafka $KAFKA_VERSION on 127.0.0.1:$port (controller $cport)"
  : > "$dir/log/server.log"
  nohup java -cp "$KAFKA_LIBS/*" "${java_opts[@]}" kafka.Kafka "$dir/server.properties" \
    > "$dir/log/stdout.log" 2>&1 < /dev/null &
  echo $! > "$dir/kafka.pid"
  wait_for kafka "$dir/log/server.log" kafka_healthy "$port" "$dir/log/server.log"
}

stop_kafka() {
  local dir=$STACK/kafka pid
  pid_alive "$dir/kafka.pid" kafka.Kafka || return 0
  pid=$(head -n1 "$dir/kafka.pid")
  say "stopping kafka (pid $pid)"
  kill "$pid"
  wait_gone "$pid" 60
  rm -f "$dir/kafka.pid"
}

# ---------------------------------------------------------------------------------------------
# Kafka cluster (up --kafka-cluster): 3 nodes, each a broker and a controller in one JVM, one
# static quorum; small heaps for a 2-core machine. tests/kafka_cluster.py has the same settings.

kafka_cluster_bootstrap() {
  local n list=()
  for n in "${KAFKA_CLUSTER_NODES[@]}"; do list+=("127.0.0.1:$(cat "$STACK/ports/kafka_cluster_$n")"); done
  (IFS=,; echo "${list[*]}")
}

kafka_cluster_running() {
  local n
  for n in "${KAFKA_CLUSTER_NODES[@]}"; do
    pid_alive "$STACK/kafka-cluster/node-$n/kafka.pid" kafka.Kafka || return 1
  done
}

start_kafka_cluster() {
  local base=$STACK/kafka-cluster n dir port cport voters="" cluster_id
  for n in "${KAFKA_CLUSTER_NODES[@]}"; do
    pick_port "kafka_cluster_$n" >/dev/null
    pick_port "kafka_cluster_controller_$n" >/dev/null
    voters+="${voters:+,}$n@127.0.0.1:$(cat "$STACK/ports/kafka_cluster_controller_$n")"
  done
  mkdir -p "$base"
  local java_opts=(-Xms128m -Xmx384m -XX:+UseG1GC -Djava.awt.headless=true)
  if [[ ! -s $base/cluster.id ]]; then
    java -cp "$KAFKA_LIBS/*" "${java_opts[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null \
      | tail -n1 > "$base/cluster.id"
  fi
  cluster_id=$(cat "$base/cluster.id")
  for n in "${KAFKA_CLUSTER_NODES[@]}"; do
    dir=$base/node-$n
    port=$(cat "$STACK/ports/kafka_cluster_$n")
    cport=$(cat "$STACK/ports/kafka_cluster_controller_$n")
    mkdir -p "$dir/data" "$dir/log"
    if pid_alive "$dir/kafka.pid" kafka.Kafka; then
      say "kafka cluster node $n already running on 127.0.0.1:$port"
      continue
    fi
    cat > "$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=3
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
offsets.topic.replication.factor=3
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
replica.lag.time.max.ms=10000
num.network.threads=2
num.io.threads=2
background.threads=2
num.replica.fetchers=1
EOF
    kafka_log4j "$dir"
    if [[ ! -f $dir/data/meta.properties ]]; then
      java -cp "$KAFKA_LIBS/*" "${java_opts[@]}" kafka.tools.StorageTool format \
        -t "$cluster_id" -c "$dir/server.properties" > "$dir/log/format.log" 2>&1 \
        || { tail -n 20 "$dir/log/format.log" >&2; die "kafka cluster node $n: storage format failed"; }
    fi
    say "starting kafka cluster node $n on 127.0.0.1:$port (controller $cport)"
    : > "$dir/log/server.log"
    # Every node is launched before any is waited for: a node starts once the quorum has formed.
    nohup java -cp "$KAFKA_LIBS/*" "${java_opts[@]}" \
      "-Dlog4j2.configurationFile=$dir/log4j2.properties" kafka.Kafka "$dir/server.properties" \
      > "$dir/log/stdout.log" 2>&1 < /dev/null &
    echo $! > "$dir/kafka.pid"
  done
  for n in "${KAFKA_CLUSTER_NODES[@]}"; do
    dir=$base/node-$n
    wait_for "kafka cluster node $n" "$dir/log/server.log" \
      kafka_healthy "$(cat "$STACK/ports/kafka_cluster_$n")" "$dir/log/server.log"
  done
}

stop_kafka_cluster() {
  local n dir pid pids=()
  for n in "${KAFKA_CLUSTER_NODES[@]}"; do
    dir=$STACK/kafka-cluster/node-$n
    pid_alive "$dir/kafka.pid" kafka.Kafka || continue
    pid=$(head -n1 "$dir/kafka.pid")
    say "stopping kafka cluster node $n (pid $pid)"
    kill "$pid"
    pids+=("$pid")
  done
  for pid in "${pids[@]}"; do wait_gone "$pid" 60; done
  rm -f "$STACK"/kafka-cluster/node-*/kafka.pid
}

# ---------------------------------------------------------------------------------------------
# Apicurio Registry (Confluent-compatible API under /apis/ccompat/v7), in-memory storage

registry_healthy() { # the Confluent-compatible API answers
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
    "http://127.0.0.1:$1/apis/ccompat/v7/config"
}

start_registry() {
  local dir=$STACK/schema-registry port mport java started
  port=$(pick_port schema_registry)
  mport=$(pick_port schema_registry_management)
  mkdir -p "$dir/log"
  if pid_alive "$dir/registry.pid" quarkus-run.jar; then
    say "schema registry already running on 127.0.0.1:$port"
    return 0
  fi
  java=$(java21) || die "Apicurio Registry needs Java 21 or newer and none was found \
(APICURIO_JAVA, JAVA_HOME, PATH, /usr/lib/jvm/*): install one, e.g. Eclipse Temurin 21 or 25 \
(apt-get install temurin-25-jdk from packages.adoptium.net) or openjdk-21-jre-headless where \
the distribution has it, or set APICURIO_JAVA=/path/to/bin/java"
  say "starting Apicurio Registry $APICURIO_VERSION on 127.0.0.1:$port (management $mport, Java $(java_major "$java"))"
  started=$SECONDS
  # Loopback only, in-memory storage (its default), no telemetry export.
  nohup "$java" -Xms64m -Xmx512m -Djava.awt.headless=true \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$port" \
    -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$mport" \
    -Dquarkus.otel.sdk.disabled=true \
    -jar "$APICURIO_APP/quarkus-run.jar" > "$dir/log/registry.log" 2>&1 < /dev/null &
  echo $! > "$dir/registry.pid"
  wait_for "schema registry" "$dir/log/registry.log" registry_healthy "$port"
  say "schema registry ready in $((SECONDS - started)) s"
}

stop_registry() {
  local dir=$STACK/schema-registry pid
  pid_alive "$dir/registry.pid" quarkus-run.jar || return 0
  pid=$(head -n1 "$dir/registry.pid")
  say "stopping schema registry (pid $pid)"
  kill "$pid"
  wait_gone "$pid" 30
  rm -f "$dir/registry.pid"
}

wait_gone() { # pid [seconds] -> waits for the process to exit, SIGKILL after the time
  local pid=$1 limit=${2:-30} deadline
  deadline=$((SECONDS + limit))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then kill -9 "$pid" 2>/dev/null || true; fi
    sleep 0.2
  done
}

# ---------------------------------------------------------------------------------------------

# DEVSTACK_SCHEMA_REGISTRY_URL is the registry tests' Apicurio (DEVSTACK_APICURIO_JAR and _JAVA
# let a test start a private one, e.g. with TLS and basic auth). Not FLOWPROOF_SCHEMA_REGISTRY_URL:
# flowproof keeps its embedded schema ids by default (the demo needs no registry); nor any other
# FLOWPROOF_ name, which every flowproof command would refuse as an unknown setting.
write_env() {
  local env=$STACK/env
  cat > "$env.tmp" <<EOF
FLOWPROOF_DATABASE_URL=postgresql://postgres@127.0.0.1:$(cat "$STACK/ports/postgres")/flowproof
FLOWPROOF_REDIS_URL=redis://127.0.0.1:$(cat "$STACK/ports/redis")/0
FLOWPROOF_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$(cat "$STACK/ports/kafka")
DEVSTACK_SCHEMA_REGISTRY_URL=http://127.0.0.1:$(cat "$STACK/ports/schema_registry")/apis/ccompat/v7
DEVSTACK_APICURIO_JAR=$APICURIO_APP/quarkus-run.jar
DEVSTACK_APICURIO_JAVA=$(java21)
$(redis_topologies_env)
EOF
  if kafka_cluster_running; then
    # Not FLOWPROOF_KAFKA_BOOTSTRAP_SERVERS: the default stack keeps its single broker; point
    # flowproof at the cluster with FLOWPROOF_KAFKA_BOOTSTRAP_SERVERS=<this list>.
    echo "DEVSTACK_KAFKA_CLUSTER_BOOTSTRAP_SERVERS=$(kafka_cluster_bootstrap)" >> "$env.tmp"
  fi
  mv "$env.tmp" "$env"
  say "wrote $env"
}

status_line() { # name port running?
  printf '  %-9s 127.0.0.1:%-6s %s\n' "$1" "$2" "$3"
}

cmd_status() {
  local pg_state=stopped redis_state=stopped kafka_state=stopped registry_state=stopped bin
  if bin=$(pg_bin) && [[ -f $STACK/postgres/data/postmaster.pid ]] \
      && "$bin/pg_isready" -q -h 127.0.0.1 -p "$(cat "$STACK/ports/postgres")"; then
    pg_state="running (pid $(head -n1 "$STACK/postgres/data/postmaster.pid"))"
  fi
  pid_alive "$STACK/redis/redis.pid" redis-server \
    && redis_state="running (pid $(head -n1 "$STACK/redis/redis.pid"))"
  pid_alive "$STACK/kafka/kafka.pid" kafka.Kafka \
    && kafka_state="running (pid $(head -n1 "$STACK/kafka/kafka.pid"), Kafka $KAFKA_VERSION)"
  pid_alive "$STACK/schema-registry/registry.pid" quarkus-run.jar \
    && registry_state="running (pid $(head -n1 "$STACK/schema-registry/registry.pid"), Apicurio Registry $APICURIO_VERSION)"
  echo "devstack in $STACK:"
  status_line postgres "$(cat "$STACK/ports/postgres" 2>/dev/null || echo -)" "$pg_state"
  status_line redis "$(cat "$STACK/ports/redis" 2>/dev/null || echo -)" "$redis_state"
  status_line kafka "$(cat "$STACK/ports/kafka" 2>/dev/null || echo -)" "$kafka_state"
  status_line registry "$(cat "$STACK/ports/schema_registry" 2>/dev/null || echo -)" "$registry_state"
  redis_topologies_status
  if kafka_cluster_running; then
    echo "  kafka cluster (up --kafka-cluster): $(kafka_cluster_bootstrap), 3 nodes, RF 3, min ISR 2"
  fi
  [[ -f $STACK/env ]] && echo "environment: $STACK/env (source it: set -a; . $STACK/env; set +a)"
  [[ $pg_state != stopped && $redis_state != stopped && $kafka_state != stopped \
    && $registry_state != stopped ]]
}

cmd_up() {
  local started=$SECONDS cluster=false arg
  for arg in "$@"; do
    case $arg in
      --kafka-cluster) cluster=true ;;
      *) die "up: unknown option $arg (known: --kafka-cluster)" ;;
    esac
  done
  mkdir -p "$STACK"
  install_packages
  install_kafka
  install_apicurio
  start_postgres
  start_redis
  start_redis_topologies
  start_kafka
  start_registry
  if $cluster; then start_kafka_cluster; fi
  write_env
  say "up in $((SECONDS - started)) s"
  cmd_status
}

cmd_down() {
  local arg
  for arg in "$@"; do
    case $arg in
      --kafka-cluster)
        # The 3-broker cluster alone (make bench stops it once its lines are measured).
        stop_kafka_cluster
        [[ -f $STACK/env ]] && write_env
        say "kafka cluster down"
        return ;;
      *) die "down: unknown option $arg (known: --kafka-cluster)" ;;
    esac
  done
  stop_registry
  stop_kafka_cluster
  stop_kafka
  stop_redis_topologies
  stop_redis
  stop_postgres
  say "down"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
