// Real pod network namespaces of each shape podtap has to handle, each with
// its own "node" namespace standing in for the host, so nothing ever touches
// the root namespace:
//
//   ptp        CNI ptp + host-local        10.22.0.2/16, /16 via gateway
//   bridge     CNI bridge + host-local     10.21.0.2/16 on a cni0 bridge
//   calico     by hand, Calico's layout    10.23.5.7/32, gw 169.254.1.1
//   dualstack  CNI ptp, v4 + v6 ranges     10.24.0.2/16 + fd00:24::2/64
//   jumbo      by hand                     MTU 9000, two addresses, metric
//                                          route, permanent neighbour
//   multi      four pod interfaces, as Multus would leave them:
//              eth0  CNI ptp + host-local     10.27.0.2/16, the default route
//              net1  CNI bridge, isGateway    10.28.0.2/24 on a cni-n1 bridge,
//                    false                    no route but the connected one
//              net2  CNI macvlan, mode        10.29.0.2/24; its parent is a
//                    bridge                   veth in the node namespace
//              net3  by hand                  an L2-only veth, no address
//
// SHAPES are the single-interface shapes (eth0 only); ALL_SHAPES adds
// multi. Every shape describes its interfaces in `nics`, in the VM's NIC
// order, and `nicArgs()` gives the --interface options that select them
// (none for a single interface: podtap picks the only candidate).
//
// The CNI plugins run inside the node namespace (`ip netns exec <node>`) so
// their host-side veth, bridge and sysctl writes land there. host-local keeps
// its leases under the node's state directory, which goes with the node.
//
//   const cleanup = new Cleanup();
//   afterAll(() => cleanup.cleanupAll());
//   const pod = await makePod('calico', { cleanup });
//   await pod.run(['init/podtap', 'inspect']);   // inside the pod, see netns.ts

import { join } from 'node:path';
import {
  Cleanup,
  createNetns,
  netnsExists,
  netnsPath,
  nsStateDir,
  podArgv,
  randomHex,
  renderResolvConf,
  run,
  runInPod,
  setNetnsEtcFile,
  type ResolvConf,
  type RunOptions,
  type RunResult,
} from './netns.ts';
import { waitSettled } from './snapshot.ts';

export type Shape = 'ptp' | 'bridge' | 'calico' | 'dualstack' | 'jumbo' | 'multi';
/** The single-interface shapes. */
export const SHAPES: readonly Shape[] = ['ptp', 'bridge', 'calico', 'dualstack', 'jumbo'];
/** Every shape, the multi-interface one last. */
export const ALL_SHAPES: readonly Shape[] = [...SHAPES, 'multi'];

/** podtap's data paths. */
export type Datapath = 'bridge' | 'redirect';
export const DATAPATHS: readonly Datapath[] = ['redirect', 'bridge'];

export const CNI_BIN = '/usr/lib/cni';

export type Family = 'inet' | 'inet6';

/** An address on eth0, as `ip -j addr` reports it (lifetimes are all forever). */
export interface PodAddress {
  family: Family;
  local: string;
  prefixlen: number;
  broadcast?: string;
  scope: string;
  /** Kernel's IFA_F_SECONDARY: a second address in the same subnet. */
  secondary?: true;
}

/**
 * A main-table route through eth0, with ip -j's field names and its habit of
 * leaving defaults out: no `protocol` means boot, no `scope` means global.
 */
export interface PodRoute {
  family: Family;
  dst: string;
  gateway?: string;
  dev: string;
  protocol?: string;
  scope?: string;
  prefsrc?: string;
  metric?: number;
  flags?: string[];
}

export interface PodNeighbour {
  family: Family;
  dst: string;
  lladdr: string;
}

/** What the pod's eth0 holds, which is what the VM behind podtap should end up with. */
export interface PodExpect {
  mac: string;
  mtu: number;
  /** Everything but IPv6 link-local, in kernel order. */
  addresses: PodAddress[];
  /** Main table, through eth0, both families, sorted by sortRoutes(); IPv6 fe80::/64 left out. */
  routes: PodRoute[];
  /** Permanent entries on eth0. */
  neighbours: PodNeighbour[];
  gateway?: string;
  gateway6?: string;
  dns: ResolvConf;
  hostname: string;
}

/** One pod interface, as the VM should get it. */
export interface PodNic {
  ifname: string;
  /** The link kind podtap reads ("veth" or "macvlan"). */
  kind: 'veth' | 'macvlan';
  /** What made it: a CNI plugin's name, or "hand". */
  origin: string;
  mac: string;
  mtu: number;
  /** Its first IPv4 address and prefix; none for an L2-only interface. */
  ip?: string;
  prefix?: number;
  /**
   * The prefix podtap hands the VM: the pod's own where the pod has a
   * connected route for the subnet, else /32 (CNI ptp deletes that route).
   */
  handedPrefix?: number;
  /** The IPv4 default gateway: on the NIC that carries the default route only. */
  gateway?: string;
  defaultRoute: boolean;
  /** An IPv4 address in the node namespace the pod reaches through this interface. */
  nodeAddr?: string;
}

export interface Pod {
  shape: Shape;
  /** The pod interfaces in NIC order; eth0 first. */
  nics: PodNic[];
  /**
   * The --interface options that give podtap the interfaces a data path can
   * carry (a macvlan only with redirect), in NIC order; [] where podtap
   * finds the only candidate itself.
   */
  nicArgs(datapath?: Datapath): string[];
  /** The NICs `nicArgs(datapath)` selects. */
  nicsFor(datapath?: Datapath): PodNic[];
  /** Namespace standing in for the host (the CNI host side lives here). */
  node: string;
  /** The pod's network namespace. */
  pod: string;
  ifname: 'eth0';
  /** Host-side end of the pod's veth, in `node`. */
  hostIfname: string;
  /** CNI network name (CNI shapes); host-local state is <node state dir>/cni/<name>. */
  cniNetwork?: string;
  /** IPv4 address in `node` that the pod can ping. */
  nodeAddr: string;
  /** IPv6 address in `node` that the pod can ping (dualstack). */
  nodeAddr6?: string;
  /** The pod's IPv4 default gateway. */
  gateway?: string;
  gateway6?: string;
  podIP: string;
  prefix: number;
  /** eth0's prefix as podtap hands it to the VM (see PodNic.handedPrefix). */
  handedPrefix: number;
  podIP6?: string;
  prefix6?: number;
  expect: PodExpect;
  resolvConf: ResolvConf;
  /** The resolv.conf text the pod sees at /etc/resolv.conf. */
  resolvConfText: string;
  hostname: string;
  /** argv that runs `argv` inside the pod (netns, /etc files, hostname). */
  argv(argv: readonly string[]): string[];
  /** Runs `argv` inside the pod to completion. */
  run(argv: readonly string[], opts?: RunOptions): Promise<RunResult>;
  /** Deletes both namespaces and everything that belongs to them; idempotent. */
  cleanup(): Promise<void>;
}

export interface MakePodOptions {
  /** Also registers the pod's cleanup here. */
  cleanup?: Cleanup;
  hostname?: string;
  /** Kubernetes namespace, for the DNS search list. Default "default". */
  namespace?: string;
  /** Default true: wait for IPv6 DAD and link states in both namespaces. */
  settle?: boolean;
}

// ---------------------------------------------------------------------------
// Observation

type Json = Record<string, unknown>;

async function ipJson(ns: string, args: readonly string[]): Promise<Json[]> {
  const r = await run('ip', ['-n', ns, '-j', ...args]);
  return r.stdout.trim() ? (JSON.parse(r.stdout) as Json[]) : [];
}

function familyOf(addr: string): Family {
  return addr.includes(':') ? 'inet6' : 'inet';
}

const byText = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** Canonical order for route lists: family, destination, metric. */
export function sortRoutes<T extends PodRoute>(routes: readonly T[]): T[] {
  return [...routes].sort(
    (a, b) => byText(a.family, b.family) || byText(a.dst, b.dst) || (a.metric ?? 0) - (b.metric ?? 0),
  );
}

/** Reads eth0 (or `ifname`) of a namespace in the shapes PodExpect uses. */
export async function observePod(
  ns: string,
  ifname = 'eth0',
): Promise<Pick<PodExpect, 'mac' | 'mtu' | 'addresses' | 'routes' | 'neighbours'>> {
  const [links, r4, r6, neigh] = await Promise.all([
    ipJson(ns, ['addr', 'show', 'dev', ifname]),
    ipJson(ns, ['-4', 'route', 'show', 'table', 'main', 'dev', ifname]),
    ipJson(ns, ['-6', 'route', 'show', 'table', 'main', 'dev', ifname]),
    ipJson(ns, ['neigh', 'show', 'nud', 'permanent', 'dev', ifname]),
  ]);
  const link = links[0];
  if (!link) throw new Error(`${ns}: no ${ifname}`);
  const addresses = ((link.addr_info ?? []) as Json[])
    .filter((a) => !(a.family === 'inet6' && a.scope === 'link'))
    .map((a): PodAddress => ({
      family: a.family as Family,
      local: String(a.local),
      prefixlen: Number(a.prefixlen),
      ...(a.broadcast !== undefined ? { broadcast: String(a.broadcast) } : {}),
      scope: String(a.scope),
      ...(a.secondary === true ? { secondary: true as const } : {}),
    }));
  // `dev X` filters the output, and ip then leaves `dev` out of each route.
  const route = (family: Family) => (r: Json): PodRoute => ({
    family,
    dst: String(r.dst),
    ...(r.gateway !== undefined ? { gateway: String(r.gateway) } : {}),
    dev: ifname,
    ...(r.protocol !== undefined ? { protocol: String(r.protocol) } : {}),
    ...(r.scope !== undefined ? { scope: String(r.scope) } : {}),
    ...(r.prefsrc !== undefined ? { prefsrc: String(r.prefsrc) } : {}),
    ...(r.metric !== undefined ? { metric: Number(r.metric) } : {}),
    ...(Array.isArray(r.flags) && r.flags.length ? { flags: r.flags as string[] } : {}),
  });
  const routes = sortRoutes([
    ...r4.map(route('inet')),
    ...r6.map(route('inet6')).filter((r) => r.dst !== 'fe80::/64'),
  ]);
  return {
    mac: String(link.address),
    mtu: Number(link.mtu),
    addresses,
    routes,
    neighbours: neigh.map((n) => ({ family: familyOf(String(n.dst)), dst: String(n.dst), lladdr: String(n.lladdr) })),
  };
}

async function linkMac(ns: string, ifname: string): Promise<string> {
  const [l] = await ipJson(ns, ['link', 'show', 'dev', ifname]);
  if (!l) throw new Error(`${ns}: no ${ifname}`);
  return String(l.address);
}

// ---------------------------------------------------------------------------
// CNI

interface CniResult {
  interfaces?: { name: string; mac?: string; sandbox?: string }[];
  ips?: { interface?: number; address: string; gateway?: string }[];
}

async function cni(
  command: 'ADD' | 'DEL',
  conf: Json & { type: string },
  node: string,
  pod: string,
  containerId: string,
  ifname: string,
): Promise<CniResult> {
  const r = await run('ip', ['netns', 'exec', node, join(CNI_BIN, conf.type)], {
    input: JSON.stringify(conf),
    env: {
      CNI_COMMAND: command,
      CNI_CONTAINERID: containerId,
      CNI_NETNS: netnsPath(pod),
      CNI_IFNAME: ifname,
      CNI_PATH: CNI_BIN,
    },
    reject: false,
  });
  if (r.exitCode !== 0) {
    // Plugins report errors as JSON on stdout.
    throw new Error(`CNI ${conf.type} ${command} failed (${r.exitCode}): ${r.stdout.trim()} ${r.stderr.trim()}`);
  }
  return r.stdout.trim() ? (JSON.parse(r.stdout) as CniResult) : {};
}

interface Ctx {
  id: string;
  node: string;
  pod: string;
  own: Cleanup;
}

const cniNetworkName = (ctx: Ctx, ifname = 'eth0'): string => `podtap-${ctx.id}${ifname === 'eth0' ? '' : `-${ifname}`}`;

/** Runs CNI ADD and registers the matching DEL (before the namespaces go). */
async function cniAdd(ctx: Ctx, plugin: string, fields: Json, ranges: { subnet: string }[][], routes: string[], ifname = 'eth0'): Promise<CniResult> {
  const conf = {
    cniVersion: '1.0.0',
    // host-local keeps one directory per network name: unique per pod and
    // interface, and under the node's state dir rather than
    // /var/lib/cni/networks.
    name: cniNetworkName(ctx, ifname),
    type: plugin,
    ...fields,
    ipam: {
      type: 'host-local',
      dataDir: join(nsStateDir(ctx.node), 'cni'),
      ranges,
      routes: routes.map((dst) => ({ dst })),
    },
  };
  ctx.own.defer(`CNI ${plugin} DEL ${ctx.pod}`, async () => {
    // Without the node there is nothing to release: its leases lived in the
    // node's state dir, which went with it.
    if (netnsExists(ctx.node)) await cni('DEL', conf, ctx.node, ctx.pod, ctx.id, ifname);
  });
  return cni('ADD', conf, ctx.node, ctx.pod, ctx.id, ifname);
}

function hostSide(res: CniResult): string {
  const i = res.interfaces?.find((x) => !x.sandbox && x.name.startsWith('veth'));
  if (!i) throw new Error(`CNI result names no host veth: ${JSON.stringify(res)}`);
  return i.name;
}

// ---------------------------------------------------------------------------
// Shapes

/** What a shape builder reports: the Pod's addressing, plus what the pod should hold. */
type Built = Pick<Pod, 'hostIfname' | 'cniNetwork' | 'nodeAddr' | 'nodeAddr6' | 'gateway' | 'gateway6' | 'podIP' | 'prefix' | 'handedPrefix' | 'podIP6' | 'prefix6'> & {
  addresses: PodAddress[];
  routes: PodRoute[];
  neighbours: PodNeighbour[];
  extraNameservers?: string[];
  /** eth0's kind and origin; default a veth from the shape's CNI plugin. */
  origin?: string;
  /** The interfaces after eth0, without what makePod reads back (MAC, MTU). */
  more?: Omit<PodNic, 'mac' | 'mtu'>[];
};

const ip = (ns: string, ...args: string[]): Promise<RunResult> => run('ip', ['-n', ns, ...args]);
const sysctl = (ns: string, ...settings: string[]): Promise<RunResult> =>
  run('ip', ['netns', 'exec', ns, 'sysctl', '-q', '-w', ...settings]);

const v4 = (dst: string, more: Partial<PodRoute> = {}): PodRoute => ({ family: 'inet', dst, dev: 'eth0', ...more });
const v6 = (dst: string, more: Partial<PodRoute> = {}): PodRoute => ({ family: 'inet6', dst, dev: 'eth0', ...more });

async function buildPtp(ctx: Ctx): Promise<Built> {
  const res = await cniAdd(ctx, 'ptp', { ipMasq: false, mtu: 1500 }, [[{ subnet: '10.22.0.0/16' }]], ['0.0.0.0/0']);
  // ptp replaces the kernel's connected /16 with "/16 via gateway" and adds
  // a host route to the gateway, which lives as a /32 on the host veth.
  return {
    hostIfname: hostSide(res),
    cniNetwork: cniNetworkName(ctx),
    nodeAddr: '10.22.0.1',
    gateway: '10.22.0.1',
    podIP: '10.22.0.2',
    prefix: 16,
    handedPrefix: 32,
    addresses: [{ family: 'inet', local: '10.22.0.2', prefixlen: 16, broadcast: '10.22.255.255', scope: 'global' }],
    routes: [
      v4('default', { gateway: '10.22.0.1' }),
      v4('10.22.0.0/16', { gateway: '10.22.0.1', prefsrc: '10.22.0.2' }),
      v4('10.22.0.1', { scope: 'link', prefsrc: '10.22.0.2' }),
    ],
    neighbours: [],
  };
}

async function buildBridge(ctx: Ctx): Promise<Built> {
  // ipMasq false: masquerading would add iptables rules. The bridge plugin
  // turns on ip_forward, which is per-namespace, so only the node's changes.
  const res = await cniAdd(
    ctx,
    'bridge',
    { bridge: 'cni0', isGateway: true, ipMasq: false, hairpinMode: false, mtu: 1500 },
    [[{ subnet: '10.21.0.0/16' }]],
    ['0.0.0.0/0'],
  );
  return {
    hostIfname: hostSide(res),
    cniNetwork: cniNetworkName(ctx),
    nodeAddr: '10.21.0.1',
    gateway: '10.21.0.1',
    podIP: '10.21.0.2',
    prefix: 16,
    handedPrefix: 16,
    addresses: [{ family: 'inet', local: '10.21.0.2', prefixlen: 16, broadcast: '10.21.255.255', scope: 'global' }],
    routes: [
      v4('default', { gateway: '10.21.0.1' }),
      v4('10.21.0.0/16', { protocol: 'kernel', scope: 'link', prefsrc: '10.21.0.2' }),
    ],
    neighbours: [],
  };
}

/**
 * The uplink of a Calico node, ens4. No dummy driver on this kernel: a
 * carrier-less tun stands in for it. It carries the node address and the
 * default route, which proxy ARP needs: the node only answers for
 * 169.254.1.1 if it has a route to it through some other interface.
 */
export async function addCalicoUplink(node: string): Promise<void> {
  await run('ip', ['-n', node, 'tuntap', 'add', 'dev', 'ens4', 'mode', 'tun']);
  await ip(node, 'addr', 'add', '10.23.0.1/24', 'dev', 'ens4');
  await ip(node, 'link', 'set', 'ens4', 'up');
  await ip(node, 'route', 'add', 'default', 'dev', 'ens4');
}

async function buildCalico(ctx: Ctx): Promise<Built> {
  const { node, pod } = ctx;
  const host = `cali${randomHex(6).slice(0, 11)}`;
  await addCalicoUplink(node);
  await ip(node, 'link', 'add', host, 'mtu', '1450', 'type', 'veth', 'peer', 'name', 'eth0', 'mtu', '1450', 'netns', pod);
  await ip(node, 'link', 'set', host, 'address', 'ee:ee:ee:ee:ee:ee');
  await sysctl(node, 'net.ipv4.ip_forward=1', `net.ipv4.conf.${host}.proxy_arp=1`, `net.ipv4.neigh.${host}.proxy_delay=0`);
  await ip(node, 'link', 'set', host, 'up');
  await ip(node, 'route', 'add', '10.23.5.7/32', 'dev', host, 'scope', 'link');
  await ip(pod, 'addr', 'add', '10.23.5.7/32', 'dev', 'eth0');
  await ip(pod, 'link', 'set', 'eth0', 'up');
  await ip(pod, 'route', 'add', '169.254.1.1', 'dev', 'eth0', 'scope', 'link');
  await ip(pod, 'route', 'add', 'default', 'via', '169.254.1.1', 'dev', 'eth0');
  return {
    hostIfname: host,
    nodeAddr: '10.23.0.1',
    gateway: '169.254.1.1',
    podIP: '10.23.5.7',
    prefix: 32,
    handedPrefix: 32,
    origin: 'hand',
    addresses: [{ family: 'inet', local: '10.23.5.7', prefixlen: 32, scope: 'global' }],
    routes: [v4('default', { gateway: '169.254.1.1' }), v4('169.254.1.1', { scope: 'link' })],
    neighbours: [],
  };
}

async function buildDualstack(ctx: Ctx): Promise<Built> {
  const res = await cniAdd(
    ctx,
    'ptp',
    { ipMasq: false, mtu: 1500 },
    [[{ subnet: '10.24.0.0/16' }], [{ subnet: 'fd00:24::/64' }]],
    ['0.0.0.0/0', '::/0'],
  );
  return {
    hostIfname: hostSide(res),
    cniNetwork: cniNetworkName(ctx),
    nodeAddr: '10.24.0.1',
    nodeAddr6: 'fd00:24::1',
    gateway: '10.24.0.1',
    gateway6: 'fd00:24::1',
    podIP: '10.24.0.2',
    prefix: 16,
    handedPrefix: 32,
    podIP6: 'fd00:24::2',
    prefix6: 64,
    addresses: [
      { family: 'inet', local: '10.24.0.2', prefixlen: 16, broadcast: '10.24.255.255', scope: 'global' },
      { family: 'inet6', local: 'fd00:24::2', prefixlen: 64, scope: 'global' },
    ],
    routes: [
      v4('default', { gateway: '10.24.0.1' }),
      v4('10.24.0.0/16', { gateway: '10.24.0.1', prefsrc: '10.24.0.2' }),
      v4('10.24.0.1', { scope: 'link', prefsrc: '10.24.0.2' }),
      v6('default', { gateway: 'fd00:24::1', metric: 1024 }),
      v6('fd00:24::/64', { gateway: 'fd00:24::1', prefsrc: 'fd00:24::2', metric: 1024 }),
      v6('fd00:24::1', { prefsrc: 'fd00:24::2', metric: 1024 }),
    ],
    neighbours: [],
    extraNameservers: ['fd00:96::a'],
  };
}

async function buildJumbo(ctx: Ctx): Promise<Built> {
  const { node, pod } = ctx;
  const host = `veth${randomHex(4)}`;
  await ip(node, 'link', 'add', host, 'mtu', '9000', 'type', 'veth', 'peer', 'name', 'eth0', 'mtu', '9000', 'netns', pod);
  await ip(node, 'addr', 'add', '10.26.0.1/24', 'dev', host);
  await ip(node, 'link', 'set', host, 'up');
  await sysctl(node, 'net.ipv4.ip_forward=1');
  // Same subnet, so the kernel marks the second one secondary; order matters.
  await ip(pod, 'addr', 'add', '10.26.0.10/24', 'dev', 'eth0');
  await ip(pod, 'addr', 'add', '10.26.0.11/24', 'dev', 'eth0');
  await ip(pod, 'link', 'set', 'eth0', 'up');
  await ip(pod, 'route', 'add', 'default', 'via', '10.26.0.1', 'dev', 'eth0');
  await ip(pod, 'route', 'add', '10.77.0.0/16', 'via', '10.26.0.1', 'dev', 'eth0', 'metric', '300');
  const hostMac = await linkMac(node, host);
  await ip(pod, 'neigh', 'add', '10.26.0.1', 'lladdr', hostMac, 'dev', 'eth0', 'nud', 'permanent');
  return {
    hostIfname: host,
    nodeAddr: '10.26.0.1',
    gateway: '10.26.0.1',
    podIP: '10.26.0.10',
    prefix: 24,
    handedPrefix: 24,
    origin: 'hand',
    addresses: [
      // Added without `brd`, as plain `ip addr add` does: no broadcast.
      { family: 'inet', local: '10.26.0.10', prefixlen: 24, scope: 'global' },
      { family: 'inet', local: '10.26.0.11', prefixlen: 24, scope: 'global', secondary: true },
    ],
    routes: [
      v4('default', { gateway: '10.26.0.1' }),
      v4('10.26.0.0/24', { protocol: 'kernel', scope: 'link', prefsrc: '10.26.0.10' }),
      v4('10.77.0.0/16', { gateway: '10.26.0.1', metric: 300 }),
    ],
    neighbours: [{ family: 'inet', dst: '10.26.0.1', lladdr: hostMac }],
  };
}

async function buildMulti(ctx: Ctx): Promise<Built> {
  const { node, pod } = ctx;
  // eth0: the cluster network, with the default route (what Multus calls the
  // default network).
  const res = await cniAdd(ctx, 'ptp', { ipMasq: false, mtu: 1500 }, [[{ subnet: '10.27.0.0/16' }]], ['0.0.0.0/0']);
  // net1: a secondary network on a node bridge that is not its gateway: an
  // address and the kernel's connected route, nothing else. The node gets
  // an address on the bridge by hand, so the pod has someone to reach.
  await cniAdd(ctx, 'bridge', { bridge: 'cni-n1', isGateway: false, ipMasq: false, hairpinMode: false, mtu: 1500 }, [[{ subnet: '10.28.0.0/24' }]], [], 'net1');
  await ip(node, 'addr', 'add', '10.28.0.254/24', 'dev', 'cni-n1');
  // net2: macvlan in bridge mode. No dummy driver on this kernel: the parent
  // is one end of a veth in the node namespace, and the other end stands in
  // for the rest of that network.
  await ip(node, 'link', 'add', 'mvpar0', 'type', 'veth', 'peer', 'name', 'mvnet0');
  await ip(node, 'addr', 'add', '10.29.0.254/24', 'dev', 'mvnet0');
  await ip(node, 'link', 'set', 'mvpar0', 'up');
  await ip(node, 'link', 'set', 'mvnet0', 'up');
  await cniAdd(ctx, 'macvlan', { master: 'mvpar0', mode: 'bridge', mtu: 1500 }, [[{ subnet: '10.29.0.0/24' }]], [], 'net2');
  // net3: layer 2 only, a veth without any address (IPv6 comes by RA later).
  const l2 = `l2h${randomHex(4)}`;
  await ip(node, 'link', 'add', l2, 'type', 'veth', 'peer', 'name', 'net3', 'netns', pod);
  await ip(node, 'link', 'set', l2, 'up');
  await ip(pod, 'link', 'set', 'net3', 'up');
  return {
    hostIfname: hostSide(res),
    cniNetwork: cniNetworkName(ctx),
    nodeAddr: '10.27.0.1',
    gateway: '10.27.0.1',
    podIP: '10.27.0.2',
    prefix: 16,
    handedPrefix: 32,
    origin: 'ptp',
    addresses: [{ family: 'inet', local: '10.27.0.2', prefixlen: 16, broadcast: '10.27.255.255', scope: 'global' }],
    routes: [
      v4('default', { gateway: '10.27.0.1' }),
      v4('10.27.0.0/16', { gateway: '10.27.0.1', prefsrc: '10.27.0.2' }),
      v4('10.27.0.1', { scope: 'link', prefsrc: '10.27.0.2' }),
    ],
    neighbours: [],
    more: [
      { ifname: 'net1', kind: 'veth', origin: 'bridge', ip: '10.28.0.2', prefix: 24, handedPrefix: 24, defaultRoute: false, nodeAddr: '10.28.0.254' },
      { ifname: 'net2', kind: 'macvlan', origin: 'macvlan', ip: '10.29.0.2', prefix: 24, handedPrefix: 24, defaultRoute: false, nodeAddr: '10.29.0.254' },
      { ifname: 'net3', kind: 'veth', origin: 'hand', defaultRoute: false },
    ],
  };
}

const BUILDERS: Record<Shape, (ctx: Ctx) => Promise<Built>> = {
  ptp: buildPtp,
  bridge: buildBridge,
  calico: buildCalico,
  dualstack: buildDualstack,
  jumbo: buildJumbo,
  multi: buildMulti,
};

// ---------------------------------------------------------------------------

/** Makes a node + pod namespace pair of the given shape, for real. */
export async function makePod(shape: Shape, opts: MakePodOptions = {}): Promise<Pod> {
  const build = BUILDERS[shape];
  if (!build) throw new Error(`unknown pod shape ${JSON.stringify(shape)}`);
  return withPodNamespaces('makePod', shape, 'pt-', opts, async ({ id, node, pod, hostname, own, cleanup }) => {
    const ctx: Ctx = { id, node, pod, own };
    const b = await build(ctx);

    const k8sNs = opts.namespace ?? 'default';
    const resolvConf: ResolvConf = {
      nameservers: ['10.96.0.10', ...(b.extraNameservers ?? [])],
      search: [`${k8sNs}.svc.cluster.local`, 'svc.cluster.local', 'cluster.local'],
      options: ['ndots:5'],
    };
    const resolvConfText = renderResolvConf(resolvConf);
    await setPodEtcFiles(pod, hostname, resolvConfText, [b.podIP, ...(b.podIP6 ? [b.podIP6] : [])]);

    if (opts.settle !== false) await Promise.all([waitSettled(node), waitSettled(pod)]);
    const mac = await linkMac(pod, 'eth0');
    const mtu = shape === 'jumbo' ? 9000 : shape === 'calico' ? 1450 : 1500;
    const eth0: PodNic = {
      ifname: 'eth0',
      kind: 'veth',
      origin: b.origin ?? shape.replace('dualstack', 'ptp'),
      mac,
      mtu,
      ip: b.podIP,
      prefix: b.prefix,
      handedPrefix: b.handedPrefix,
      ...(b.gateway !== undefined ? { gateway: b.gateway } : {}),
      defaultRoute: true,
      nodeAddr: b.nodeAddr,
    };
    const nics: PodNic[] = [eth0];
    for (const n of b.more ?? []) nics.push({ ...n, mac: await linkMac(pod, n.ifname), mtu: 1500 });
    const nicsFor = (datapath?: Datapath): PodNic[] => nics.filter((n) => datapath !== 'bridge' || n.kind !== 'macvlan');
    const nicArgs = (datapath?: Datapath): string[] => (nics.length > 1 ? nicsFor(datapath).flatMap((n) => ['--interface', n.ifname]) : []);

    return {
      shape,
      nics,
      nicArgs,
      nicsFor,
      node,
      pod,
      ifname: 'eth0',
      hostIfname: b.hostIfname,
      ...(b.cniNetwork !== undefined ? { cniNetwork: b.cniNetwork } : {}),
      nodeAddr: b.nodeAddr,
      ...(b.nodeAddr6 !== undefined ? { nodeAddr6: b.nodeAddr6 } : {}),
      ...(b.gateway !== undefined ? { gateway: b.gateway } : {}),
      ...(b.gateway6 !== undefined ? { gateway6: b.gateway6 } : {}),
      podIP: b.podIP,
      prefix: b.prefix,
      handedPrefix: b.handedPrefix,
      ...(b.podIP6 !== undefined ? { podIP6: b.podIP6, prefix6: b.prefix6 } : {}),
      expect: {
        mac,
        mtu,
        addresses: b.addresses,
        routes: sortRoutes(b.routes),
        neighbours: b.neighbours,
        ...(b.gateway !== undefined ? { gateway: b.gateway } : {}),
        ...(b.gateway6 !== undefined ? { gateway6: b.gateway6 } : {}),
        dns: resolvConf,
        hostname,
      },
      resolvConf,
      resolvConfText,
      hostname,
      argv: (argv) => podArgv(pod, hostname, argv),
      run: (argv, runOpts) => runInPod(pod, hostname, argv, runOpts),
      cleanup,
    };
  });
}

/** The namespaces of a pod being made (withPodNamespaces()), and what goes with them. */
export interface PodNamespaces {
  id: string;
  /** The namespace standing in for the host. */
  node: string;
  /** The pod's network namespace. */
  pod: string;
  hostname: string;
  /** The pod's own undo steps (CNI DELs), run before the namespaces go. */
  own: Cleanup;
  /** Removes the pod, and takes it off the caller's Cleanup. */
  cleanup(): Promise<void>;
}

/**
 * Makes a pod's node and pod namespaces (`${prefix}ID-node`, `${prefix}ID-pod`)
 * and its hostname (opts.hostname or one from `shape`), and hands them to
 * `build`; should that throw, everything made so far goes. The pod is
 * registered with opts.cleanup. `label` (makePod, makePod6) names the
 * failure.
 */
export async function withPodNamespaces<T>(
  label: string,
  shape: string,
  prefix: string,
  opts: { cleanup?: Cleanup; hostname?: string },
  build: (ns: PodNamespaces) => Promise<T>,
): Promise<T> {
  const own = new Cleanup();
  const id = randomHex(3);
  const hostname = opts.hostname ?? `${shape}-7f9c4-${id.slice(0, 5)}`;
  podArgv('check', hostname, ['true']); // throws on a hostname the pod could not have
  let unregister: (() => void) | undefined;
  const cleanup = async (): Promise<void> => {
    await own.cleanupAll();
    unregister?.();
  };
  unregister = opts.cleanup?.defer(`pod ${shape} ${prefix}${id}`, () => own.cleanupAll());
  try {
    // Registration order gives cleanup order (reversed): CNI DELs, pod, node.
    const node = await createNetns({ name: `${prefix}${id}-node`, cleanup: own });
    const pod = await createNetns({ name: `${prefix}${id}-pod`, cleanup: own });
    return await build({ id, node, pod, hostname, own, cleanup });
  } catch (e) {
    await cleanup().catch((ce: unknown) => {
      throw new AggregateError([e, ce], `${label}(${shape}) failed and so did its cleanup`);
    });
    throw e;
  }
}

/** The pod's resolv.conf, hostname, and hosts file naming `addresses`, as kubelet writes them. */
export async function setPodEtcFiles(pod: string, hostname: string, resolvConfText: string, addresses: readonly string[]): Promise<void> {
  await setNetnsEtcFile(pod, 'resolv.conf', resolvConfText);
  await setNetnsEtcFile(pod, 'hostname', `${hostname}\n`);
  await setNetnsEtcFile(
    pod,
    'hosts',
    '# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' + addresses.map((a) => `${a}\t${hostname}\n`).join(''),
  );
}
