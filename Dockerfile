# podtap container image: Node 24 on Debian slim with iproute2 and nftables.
#
# Run it with the NET_ADMIN capability and the tun device, in the pod's
# network namespace (that is where a container runs anyway):
#   docker run --cap-add NET_ADMIN --device /dev/net/tun IMAGE run -- qemu-system-x86_64 ...
# In Kubernetes see init/pod-entrypoint.yaml and init/pod-sidecar.yaml.
FROM node:24-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npx tsc -p tsconfig.build.json && touch dist/.built

FROM node:24-bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 nftables \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/podtap
COPY package.json package-lock.json ./
# Production dependencies only: the image's own Node 24 runs podtap, so the
# `node` devDependency (used on development machines) is not needed here.
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /src/dist ./dist
COPY init ./init
RUN ln -s /opt/podtap/init/podtap /usr/local/bin/podtap

# The state journal lives in /run/podtap; keep it on a volume shared with a
# restarted container if podtap should adopt a running VM after a restart.
VOLUME ["/run/podtap"]
ENTRYPOINT ["/opt/podtap/init/entrypoint.sh"]
