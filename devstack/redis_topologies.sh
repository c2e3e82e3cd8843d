# shellcheck shell=bash
# Sourced by devstack/stack.sh: the Redis topologies beside the single server, from the same
# Debian redis-server, on loopback, under .devstack/:
#
#   redis-ha/      a primary, its replica and a Sentinel watching them (monitor name `flowproof`):
#                  DEVSTACK_REDIS_SENTINEL_URL=redis+sentinel://127.0.0.1:<sentinel>/flowproof/0
#   redis-cluster/ a Redis Cluster of 3 primaries (no replicas), the hash slots spread evenly:
#                  DEVSTACK_REDIS_CLUSTER_URL=redis+cluster://127.0.0.1:<node1>,...
#
# Neither is FLOWPROOF_REDIS_URL (the single server stays the default of the tests and the
# bench); point FLOWPROOF_REDIS_URL at one of them to run flowproof on it. DEVSTACK_ names, not
# FLOWPROOF_ ones, which every flowproof command would refuse as unknown settings.

BASE_PORT+=([redis_ha_primary]=56479 [redis_ha_replica]=56489 [redis_sentinel]=56499
  [redis_cluster_1]=56579 [redis_cluster_2]=56589 [redis_cluster_3]=56599
  [redis_cluster_bus_1]=56679 [redis_cluster_bus_2]=56689 [redis_cluster_bus_3]=56699)

redis_node() { # name port dir [redis-server arguments...] -> starts a daemonized redis-server
  local name=$1 port=$2 dir=$3; shift 3
  mkdir -p "$dir/data" "$dir/log"
  if pid_alive "$dir/redis.pid" redis-server; then
    say "$name already running on 127.0.0.1:$port"
    return
  fi
  say "starting $name on 127.0.0.1:$port"
  redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --pidfile "$dir/redis.pid" \
    --logfile "$dir/log/redis.log" --dir "$dir/data" --save "" --appendonly yes \
    --appendfsync everysec --protected-mode yes "$@" \
    || { tail -n 40 "$dir/log/redis.log" >&2; die "$name did not start"; }
  wait_for "$name" "$dir/log/redis.log" redis-cli -h 127.0.0.1 -p "$port" ping
}

start_redis_ha() {
  local dir=$STACK/redis-ha primary replica sentinel
  primary=$(pick_port redis_ha_primary)
  replica=$(pick_port redis_ha_replica)
  sentinel=$(pick_port redis_sentinel)
  redis_node "redis-ha primary" "$primary" "$dir/primary"
  redis_node "redis-ha replica" "$replica" "$dir/replica" --replicaof 127.0.0.1 "$primary"
  mkdir -p "$dir/sentinel/log"
  if pid_alive "$dir/sentinel/sentinel.pid" redis-server; then
    say "redis sentinel already running on 127.0.0.1:$sentinel"
  else
    say "starting redis sentinel on 127.0.0.1:$sentinel"
    # Sentinel rewrites its file with what it learns (the replica, a failover): written once.
    [[ -f $dir/sentinel/sentinel.conf ]] || cat > "$dir/sentinel/sentinel.conf" <<EOF
port $sentinel
bind 127.0.0.1
daemonize yes
pidfile $dir/sentinel/sentinel.pid
logfile $dir/sentinel/log/sentinel.log
dir $dir/sentinel
sentinel monitor flowproof 127.0.0.1 $primary 1
sentinel down-after-milliseconds flowproof 2000
sentinel failover-timeout flowproof 10000
EOF
    redis-server "$dir/sentinel/sentinel.conf" --sentinel \
      || { tail -n 40 "$dir/sentinel/log/sentinel.log" >&2; die "redis sentinel did not start"; }
  fi
  wait_for "redis sentinel" "$dir/sentinel/log/sentinel.log" \
    redis-cli -h 127.0.0.1 -p "$sentinel" sentinel get-master-addr-by-name flowproof
}

start_redis_cluster() {
  local dir=$STACK/redis-cluster n port bus nodes=()
  for n in 1 2 3; do
    port=$(pick_port "redis_cluster_$n")
    bus=$(pick_port "redis_cluster_bus_$n")
    nodes+=("127.0.0.1:$port")
    redis_node "redis-cluster node $n" "$port" "$dir/node-$n" --cluster-enabled yes \
      --cluster-config-file nodes.conf --cluster-node-timeout 2000 --cluster-port "$bus"
  done
  # Created once: after a restart the nodes find each other again from their nodes.conf (the
  # state is `ok` a moment later, waited for below).
  if redis-cli -h 127.0.0.1 -p "${nodes[0]#*:}" cluster info | grep -q 'cluster_slots_assigned:0'; then
    say "creating the redis cluster of ${nodes[*]}"
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null \
      || die "redis-cli --cluster create ${nodes[*]} failed"
  fi
  wait_for "redis cluster" "$dir/node-1/log/redis.log" \
    bash -c "redis-cli -h 127.0.0.1 -p ${nodes[0]#*:} cluster info | grep -q cluster_state:ok"
}

start_redis_topologies() {
  start_redis_ha
  start_redis_cluster
}

stop_redis_topologies() {
  local pidfile pid
  for pidfile in "$STACK"/redis-cluster/node-*/redis.pid "$STACK"/redis-ha/sentinel/sentinel.pid \
      "$STACK"/redis-ha/replica/redis.pid "$STACK"/redis-ha/primary/redis.pid; do
    pid_alive "$pidfile" redis-server || continue
    pid=$(head -n1 "$pidfile")
    say "stopping redis-server (pid $pid, $(basename "$(dirname "$pidfile")"))"
    kill "$pid"
    wait_gone "$pid"
  done
}

redis_topologies_env() { # the env lines of the topologies
  local nodes n
  nodes=$(for n in 1 2 3; do printf '127.0.0.1:%s,' "$(cat "$STACK/ports/redis_cluster_$n")"; done)
  echo "DEVSTACK_REDIS_SENTINEL_URL=redis+sentinel://127.0.0.1:$(cat "$STACK/ports/redis_sentinel")/flowproof/0"
  echo "DEVSTACK_REDIS_CLUSTER_URL=redis+cluster://${nodes%,}"
}

redis_topologies_status() {
  local ha=stopped cluster=stopped
  pid_alive "$STACK/redis-ha/sentinel/sentinel.pid" redis-server \
    && pid_alive "$STACK/redis-ha/primary/redis.pid" redis-server \
    && pid_alive "$STACK/redis-ha/replica/redis.pid" redis-server \
    && ha="running (primary, replica, sentinel)"
  pid_alive "$STACK/redis-cluster/node-1/redis.pid" redis-server \
    && pid_alive "$STACK/redis-cluster/node-2/redis.pid" redis-server \
    && pid_alive "$STACK/redis-cluster/node-3/redis.pid" redis-server \
    && cluster="running (3 primaries)"
  status_line redis-ha "$(cat "$STACK/ports/redis_sentinel" 2>/dev/null || echo -)" "$ha"
  status_line cluster "$(cat "$STACK/ports/redis_cluster_1" 2>/dev/null || echo -)" "$cluster"
}
