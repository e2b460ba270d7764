# shellcheck shell=bash
# Host dependencies of the test cluster. Sourced by scripts/cluster.
#
# The cluster has to come up on a bare Debian bookworm machine, so everything
# it needs is installed from Debian's own packages: nothing here downloads a
# prebuilt binary or pulls an image (there is no registry to pull from).

# command -> Debian package that provides it
declare -A FLOTILLA_DEP_PACKAGES=(
  [protoc]=protobuf-compiler
  [debootstrap]=debootstrap
  [etcd]=etcd-server
  [etcdctl]=etcd-client
  [docker]=docker.io
)

# file -> Debian package that provides it, for what is not a command: the
# well-known .proto files protoc imports while etcd-client builds, and the
# binaries copied into the registry and workload images.
declare -A FLOTILLA_DEP_FILES=(
  [/usr/include/google/protobuf/descriptor.proto]=libprotobuf-dev
  [/usr/bin/docker-registry]=docker-registry
  [/bin/busybox]=busybox-static
)

deps_log_dir() {
  local root=${FLOTILLA_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
  printf '%s/target/cluster-cache\n' "$root"
}

# Runs a command as root, through sudo when we are not root already.
as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    echo "error: need root (or sudo) to run: $*" >&2
    return 1
  fi
}

# debootstrap and dockerd live in /usr/sbin, which a non-root PATH may lack.
has_cmd() {
  command -v "$1" >/dev/null || [[ -x /usr/sbin/$1 || -x /usr/bin/$1 ]]
}

install_missing_packages() {
  local cmd missing=()
  for cmd in "${!FLOTILLA_DEP_PACKAGES[@]}"; do
    has_cmd "$cmd" || missing+=("${FLOTILLA_DEP_PACKAGES[$cmd]}")
  done
  local file
  for file in "${!FLOTILLA_DEP_FILES[@]}"; do
    [[ -e $file ]] || missing+=("${FLOTILLA_DEP_FILES[$file]}")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  echo "installing missing packages: ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# Starts the Docker engine when `docker info` fails: through systemd when the
# machine runs it, otherwise as a background dockerd (CI and minimal images
# have no init system that would start it for us).
ensure_docker_daemon() {
  docker info >/dev/null 2>&1 && return 0
  if [[ -S /var/run/docker.sock ]] && pidof dockerd >/dev/null; then
    echo "error: dockerd is running but 'docker info' fails:" >&2
    docker info 2>&1 | tail -n 3 >&2
    return 1
  fi
  if [[ -d /run/systemd/system ]]; then
    echo "starting docker.service" >&2
    as_root systemctl start docker
  else
    local log
    log="$(deps_log_dir)/dockerd.log"
    mkdir -p "$(dirname "$log")"
    echo "starting dockerd in the background (log: $log)" >&2
    as_root env PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH" \
      nohup dockerd >>"$log" 2>&1 </dev/null &
    disown || true
  fi
  wait_for_docker "${log:-journalctl -u docker}"
}

wait_for_docker() {
  local where=$1 i
  for ((i = 0; i < 60; i++)); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "error: docker engine did not come up within 60s (see $where)" >&2
  return 1
}

ensure_deps() {
  install_missing_packages
  ensure_docker_daemon
}
