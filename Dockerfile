# podtap container image: Node 24 on Debian slim with iproute2 and nftables.
#
# Run it with the NET_ADMIN capability and the tun device, in the pod's
# network namespace (that is where a container runs anyway):
#   docker run --cap-add NET_ADMIN --device /dev/net/tun IMAGE run -- qemu-system-x86_64 ...
# In Kubernetes see init/pod-entrypoint.yaml and init/pod-sidecar.yaml.
FROM node:24-bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY src ./src
# One bundled dist/podtap.mjs, and the small Node-API addon for the TAP syscalls.
RUN npm run build

FROM node:24-bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 nftables \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/podtap
# podtap has no runtime npm dependencies: the image's own Node 24 runs the
# compiled dist/ (the `node` devDependency is for development machines).
COPY package.json ./
COPY --from=build /src/dist ./dist
COPY init ./init
RUN ln -s /opt/podtap/init/podtap /usr/local/bin/podtap

# The state journal lives in /run/podtap; keep it on a volume shared with a
# restarted container if podtap should adopt a running VM after a restart.
VOLUME ["/run/podtap"]
ENTRYPOINT ["/opt/podtap/init/entrypoint.sh"]
