# shellcheck shell=bash
# Builds the images of the test cluster, each cached under a content tag.
# Sourced by scripts/cluster; call ensure_images, then use $ETCD_IMAGE,
# $HOST_IMAGE, $REGISTRY_IMAGE and $WORKLOAD_IMAGE.
#
# No registry can be reached, so every image is made from this machine's
# Debian packages: the etcd and registry images from the installed
# etcd-server and docker-registry binaries, the host image from a debootstrap
# rootfs, the workload image (pushed to the cluster's own registry) from
# busybox-static.

IMAGES_LIB_FILE=$(realpath "${BASH_SOURCE[0]}")
FLOTILLA_ROOT=${FLOTILLA_ROOT:-$(cd "$(dirname "$IMAGES_LIB_FILE")/../.." && pwd)}
IMAGES_CACHE_DIR="$FLOTILLA_ROOT/target/cluster-cache"
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ETCD_BINARY=/usr/bin/etcd
REGISTRY_BINARY=/usr/bin/docker-registry
BUSYBOX_BINARY=/bin/busybox
# Where the hosts reach the cluster's registry; their engines trust it
# without TLS.
REGISTRY_ADDRESS=172.31.90.30:5000

# Everything a host needs on top of minbase; part of the host image's tag.
HOST_PACKAGES=(
  systemd systemd-sysv dbus docker.io iproute2 iptables procps
  busybox-static ca-certificates
)

# Units that cannot work in an unprivileged container (no ttys, no udev, no
# kernel config), or that would reach the network on their own (apt timers).
HOST_MASKED_UNITS=(
  getty.target console-getty.service getty@tty1.service
  systemd-udevd.service systemd-udevd-control.socket
  systemd-udevd-kernel.socket systemd-udev-trigger.service
  systemd-udev-settle.service systemd-hwdb-update.service
  systemd-modules-load.service systemd-remount-fs.service
  systemd-firstboot.service systemd-machine-id-commit.service
  systemd-journald-audit.socket systemd-pstore.service
  sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount
  sys-fs-fuse-connections.mount dev-hugepages.mount
  e2scrub_reap.service e2scrub_all.timer
  apt-daily.timer apt-daily-upgrade.timer
)

sha_of_stdin() { sha256sum | cut -c1-16; }

# Host tag: this script (suite, masks, Dockerfile) plus the package list.
host_image_tag() {
  { cat "$IMAGES_LIB_FILE"; printf '%s\n' "${HOST_PACKAGES[@]}"; } | sha_of_stdin
}

# Rootfs key: only what goes into the debootstrap, so that editing the masks
# or the Dockerfile below re-runs the cheap `docker build`, not debootstrap.
rootfs_key() {
  { echo "$DEBIAN_SUITE"; printf '%s\n' "${HOST_PACKAGES[@]}"; declare -f ensure_rootfs_tar; } |
    sha_of_stdin
}

# Tag of an image made from one binary: this script plus the exact binary and
# libraries copied into it, so a Debian security update of the program or of
# libc gives a new image.
binary_image_tag() {
  { cat "$IMAGES_LIB_FILE"; binary_files "$1" | xargs sha256sum; } | sha_of_stdin
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# A binary and the shared objects it loads (libc and ld-linux only for the
# ones used here, but ask ldd rather than assume).
binary_files() {
  echo "$1"
  ldd "$1" 2>/dev/null | grep -o '/[^ ]*' | sort -u || true
}

# Builds a scratch image holding one binary, its libraries and the extra
# files below $ctx/rootfs that the caller's setup function puts there.
#   build_binary_image IMAGE BINARY PACKAGE SETUP INSTRUCTION
# where INSTRUCTION is the Dockerfile's last line (ENTRYPOINT or CMD).
build_binary_image() {
  local image=$1 binary=$2 package=$3 setup=$4 last=$5 ctx f
  [[ -x $binary ]] || { echo "error: $binary missing (apt-get install $package)" >&2; return 1; }
  ctx=$(mktemp -d "$IMAGES_CACHE_DIR/image-ctx.XXXXXX")
  # cp -L: /lib64/ld-linux-x86-64.so.2 is a symlink on merged-/usr systems,
  # and the scratch image needs the real file at the path ldd printed.
  for f in $(binary_files "$binary"); do
    mkdir -p "$ctx/rootfs$(dirname "$f")"
    cp -L "$f" "$ctx/rootfs$f"
  done
  mkdir -p "$ctx/rootfs/tmp"
  chmod 1777 "$ctx/rootfs/tmp"
  "$setup" "$ctx/rootfs"
  printf '%s\n' "FROM scratch" "COPY rootfs/ /" "$last" >"$ctx/Dockerfile"
  echo "building $image" >&2
  local rc=0 log="$IMAGES_CACHE_DIR/build-${image%%:*}.log"
  docker build -t "$image" "$ctx" >"$log" 2>&1 || rc=$?
  rm -rf "$ctx"
  [[ $rc -eq 0 ]] || build_failed "$image" "$log"
}

etcd_setup() { mkdir -p "$1/var/lib/etcd"; }

# Plain HTTP on :5000, storage in the container, deletes allowed; no auth.
registry_setup() {
  mkdir -p "$1/etc/docker/registry" "$1/var/lib/registry"
  cat >"$1/etc/docker/registry/config.yml" <<'CONFIG'
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
http:
  addr: :5000
CONFIG
}

# busybox and the links its applets run through; CMD is the shell.
workload_setup() {
  mkdir -p "$1/bin"
  local applet
  for applet in $("$BUSYBOX_BINARY" --list); do
    [[ $applet == busybox ]] || ln -sf busybox "$1/bin/$applet"
  done
}

# docker build's own output (and the legacy builder's deprecation notice)
# goes to a log; it is shown only when the build fails.
build_failed() {
  echo "error: building $1 failed; last lines of $2:" >&2
  tail -n 15 "$2" >&2
  return 1
}

# Lazily unmounts whatever an interrupted debootstrap left mounted (proc,
# sys) under a directory, so that deleting it cannot reach the host's files.
unmount_under() {
  local dir=$1 mnt
  awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r |
    while read -r mnt; do umount -l "$mnt" || true; done
}

remove_tree() {
  [[ -e $1 ]] || return 0
  unmount_under "$1"
  rm -rf --one-file-system "$1"
}

# Builds target/cluster-cache/rootfs-<key>.tar once; an image rebuild (after
# `docker image rm`, a prune or a change of the last layer) only re-imports it.
ensure_rootfs_tar() {
  local key=$1 tar="$IMAGES_CACHE_DIR/rootfs-$1.tar" dir="$IMAGES_CACHE_DIR/rootfs-$1.d"
  [[ -f $tar ]] && return 0
  command -v debootstrap >/dev/null || PATH="$PATH:/usr/sbin:/sbin"
  remove_tree "$dir"
  local log="$IMAGES_CACHE_DIR/debootstrap.log" include
  include=$(IFS=,; echo "${HOST_PACKAGES[*]}")
  echo "debootstrapping $DEBIAN_SUITE into $dir (log: $log)" >&2
  if ! debootstrap --variant=minbase --include="$include" \
      "$DEBIAN_SUITE" "$dir" "$DEBIAN_MIRROR" >"$log" 2>&1; then
    echo "error: debootstrap failed; last lines of $log:" >&2
    tail -n 15 "$log" >&2
    remove_tree "$dir"
    return 1
  fi
  # Package caches only make the image bigger.
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  tar --numeric-owner --xattrs -C "$dir" -cf "$tar.partial" .
  mv "$tar.partial" "$tar"
  remove_tree "$dir"
  # Older tarballs are dead weight (hundreds of MB each).
  find "$IMAGES_CACHE_DIR" -maxdepth 1 -name 'rootfs-*.tar' ! -name "rootfs-$key.tar" -delete
}

# The last layer: what makes the rootfs boot systemd as PID 1 in a container.
host_dockerfile() {
  local base=$1 unit masks="" daemon_json
  daemon_json='{"storage-driver":"vfs","exec-opts":["native.cgroupdriver=systemd"],'
  daemon_json+="\"insecure-registries\":[\"$REGISTRY_ADDRESS\"]}"
  for unit in "${HOST_MASKED_UNITS[@]}"; do
    masks+=" $unit"
  done
  cat <<DOCKERFILE
FROM $base
# Mask units that fail or make no sense in an unprivileged container.
RUN for u in$masks; do ln -sf /dev/null "/etc/systemd/system/\$u"; done
# The inner engine runs on the outer one's storage, where overlay cannot
# nest, hence vfs. The systemd cgroup driver puts inner containers in scopes
# under this host's own cgroup; with cgroupfs they would land in the
# machine's top-level /docker/ tree, outside the host and its cleanup.
# The cluster's registry speaks plain HTTP.
RUN mkdir -p /etc/docker /etc/flotilla && echo '$daemon_json' >/etc/docker/daemon.json
# Each host bind-mounts its own id; an empty file (never a shared id) keeps
# the image neutral.  dbus reads the same id.
RUN : >/etc/machine-id && rm -f /var/lib/dbus/machine-id && \\
    ln -s /etc/machine-id /var/lib/dbus/machine-id
# flotd.service is bind-mounted at run time; enable it ahead of time.
RUN mkdir -p /etc/systemd/system/multi-user.target.wants && \\
    ln -sf /etc/systemd/system/flotd.service \\
      /etc/systemd/system/multi-user.target.wants/flotd.service
ENV container=docker
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
DOCKERFILE
}

build_host_image() {
  local image=$1 key base
  key=$(rootfs_key)
  base="flotilla-host-base:$key"
  ensure_rootfs_tar "$key"
  if ! image_exists "$base"; then
    echo "importing rootfs as $base" >&2
    docker import "$IMAGES_CACHE_DIR/rootfs-$key.tar" "$base" >/dev/null
  fi
  echo "building $image" >&2
  local log="$IMAGES_CACHE_DIR/build-host.log"
  host_dockerfile "$base" | docker build -t "$image" - >"$log" 2>&1 ||
    build_failed "$image" "$log"
}

# Drops the other tags of one of our repositories after a rebuild; a tag
# still used by a container is kept (docker refuses, and that is fine).
prune_old_tags() {
  local repo=$1 keep=$2 ref
  docker image ls --format '{{.Repository}}:{{.Tag}}' "$repo" | while read -r ref; do
    [[ $ref == "$keep" ]] || docker image rm "$ref" >/dev/null 2>&1 || true
  done
}

ensure_images() {
  mkdir -p "$IMAGES_CACHE_DIR"
  ETCD_IMAGE="flotilla-etcd:$(binary_image_tag "$ETCD_BINARY")"
  REGISTRY_IMAGE="flotilla-registry:$(binary_image_tag "$REGISTRY_BINARY")"
  WORKLOAD_IMAGE="flotilla-workload:$(binary_image_tag "$BUSYBOX_BINARY")"
  HOST_IMAGE="flotilla-host:$(host_image_tag)"
  if ! image_exists "$ETCD_IMAGE"; then
    build_binary_image "$ETCD_IMAGE" "$ETCD_BINARY" etcd-server etcd_setup 'ENTRYPOINT ["/usr/bin/etcd"]'
    prune_old_tags flotilla-etcd "$ETCD_IMAGE"
  fi
  if ! image_exists "$REGISTRY_IMAGE"; then
    build_binary_image "$REGISTRY_IMAGE" "$REGISTRY_BINARY" docker-registry registry_setup \
      'ENTRYPOINT ["/usr/bin/docker-registry", "serve", "/etc/docker/registry/config.yml"]'
    prune_old_tags flotilla-registry "$REGISTRY_IMAGE"
  fi
  if ! image_exists "$WORKLOAD_IMAGE"; then
    build_binary_image "$WORKLOAD_IMAGE" "$BUSYBOX_BINARY" busybox-static workload_setup \
      'CMD ["/bin/sh"]'
    prune_old_tags flotilla-workload "$WORKLOAD_IMAGE"
  fi
  if ! image_exists "$HOST_IMAGE"; then
    build_host_image "$HOST_IMAGE"
    prune_old_tags flotilla-host "$HOST_IMAGE"
    prune_old_tags flotilla-host-base "flotilla-host-base:$(rootfs_key)"
  fi
  export ETCD_IMAGE HOST_IMAGE REGISTRY_IMAGE WORKLOAD_IMAGE
}
