# podtap container images, on Node 24 and Debian bookworm. From the
# repository root (podman or docker alike):
#
#   podman build -t podtap:latest .                      # agent (default): podtap + iproute2 + nftables
#   podman build --target qemu -t podtap-qemu:latest .   # agent + QEMU (x86_64, TCG or KVM)
#
# These are the names init/pod-sidecar.yaml and init/pod-entrypoint.yaml use;
# push them where the cluster pulls from (docs/containers.md).
#
# agent: podtap on its own. The sidecar pattern (init/pod-sidecar.yaml: podtap
#   serves the TAP fds to a VMM in another container), or `podtap up` with
#   --qmp, --ch-api or --persist-tap for a VMM started some other way.
# qemu: the entrypoint pattern (init/pod-entrypoint.yaml): podtap wraps QEMU,
#   `IMAGE qemu-system-x86_64 ... -netdev tap,id=net0,fd={fd} ...`; also the
#   VMM container of the sidecar pattern (`podtap exec -- qemu-system-x86_64 ...`).
#   qemu-system-x86 without its recommendations: the emulator, SeaBIOS, the
#   iPXE option ROMs of the virtio NIC and QEMU's own ROMs (linuxboot for
#   -kernel); no GUI, no qemu-img, no OVMF. KVM is used when the container
#   also gets /dev/kvm, TCG otherwise.
#
# The entrypoint (init/entrypoint.sh) runs `podtap up` without arguments,
# podtap's own commands and options as given, and `podtap run -- ARGS` for
# anything else. Run either image with the NET_ADMIN capability and the tun
# device, in the pod's network namespace (where a container runs anyway), not
# privileged:
#   podman run --cap-add NET_ADMIN --device /dev/net/tun podtap-qemu:latest qemu-system-x86_64 ...
#
# Build arguments:
#   BASE       a Debian bookworm image with Node 24 and npm on PATH; default the
#              official node image. podtap's tests build on a stand-in made
#              from Debian's archive and the npm registry
#              (test/container/base-image.sh), where no image registry is
#              reachable.
#   CA_BUNDLE  behind a TLS-intercepting proxy: the path, inside the build, of
#              a CA bundle that `npm ci` must trust; mount it with
#              `--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro`
#              (podman/buildah) or a secret. Unset, npm uses Node's own CAs.
ARG BASE=node:24-bookworm-slim

FROM ${BASE} AS build
ARG CA_BUNDLE=
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
# The `node` devDependency's install script fetches Node's own package with
# its headers (uv.h, node_api.h), which the addon is compiled against. The
# image's Node runs the build; that second Node stays in this stage. npm ci
# also runs package.json's `prepare` script, which builds only where src/ is
# there: not yet here, so that a change to src/ does not re-run npm ci.
RUN if [ -n "$CA_BUNDLE" ]; then export NPM_CONFIG_CAFILE="$CA_BUNDLE"; fi \
 && npm ci --no-audit --no-fund
COPY src ./src
# One bundled dist/podtap.mjs (rolldown), and the small Node-API addon for the
# TAP syscalls (gcc).
RUN npm run build

# What both images run on: the tools podtap drives. netbase gives
# /etc/protocols, without which nft cannot resolve protocol names such as
# ipv6-icmp in podtap's guard (Debian's slim images lack it).
FROM ${BASE} AS runtime
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 nftables netbase \
 && rm -rf /var/lib/apt/lists/*

# QEMU goes in before podtap's files, so that a change to podtap rebuilds
# only the small layers below it.
FROM runtime AS qemu
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends qemu-system-x86 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/podtap
COPY package.json ./
COPY --from=build /src/dist ./dist
COPY init ./init
RUN ln -s /opt/podtap/init/podtap /usr/local/bin/podtap
VOLUME ["/run/podtap"]
ENTRYPOINT ["/opt/podtap/init/entrypoint.sh"]

# The agent, last: the default target.
FROM runtime AS agent
WORKDIR /opt/podtap
# podtap has no runtime npm dependencies: the image's own Node 24 runs the
# bundle in dist/ (the `node` devDependency is for development machines).
COPY package.json ./
COPY --from=build /src/dist ./dist
COPY init ./init
RUN ln -s /opt/podtap/init/podtap /usr/local/bin/podtap
# The state journal lives in /run/podtap; keep it on a volume shared with a
# restarted container if podtap should adopt a running VM after a restart.
VOLUME ["/run/podtap"]
ENTRYPOINT ["/opt/podtap/init/entrypoint.sh"]
