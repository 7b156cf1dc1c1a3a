#!/bin/sh
# Installs everything podtap's demo, tests and benchmarks need on a fresh
# Debian 12 machine, as root: Debian packages, then npm dependencies (which
# bring Node 24 itself). Quick when everything is already there.
set -eu
cd "$(dirname "$0")/.."

PACKAGES="iproute2 nftables ebtables qemu-system-x86 busybox-static linux-image-amd64 \
containernetworking-plugins isc-dhcp-client dhcpcd-base kea-admin dnsmasq-base tcpdump \
cpio iputils-ping procps util-linux psmisc gcc libc6-dev"
# The container tests (test/container) and the data-path benchmark. Rootful
# podman with runc (crun cannot drive hybrid cgroups), netavark + aardvark-dns
# for its networks (netavark 1.4 programs iptables), catatonit for the pause
# image of pods (`podman kube play`), mmdebstrap for the stand-in base image
# (test/container/base-image.sh), passt for the benchmark. Rootless helpers
# (uidmap, slirp4netns, fuse-overlayfs) are not needed: everything runs as root.
PACKAGES="$PACKAGES podman runc netavark aardvark-dns iptables catatonit mmdebstrap passt"

if [ "$(id -u)" != 0 ]; then
  echo "test/install.sh: run as root (podtap's tests create network namespaces and install Debian packages)" >&2
  exit 1
fi

# One dpkg-query for the whole list; a package it doesn't know is missing too.
installed=" $(dpkg-query -W -f='${Package} ${Status}\n' $PACKAGES 2>/dev/null | sed -n 's/ install ok installed$//p' | tr '\n' ' ') "
missing=""
for p in $PACKAGES; do
  case $installed in *" $p "*) ;; *) missing="$missing $p" ;; esac
done
if [ -n "$missing" ]; then
  echo "test/install.sh: installing Debian packages:$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends $missing
fi

# npm ci when node_modules is missing or older than the lock file.
if [ ! -x node_modules/.bin/node ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "test/install.sh: installing npm dependencies" >&2
  npm ci --no-audit --no-fund
fi

# Compile src/ to dist/, which init/podtap runs (tsc only rewrites what changed).
npm run --silent build
