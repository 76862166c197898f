#!/usr/bin/env bash
# Installs what gas-safety needs on a Debian machine, idempotently:
#   1. Debian packages (Mosquitto, PostgreSQL 15, the TimescaleDB build tools);
#   2. TimescaleDB (Apache build) for PostgreSQL 15, from Debian trixie's source
#      package, through a private apt configuration (the system's sources stay untouched);
#   3. a virtual environment (.venv) with the project installed;
#   4. the console's front-end packages (npm ci from package-lock.json into node_modules) and
#      Debian's chromium, which the console's browser tests drive;
#   5. promtool (checks deploy/prometheus's alert rules), unpacked from Debian's prometheus
#      package into .stack/tools: never installed, so no Prometheus daemon starts here.
# A second run finds everything in place and returns in a few seconds.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state="${GAS_SAFETY_HOME:-$root/.stack}"
pg_version=15
tsdb_version="${TSDB_VERSION:-2.19.3}"
packages=(mosquitto mosquitto-clients postgresql-$pg_version postgresql-client-$pg_version
          postgresql-server-dev-$pg_version cmake gcc make dpkg-dev libssl-dev libkrb5-dev openssl
          chromium fonts-noto-cjk nats-server haproxy)
# Node.js and npm from Debian, unless the machine already has an npm (a Node.js build that
# bundles npm conflicts with Debian's npm package)
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)

log() { printf '\033[1mbootstrap:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31mbootstrap: %s\033[0m\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@";
  else die "need root (or sudo) to run: $*"; fi
}

install_packages() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq || die "apt-get update failed; check the machine's apt sources"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
  # Debian's postgresql-common may create and start a default cluster; we never use it,
  # and leave it alone if it was already there.
}

# The mirror the machine already uses, read from its own apt sources (deb822 or one-line).
debian_mirror() {
  local uri=""
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    uri=$(awk '/^URIs:/ {print $2}' /etc/apt/sources.list.d/*.sources | grep -v -- '-security' | head -n1)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" {for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list \
          | grep -v -- '-security' | head -n1)
  fi
  [ -n "$uri" ] || die "cannot find a Debian mirror in /etc/apt/sources.list{,.d}"
  echo "$uri"
}

install_timescaledb() {
  local pkglibdir
  pkglibdir=$(/usr/lib/postgresql/$pg_version/bin/pg_config --pkglibdir)
  if [ -f "$pkglibdir/timescaledb.so" ]; then return 0; fi
  log "building TimescaleDB $tsdb_version (Apache build) for PostgreSQL $pg_version"
  local apt_dir="$state/apt" build="$state/build"
  mkdir -p "$apt_dir/lists/partial" "$build"
  local mirror keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  mirror=$(debian_mirror)
  echo "deb-src [signed-by=$keyring] $mirror trixie main" > "$apt_dir/sources.list"
  local apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
                  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
  apt-get "${apt_opts[@]}" update -qq || die "apt-get update of the private trixie deb-src failed"
  # the version trixie carries (2.19.3 when this was written); the build is checked below
  (cd "$build" && apt-get "${apt_opts[@]}" source --download-only -qq timescaledb) \
    || die "cannot download the timescaledb source package"
  local dsc
  dsc=$(ls -t "$build"/timescaledb_*.dsc | head -n1)
  rm -rf "$build/src"
  dpkg-source --no-check -x "$dsc" "$build/src" >/dev/null || die "cannot unpack $dsc"
  (cd "$build/src" && PATH="/usr/lib/postgresql/$pg_version/bin:$PATH" ./bootstrap \
      -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF -DAPACHE_ONLY=ON \
      -DPG_CONFIG="/usr/lib/postgresql/$pg_version/bin/pg_config" >"$build/configure.log" 2>&1) \
    || die "TimescaleDB configure failed; see $build/configure.log"
  as_root make -C "$build/src/build" -j"$(nproc)" install >"$build/make.log" 2>&1 \
    || die "TimescaleDB build failed; see $build/make.log"
  [ -f "$pkglibdir/timescaledb.so" ] || die "TimescaleDB installed, but $pkglibdir/timescaledb.so is missing"
  log "TimescaleDB installed into $pkglibdir"
}

install_venv() {
  local venv="$root/.venv" stamp="$root/.venv/.gas-safety-installed"
  local want
  want=$(cat "$root/pyproject.toml" "$root/requirements.lock" 2>/dev/null | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  log "creating the virtual environment .venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" || die "python3 -m venv failed (install python3-venv)"
  # (some machines' pip configuration names extra local indexes that may be absent: quiet)
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$root/requirements.lock" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
  "$venv/bin/python" -c "import msgspec, numpy, psycopg, fastapi, paho.mqtt, pytest" \
    || die "pip install -r requirements.lock failed"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -e "$root" \
    || die "pip install -e . failed"
  echo "$want" > "$stamp"
}

# The console's pinned front-end packages (Swagger UI, uPlot), served by the API from
# node_modules; --ignore-scripts: nothing runs at install, and nothing is fetched at run time.
install_assets() {
  local stamp="$root/node_modules/.gas-safety-installed" want
  want=$(sha256sum "$root/package-lock.json" | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  log "installing the console's front-end packages (npm ci)"
  (cd "$root" && SCARF_ANALYTICS=false npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) \
    || die "npm ci failed (the npm registry must be reachable once, at install)"
  echo "$want" > "$stamp"
}

# The detection core's compiled engine (numba) is compiled once into gateway/__pycache__;
# doing it here keeps the first gateway start, test or demo from paying for it (≈ 7 s).
warm_kernels() {
  "$root/.venv/bin/python" -c "from gateway.core import compiled; compiled.warm_up()" \
    || die "the detection kernels did not compile (see above)"
}

install_promtool() {
  local dir="$root/.stack/tools/prometheus"
  if [ -x "$dir/usr/bin/promtool" ]; then return 0; fi
  local tmp
  tmp=$(mktemp -d)
  chmod 755 "$tmp"  # apt's download user writes there
  (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null) \
    || die "apt-get download prometheus failed (promtool, for the alert rules' test)"
  mkdir -p "$dir"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$dir" || die "cannot unpack the prometheus package"
  rm -rf "$tmp" "$dir/usr/bin/prometheus" "$dir/usr/share"  # promtool is all we use
  log "promtool unpacked into $dir/usr/bin"
}

install_packages
install_timescaledb
install_venv
install_assets
install_promtool
warm_kernels
