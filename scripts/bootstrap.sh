#!/usr/bin/env bash
# Creates .venv and installs the package with pinned versions (requirements.lock), once.
# Idempotent: a stamp file records the hash of pyproject.toml + requirements.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# `bootstrap.sh --fuzz`: the above, then the fuzzing tools of requirements-fuzz.lock (for `make fuzz` only),
# through the same wheelhouse and with their own stamp.
if [ "${1:-}" = "--fuzz" ]; then
  scripts/bootstrap.sh
  want=$(sha256sum requirements-fuzz.lock | cut -c1-16)
  stamp=.venv/.installed-fuzz
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && exit 0
  WHEELS=${RECSIM_WHEELHOUSE:-$HOME/.cache/recsim-stream/wheels}
  if ! .venv/bin/python -m pip install --quiet --no-index --find-links "$WHEELS" -r requirements-fuzz.lock 2>/dev/null; then
    say "downloading the fuzzing wheels into $WHEELS (once per machine)"
    .venv/bin/python -m pip download --progress-bar on --dest "$WHEELS" -r requirements-fuzz.lock
    .venv/bin/python -m pip install --quiet --no-index --find-links "$WHEELS" -r requirements-fuzz.lock
  fi
  echo "$want" > "$stamp"
  say "fuzzing tools ready"
  exit 0
fi

PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || die "Python 3.11+ is required: install python3 (e.g. apt-get install python3 python3-venv)"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python 3.11+ is required, found $("$PY" --version 2>&1): install a newer python3"
command -v java >/dev/null || die "Java 17+ is required for the Kafka broker: install a JDK (e.g. apt-get install openjdk-17-jre-headless)"
jv=$(java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}')
[ "${jv:-0}" -ge 17 ] || die "Java 17+ is required for the Kafka broker, found Java ${jv:-unknown}"
command -v mvn >/dev/null || die "Maven is required to resolve the Kafka broker's jars: install maven (e.g. apt-get install maven)"

want=$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)
stamp=.venv/.installed
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
# Every pinned wheel is kept in a wheelhouse outside the repo, so a fresh clone on the same machine
# installs offline: torch alone with its CUDA libraries is ~3 GB and must never download twice.
WHEELS=${RECSIM_WHEELHOUSE:-$HOME/.cache/recsim-stream/wheels}
BUILD_TOOLS="setuptools==84.2.1 wheel==0.48.0"
mkdir -p "$WHEELS"
if [ ! -x .venv/bin/python ]; then
  say "creating the virtualenv in .venv"
  "$PY" -m venv .venv
fi
pip_offline() { .venv/bin/python -m pip install --quiet --no-index --find-links "$WHEELS" "$@"; }
if ! pip_offline $BUILD_TOOLS 2>/dev/null || ! pip_offline -r requirements.lock 2>/dev/null; then
  say "downloading the pinned wheels into $WHEELS (once per machine; the first time ~3 GB: torch from PyPI"
  say "ships CUDA libraries, unused here)"
  .venv/bin/python -m pip download --progress-bar on --dest "$WHEELS" $BUILD_TOOLS -r requirements.lock
  say "installing Python packages into .venv"
  pip_offline $BUILD_TOOLS
  pip_offline -r requirements.lock
fi
pip_offline --no-deps -e .
echo "$want" > "$stamp"
say "python packages ready"
