#!/usr/bin/env bash
# A local single-node Apache Kafka broker (KRaft: broker and controller in one JVM), run from jars
# that Maven resolves. Usage: kafka.sh fetch|start|stop|status [--port N] [--controller-port N]
#                                      [--data DIR] [--logs DIR]
# Each flag has an environment twin (KAFKA_PORT, KAFKA_CONTROLLER_PORT, KAFKA_DATA, KAFKA_LOGS); see
# README.md beside this file. LOGS holds everything about one running broker (its log, the rendered
# server.properties and the pid file), so brokers with different ports and folders run side by side.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml")

PORT=${KAFKA_PORT:-9092}
CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-}
DATA=${KAFKA_DATA:-$ROOT/var/kafka/data}
LOGS=${KAFKA_LOGS:-$ROOT/var/kafka/logs}
PARTITIONS=${KAFKA_PARTITIONS:-4}
HEAP=${KAFKA_HEAP:-512m}
START_TIMEOUT_S=${KAFKA_START_TIMEOUT_S:-90}
STOP_TIMEOUT_S=${KAFKA_STOP_TIMEOUT_S:-30}
LIBS=${KAFKA_LIBS:-$ROOT/.cache/kafka-libs/$KAFKA_VERSION}

say() { printf 'kafka: %s\n' "$*" >&2; }
die() { printf 'kafka: error: %s\n' "$*" >&2; exit 1; }
usage() {
  echo "usage: kafka.sh fetch|start|stop|status [--port N] [--controller-port N] [--data DIR] [--logs DIR]" >&2
  exit 2
}

absolute() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }

require_java() {
  command -v java >/dev/null || die "Java 17+ is needed to run the broker: install a JDK (e.g. apt-get install openjdk-17-jre-headless)"
  local major
  major=$(java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}')
  [ "${major:-0}" -ge 17 ] || die "Java 17+ is needed to run the broker, found Java ${major:-unknown}: install a newer JDK"
}

# Copies the broker's jars out of Maven's cache (~/.m2, filled on the first run) into LIBS. A stamp
# holding the pom's hash makes the second run instant and a pom change refetch.
fetch() {
  local want stamp="$LIBS/.fetched"
  want=$(sha256sum "$HERE/pom.xml" | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  command -v mvn >/dev/null || die "Maven is needed to resolve the broker's jars: install maven (e.g. apt-get install maven)"
  say "resolving Kafka $KAFKA_VERSION jars with Maven (first run only)..."
  local tmp="$LIBS.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$(dirname "$LIBS")"
  if ! mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$tmp.log" 2>&1; then
    cat "$tmp.log" >&2
    rm -rf "$tmp" "$tmp.log"
    die "Maven could not resolve the jars listed in $HERE/pom.xml (its output is above)"
  fi
  rm -f "$tmp.log"
  echo "$want" >"$tmp/.fetched"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  say "$(find "$LIBS" -name '*.jar' | wc -l) jars in $LIBS"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The pid in LOGS/kafka.pid if that process is alive and is the broker started with this LOGS folder
# (a pid file left by a crash may name a pid reused by an unrelated process).
running_pid() {
  local pid
  [ -f "$LOGS/kafka.pid" ] || return 1
  pid=$(cat "$LOGS/kafka.pid")
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "kafka.Kafka $LOGS/server.properties" || return 1
  printf '%s' "$pid"
}

log_tail() {
  local f
  for f in "$LOGS/format.log" "$LOGS/kafka.out" "$LOGS/server.log"; do
    [ -s "$f" ] && { printf -- '--- last lines of %s\n' "$f" >&2; tail -n 25 "$f" >&2; }
  done
  return 0
}

render_config() {
  sed -e "s|@PORT@|$PORT|g" -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" \
    -e "s|@DATA@|$DATA|g" -e "s|@PARTITIONS@|$PARTITIONS|g" \
    "$HERE/server.properties.template" >"$LOGS/server.properties"
}

# Formats DATA once as a fresh single-voter KRaft cluster; a formatted folder keeps its cluster id.
format_storage() {
  [ -f "$DATA/meta.properties" ] && return 0
  local cluster_id
  # 16 random bytes in base64url, as Kafka writes ids; never starting with '-' (read as a flag).
  cluster_id=-
  while [ "${cluster_id:0:1}" = - ]; do
    cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
  done
  say "formatting $DATA (cluster id $cluster_id)"
  # A short-lived JVM: the C1 compiler and serial GC start it faster on a busy machine.
  java -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$LIBS/*" -Dlog4j2.configurationFile="$HERE/log4j2.properties" -Dkafka.logs.dir="$LOGS" \
    kafka.tools.StorageTool format --standalone --cluster-id "$cluster_id" \
    --config "$LOGS/server.properties" >"$LOGS/format.log" 2>&1 \
    || { log_tail; die "formatting $DATA failed"; }
}

start() {
  require_java
  fetch
  local pid
  if pid=$(running_pid); then
    say "already running (pid $pid) on 127.0.0.1:$PORT"
    return 0
  fi
  rm -f "$LOGS/kafka.pid"
  port_open "$PORT" && die "port $PORT on 127.0.0.1 is taken by another process: choose another with --port or KAFKA_PORT"
  port_open "$CONTROLLER_PORT" && die "controller port $CONTROLLER_PORT on 127.0.0.1 is taken: choose another with --controller-port"
  mkdir -p "$DATA" "$LOGS"
  render_config
  format_storage
  : >"$LOGS/kafka.out"
  # setsid: the broker outlives the shell that started it and ignores its Ctrl-C; `stop` ends it.
  (
    exec setsid java -Xms128m -Xmx"$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$HERE/log4j2.properties" -Dkafka.logs.dir="$LOGS" \
      -cp "$LIBS/*" kafka.Kafka "$LOGS/server.properties"
  ) </dev/null >>"$LOGS/kafka.out" 2>&1 &
  pid=$!
  echo "$pid" >"$LOGS/kafka.pid"
  say "starting on 127.0.0.1:$PORT (pid $pid, data $DATA, logs $LOGS)"
  local deadline=$((SECONDS + START_TIMEOUT_S))
  # Up means the broker logged that it finished starting and its listener accepts connections.
  until grep -qs 'Kafka Server started' "$LOGS/server.log" && port_open "$PORT"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$LOGS/kafka.pid"
      log_tail
      die "the broker exited during start-up"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log_tail
      die "the broker was not up on 127.0.0.1:$PORT after ${START_TIMEOUT_S}s (still running as pid $pid; 'kafka.sh stop' ends it)"
    fi
    sleep 0.2
  done
  say "up on 127.0.0.1:$PORT"
}

stop() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$LOGS/kafka.pid"
    say "not running (logs $LOGS)"
    return 0
  fi
  say "stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT_S))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "still running after ${STOP_TIMEOUT_S}s: sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$LOGS/kafka.pid"
  say "stopped"
}

status() {
  local pid
  if pid=$(running_pid); then
    # What the running broker was started with, not this call's defaults.
    local listening data
    listening=$(sed -n 's|^advertised.listeners=PLAINTEXT://||p' "$LOGS/server.properties")
    data=$(sed -n 's|^log.dirs=||p' "$LOGS/server.properties")
    say "running (pid $pid) on $listening, data $data, logs $LOGS"
  else
    say "not running (logs $LOGS)"
    return 3
  fi
}

[ $# -ge 1 ] || usage
command=$1
shift
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT=${2:?--port needs a value}; shift 2 ;;
    --controller-port) CONTROLLER_PORT=${2:?--controller-port needs a value}; shift 2 ;;
    --data) DATA=${2:?--data needs a folder}; shift 2 ;;
    --logs) LOGS=${2:?--logs needs a folder}; shift 2 ;;
    *) die "unknown argument '$1' (expected --port, --controller-port, --data or --logs)" ;;
  esac
done
[[ "$PORT" =~ ^[0-9]+$ ]] && [ "$PORT" -ge 1 ] && [ "$PORT" -le 65534 ] || die "port must be 1-65534, got '$PORT'"
CONTROLLER_PORT=${CONTROLLER_PORT:-$((PORT + 1))}
[[ "$CONTROLLER_PORT" =~ ^[0-9]+$ ]] && [ "$CONTROLLER_PORT" != "$PORT" ] \
  || die "controller port must be a number other than the broker port, got '$CONTROLLER_PORT'"
DATA=$(absolute "$DATA")
LOGS=$(absolute "$LOGS")

case "$command" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) usage ;;
esac
