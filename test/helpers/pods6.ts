// IPv6 pod shapes, for the tests of what a guest gets over IPv6. Each is a
// real pod network namespace with its own node namespace, made the way
// pods.ts makes its shapes (the real CNI plugins from /usr/lib/cni, run in
// the node namespace; by hand where the real thing is done by hand):
//
//   dualstack  pods.ts's own: CNI ptp,       10.24.0.2/16 + fd00:24::2/64; no
//              v4 + v6 ranges                connected route, "/64 via gateway"
//                                            and an on-link /128 to the
//                                            gateway fd00:24::1 (host veth)
//   bridge6    CNI bridge, isGateway,        10.30.0.2/16 + fd00:30::2/64, both
//              v4 + v6 ranges                connected (on-link); gateways
//                                            10.30.0.1 and fd00:30::1 on cni0;
//                                            the node's fd00:30:ff::1 off-link
//   calico6    by hand, Calico's layout      10.23.5.7/32 + fd00:23:5::7/128;
//                                            gateways 169.254.1.1 (proxy ARP)
//                                            and fe80::ecee:eeff:feee:eeee, the
//                                            node-side veth's own link-local
//                                            address (MAC ee:ee:ee:ee:ee:ee)
//   ptp6only   CNI ptp, one v6 range         fd00:25::2/64 and nothing IPv4
//   dualnic    eth0  CNI ptp, v4 + v6        10.31.0.2/16 + fd00:31::2/64, the
//                                            default routes
//              net1  CNI bridge, v6 only     fd00:28::2/64 on-link on cni-n1,
//                                            fd00:77::/48 via fd00:28::1
//                                            with mtu 1400; no default route
//
// The pod's resolv.conf has an IPv6 nameserver (fd00:96::a) besides the
// IPv4 one where the pod has IPv4; `resolv` replaces it.
//
// Every Nic6 says what the guest behind podtap must end up with on that
// NIC: the pod's address, the router it learns (podtap's fe80::1, or a
// link-local gateway itself) and the MAC that router must resolve to (the
// gateway's), the prefixes that are on-link, and an address in the node
// namespace to ping.
//
//   const pod = await makePod6('calico6', { cleanup });
//   const g = await startGuestNs(pod.asPod, { cleanup });

import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { eui64LinkLocal, parseFrame, type Ipv6Packet, type ParsedFrame } from '../../src/serve/frames.ts';
import { ND, neighborSolicitationFrame, parseNeighborAdvertisement } from '../../src/serve/nd/ndp.ts';
import { parseRouterAdvertisement, type ParsedRouterAdvertisement } from '../../src/serve/nd/ra.ts';
import {
  Cleanup,
  killPid,
  netnsExists,
  netnsPath,
  nsStateDir,
  podArgv,
  randomHex,
  renderResolvConf,
  run,
  runInPod,
  setNetnsEtcFile,
  spawnInNs,
  type ResolvConf,
  type RunOptions,
  type RunResult,
} from './netns.ts';
import { CNI_BIN, addCalicoUplink, makePod, setPodEtcFiles, withPodNamespaces, type Pod } from './pods.ts';
import { PODTAP } from './podtap.ts';
import { waitSettled } from './snapshot.ts';

export type Shape6 = 'dualstack' | 'bridge6' | 'calico6' | 'ptp6only' | 'dualnic';
/** The single-interface shapes, each a kind of IPv6 pod network a guest must get right. */
export const SHAPES6: readonly Shape6[] = ['dualstack', 'bridge6', 'calico6', 'ptp6only'];

/** Calico's fixed gateway: the node-side veth's link-local address, from the MAC Calico gives it. */
export const CALICO_MAC = 'ee:ee:ee:ee:ee:ee';
export const CALICO_GW6 = 'fe80::ecee:eeff:feee:eeee';
/** The router address podtap advertises when the pod's gateway is not link-local. */
export const PODTAP_ROUTER = 'fe80::1';

export interface Nic4 {
  address: string;
  prefix: number;
  /** What DHCPv4 hands out: /32 where the pod has no connected route (ptp, calico). */
  handedPrefix: number;
  gateway: string;
  nodeAddr: string;
}

/** One pod interface, as the VM should get it over IPv6. */
export interface Nic6 {
  ifname: string;
  mac: string;
  mtu: number;
  /** The pod's global IPv6 address: what DHCPv6 must hand out. */
  ip6: string;
  prefix6: number;
  /** Prefixes the pod has as connected routes: the only ones a guest may treat as on-link. */
  onLink: string[];
  /** Off-link routes other than the default, through the gateway. */
  routes: { dst: string; mtu?: number }[];
  /** The pod's IPv6 next hop through this interface. */
  gateway6: string;
  /** The router the guest learns: the source of the RA and its default route's next hop. */
  router: string;
  /** The MAC that router must resolve to in the guest: the gateway's. */
  routerMac: string;
  defaultRoute: boolean;
  /** An IPv6 address in the node namespace the pod reaches through this interface. */
  nodeAddr6: string;
  ip4?: Nic4;
}

export interface Pod6 {
  shape: Shape6;
  node: string;
  pod: string;
  hostname: string;
  /** The node-side end of eth0's veth, in `node`. */
  hostIfname: string;
  /** eth0 first. */
  nics: Nic6[];
  resolvConf: ResolvConf;
  resolvConfText: string;
  argv(argv: readonly string[]): string[];
  run(argv: readonly string[], opts?: RunOptions): Promise<RunResult>;
  cleanup(): Promise<void>;
  /**
   * The pod as pods.ts's Pod, for helpers that take one (startGuestNs,
   * startPodtap, podtapIn). Those read only its namespace, hostname and
   * argv; the pods.ts-only fields of a shape pods.ts does not have are left
   * out.
   */
  asPod: Pod;
}

export interface MakePod6Options {
  cleanup?: Cleanup;
  hostname?: string;
  /** The pod's resolv.conf; default a cluster's, with fd00:96::a (and 10.96.0.10 when the pod has IPv4). */
  resolv?: ResolvConf;
}

// ---------------------------------------------------------------------------

type Json = Record<string, unknown>;

interface Ctx {
  id: string;
  node: string;
  pod: string;
  own: Cleanup;
}

const ip = (ns: string, ...args: string[]): Promise<RunResult> => run('ip', ['-n', ns, ...args]);
const sysctl = (ns: string, ...settings: string[]): Promise<RunResult> => run('ip', ['netns', 'exec', ns, 'sysctl', '-q', '-w', ...settings]);

async function macOf(ns: string, ifname: string): Promise<string> {
  const r = await ip(ns, '-j', 'link', 'show', 'dev', ifname);
  const [l] = JSON.parse(r.stdout) as Json[];
  if (!l) throw new Error(`${ns}: no ${ifname}`);
  return String(l.address);
}

interface CniIf {
  name: string;
  mac?: string;
  sandbox?: string;
}

/**
 * One CNI plugin call from the node namespace, host-local IPAM keeping its
 * leases under the node's state directory. ADD registers the matching DEL,
 * which runs before the namespaces go.
 */
async function cniAdd(ctx: Ctx, plugin: string, fields: Json, ranges: string[][], routes: string[], ifname: string): Promise<CniIf[]> {
  const conf = {
    cniVersion: '1.0.0',
    name: `podtap6-${ctx.id}-${ifname}`,
    type: plugin,
    ...fields,
    ipam: {
      type: 'host-local',
      dataDir: join(nsStateDir(ctx.node), 'cni'),
      ranges: ranges.map((r) => r.map((subnet) => ({ subnet }))),
      routes: routes.map((dst) => ({ dst })),
    },
  };
  const call = async (command: 'ADD' | 'DEL'): Promise<Json> => {
    const r = await run('ip', ['netns', 'exec', ctx.node, join(CNI_BIN, plugin)], {
      input: JSON.stringify(conf),
      env: { CNI_COMMAND: command, CNI_CONTAINERID: `podtap6-${ctx.id}`, CNI_NETNS: netnsPath(ctx.pod), CNI_IFNAME: ifname, CNI_PATH: CNI_BIN },
      reject: false,
    });
    // A plugin reports its errors as JSON on stdout.
    if (r.exitCode !== 0) throw new Error(`CNI ${plugin} ${command} ${ifname} failed (${r.exitCode}): ${r.stdout.trim()} ${r.stderr.trim()}`);
    return r.stdout.trim() ? (JSON.parse(r.stdout) as Json) : {};
  };
  ctx.own.defer(`CNI ${plugin} DEL ${ctx.pod} ${ifname}`, async () => {
    if (netnsExists(ctx.node)) await call('DEL');
  });
  const res = await call('ADD');
  return (res.interfaces as CniIf[] | undefined) ?? [];
}

function hostVeth(ifs: CniIf[]): string {
  const i = ifs.find((x) => !x.sandbox && x.name.startsWith('veth'));
  if (!i) throw new Error(`CNI result names no host veth: ${JSON.stringify(ifs)}`);
  return i.name;
}

/** What a builder knows before makePod6 reads MACs back. */
interface Built {
  hostIfname: string;
  nics: (Omit<Nic6, 'mac' | 'mtu' | 'routerMac'> & { mtu: number; routerMacOf: { ns: 'node' | 'fixed'; ifname?: string; mac?: string } })[];
}

async function buildBridge6(ctx: Ctx): Promise<Built> {
  // isGateway puts both gateways on cni0; the pod keeps the kernel's
  // connected routes for both subnets. ipMasq off: no iptables rules.
  const ifs = await cniAdd(ctx, 'bridge', { bridge: 'cni0', isGateway: true, ipMasq: false, hairpinMode: false, mtu: 1500 }, [['10.30.0.0/16'], ['fd00:30::/64']], ['0.0.0.0/0', '::/0'], 'eth0');
  // An address of the node's off the pod's /64, so reaching it takes the
  // router (the gateway itself is on-link).
  await ip(ctx.node, 'addr', 'add', 'fd00:30:ff::1/128', 'dev', 'lo');
  return {
    hostIfname: hostVeth(ifs),
    nics: [
      {
        ifname: 'eth0',
        mtu: 1500,
        ip6: 'fd00:30::2',
        prefix6: 64,
        onLink: ['fd00:30::/64'],
        routes: [],
        gateway6: 'fd00:30::1',
        router: PODTAP_ROUTER,
        routerMacOf: { ns: 'node', ifname: 'cni0' },
        defaultRoute: true,
        nodeAddr6: 'fd00:30:ff::1',
        ip4: { address: '10.30.0.2', prefix: 16, handedPrefix: 16, gateway: '10.30.0.1', nodeAddr: '10.30.0.1' },
      },
    ],
  };
}

async function buildCalico6(ctx: Ctx): Promise<Built> {
  const { node, pod } = ctx;
  const host = `cali${randomHex(6).slice(0, 11)}`;
  // The node's uplink, as in pods.ts's calico (proxy ARP answers for
  // 169.254.1.1 only with a route elsewhere).
  await addCalicoUplink(node);
  // The node's IPv6 address: on lo, since a carrier-less link would keep it
  // tentative.
  await ip(node, 'addr', 'add', 'fd00:23:ff::1/128', 'dev', 'lo');
  // What Calico's CNI plugin and Felix do per pod: a veth whose node side
  // wears ee:ee:ee:ee:ee:ee (set before it comes up, so the kernel's
  // link-local address is fe80::ecee:eeff:feee:eeee), proxy ARP on it,
  // forwarding, and host routes to the pod's addresses through it.
  await ip(node, 'link', 'add', host, 'mtu', '1450', 'type', 'veth', 'peer', 'name', 'eth0', 'mtu', '1450', 'netns', pod);
  await ip(node, 'link', 'set', host, 'address', CALICO_MAC);
  await sysctl(node, 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1', `net.ipv4.conf.${host}.proxy_arp=1`, `net.ipv4.neigh.${host}.proxy_delay=0`);
  await ip(node, 'link', 'set', host, 'up');
  await ip(node, 'route', 'add', '10.23.5.7/32', 'dev', host, 'scope', 'link');
  await ip(node, '-6', 'route', 'add', 'fd00:23:5::7/128', 'dev', host);
  await ip(pod, 'addr', 'add', '10.23.5.7/32', 'dev', 'eth0');
  await ip(pod, 'addr', 'add', 'fd00:23:5::7/128', 'dev', 'eth0');
  await ip(pod, 'link', 'set', 'eth0', 'up');
  await ip(pod, 'route', 'add', '169.254.1.1', 'dev', 'eth0', 'scope', 'link');
  await ip(pod, 'route', 'add', 'default', 'via', '169.254.1.1', 'dev', 'eth0');
  await ip(pod, '-6', 'route', 'add', 'default', 'via', CALICO_GW6, 'dev', 'eth0');
  return {
    hostIfname: host,
    nics: [
      {
        ifname: 'eth0',
        mtu: 1450,
        ip6: 'fd00:23:5::7',
        prefix6: 128,
        onLink: [],
        routes: [],
        gateway6: CALICO_GW6,
        router: CALICO_GW6,
        routerMacOf: { ns: 'fixed', mac: CALICO_MAC },
        defaultRoute: true,
        nodeAddr6: 'fd00:23:ff::1',
        ip4: { address: '10.23.5.7', prefix: 32, handedPrefix: 32, gateway: '169.254.1.1', nodeAddr: '10.23.0.1' },
      },
    ],
  };
}

async function buildPtp6only(ctx: Ctx): Promise<Built> {
  const ifs = await cniAdd(ctx, 'ptp', { ipMasq: false, mtu: 1500 }, [['fd00:25::/64']], ['::/0'], 'eth0');
  const host = hostVeth(ifs);
  return {
    hostIfname: host,
    nics: [
      {
        ifname: 'eth0',
        mtu: 1500,
        ip6: 'fd00:25::2',
        prefix6: 64,
        onLink: [],
        routes: [{ dst: 'fd00:25::/64' }],
        gateway6: 'fd00:25::1',
        router: PODTAP_ROUTER,
        routerMacOf: { ns: 'node', ifname: host },
        defaultRoute: true,
        nodeAddr6: 'fd00:25::1',
      },
    ],
  };
}

async function buildDualnic(ctx: Ctx): Promise<Built> {
  const { pod } = ctx;
  const ifs = await cniAdd(ctx, 'ptp', { ipMasq: false, mtu: 1500 }, [['10.31.0.0/16'], ['fd00:31::/64']], ['0.0.0.0/0', '::/0'], 'eth0');
  const host = hostVeth(ifs);
  // A secondary network: on-link /64 on a node bridge, one more prefix
  // behind its gateway, no default route. The route's MTU is lower than the
  // link's, as an overlay behind that gateway would need.
  await cniAdd(ctx, 'bridge', { bridge: 'cni-n1', isGateway: true, ipMasq: false, hairpinMode: false, mtu: 1500 }, [['fd00:28::/64']], ['fd00:77::/48'], 'net1');
  await ip(pod, '-6', 'route', 'replace', 'fd00:77::/48', 'via', 'fd00:28::1', 'dev', 'net1', 'metric', '1024', 'mtu', '1400');
  return {
    hostIfname: host,
    nics: [
      {
        ifname: 'eth0',
        mtu: 1500,
        ip6: 'fd00:31::2',
        prefix6: 64,
        onLink: [],
        routes: [{ dst: 'fd00:31::/64' }],
        gateway6: 'fd00:31::1',
        router: PODTAP_ROUTER,
        routerMacOf: { ns: 'node', ifname: host },
        defaultRoute: true,
        nodeAddr6: 'fd00:31::1',
        ip4: { address: '10.31.0.2', prefix: 16, handedPrefix: 32, gateway: '10.31.0.1', nodeAddr: '10.31.0.1' },
      },
      {
        ifname: 'net1',
        mtu: 1500,
        ip6: 'fd00:28::2',
        prefix6: 64,
        onLink: ['fd00:28::/64'],
        routes: [{ dst: 'fd00:77::/48', mtu: 1400 }],
        gateway6: 'fd00:28::1',
        router: PODTAP_ROUTER,
        routerMacOf: { ns: 'node', ifname: 'cni-n1' },
        defaultRoute: false,
        nodeAddr6: 'fd00:28::1',
      },
    ],
  };
}

const BUILDERS: Record<Exclude<Shape6, 'dualstack'>, (ctx: Ctx) => Promise<Built>> = {
  bridge6: buildBridge6,
  calico6: buildCalico6,
  ptp6only: buildPtp6only,
  dualnic: buildDualnic,
};

function defaultResolv(hasV4: boolean): ResolvConf {
  return {
    nameservers: [...(hasV4 ? ['10.96.0.10'] : []), 'fd00:96::a'],
    search: ['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local'],
    options: ['ndots:5'],
  };
}

/** pods.ts's dualstack pod, described as a Pod6. */
async function dualstack(opts: MakePod6Options): Promise<Pod6> {
  const p = await makePod('dualstack', { ...(opts.cleanup ? { cleanup: opts.cleanup } : {}), ...(opts.hostname ? { hostname: opts.hostname } : {}) });
  try {
    let resolvConf = p.resolvConf;
    let resolvConfText = p.resolvConfText;
    if (opts.resolv) {
      resolvConf = opts.resolv;
      resolvConfText = renderResolvConf(resolvConf);
      await setNetnsEtcFile(p.pod, 'resolv.conf', resolvConfText);
    }
    const nic: Nic6 = {
      ifname: 'eth0',
      mac: p.expect.mac,
      mtu: p.expect.mtu,
      ip6: p.podIP6!,
      prefix6: p.prefix6!,
      onLink: [],
      routes: [{ dst: 'fd00:24::/64' }],
      gateway6: p.gateway6!,
      router: PODTAP_ROUTER,
      routerMac: await macOf(p.node, p.hostIfname),
      defaultRoute: true,
      nodeAddr6: p.nodeAddr6!,
      ip4: { address: p.podIP, prefix: p.prefix, handedPrefix: p.handedPrefix, gateway: p.gateway!, nodeAddr: p.nodeAddr },
    };
    return {
      shape: 'dualstack',
      node: p.node,
      pod: p.pod,
      hostname: p.hostname,
      hostIfname: p.hostIfname,
      nics: [nic],
      resolvConf,
      resolvConfText,
      argv: p.argv,
      run: p.run,
      cleanup: p.cleanup,
      asPod: p,
    };
  } catch (e) {
    await p.cleanup();
    throw e;
  }
}

/** Makes a node + pod namespace pair of the given IPv6 shape, for real. */
export async function makePod6(shape: Shape6, opts: MakePod6Options = {}): Promise<Pod6> {
  if (shape === 'dualstack') return dualstack(opts);
  const build = BUILDERS[shape];
  if (!build) throw new Error(`unknown IPv6 pod shape ${JSON.stringify(shape)}`);
  return withPodNamespaces('makePod6', shape, 'p6-', opts, async ({ id, node, pod, hostname, own, cleanup }) => {
    const b = await build({ id, node, pod, own });
    const hasV4 = b.nics.some((n) => n.ip4);
    const resolvConf = opts.resolv ?? defaultResolv(hasV4);
    const resolvConfText = renderResolvConf(resolvConf);
    const first = b.nics[0]!;
    await setPodEtcFiles(pod, hostname, resolvConfText, [...(first.ip4 ? [first.ip4.address] : []), first.ip6]);
    // IPv6 DAD on both sides (the gateways' addresses too) before anyone looks.
    await Promise.all([waitSettled(node), waitSettled(pod)]);
    const nics: Nic6[] = [];
    for (const { routerMacOf, ...n } of b.nics) {
      const routerMac = routerMacOf.ns === 'fixed' ? routerMacOf.mac! : await macOf(node, routerMacOf.ifname!);
      nics.push({ ...n, mac: await macOf(pod, n.ifname), routerMac });
    }
    const argv = (a: readonly string[]) => podArgv(pod, hostname, a);
    const runIn = (a: readonly string[], o?: RunOptions) => runInPod(pod, hostname, a, o);
    const asPod = {
      shape,
      node,
      pod,
      hostname,
      ifname: 'eth0',
      hostIfname: b.hostIfname,
      resolvConf,
      resolvConfText,
      argv,
      run: runIn,
      cleanup,
    } as unknown as Pod;
    return { shape, node, pod, hostname, hostIfname: b.hostIfname, nics, resolvConf, resolvConfText, argv, run: runIn, cleanup, asPod };
  });
}

// ---------------------------------------------------------------------------
// Looking at IPv6 on the wire and in the guest

type JsonAny = Record<string, any>;

/** `podtap status --json` of the podtap running in the pod with this state dir. */
export async function podtapStatus(pod: Pod6, stateDir: string): Promise<JsonAny> {
  const r = await runInPod(pod.pod, pod.hostname, [PODTAP, 'status', '--json', '--state-dir', stateDir], { reject: false });
  if (r.exitCode !== 0) throw new Error(`podtap status failed (${r.exitCode}):\n${r.stderr}${r.stdout}`);
  return JSON.parse(r.stdout) as JsonAny;
}

/** Polls `podtap status` until `test` holds for it; throws with the last document otherwise. */
export async function waitStatus(pod: Pod6, stateDir: string, test: (doc: JsonAny) => boolean, ms: number, what: string): Promise<JsonAny> {
  const end = Date.now() + ms;
  let doc: JsonAny = {};
  for (;;) {
    doc = await podtapStatus(pod, stateDir);
    if (test(doc)) return doc;
    if (Date.now() > end) throw new Error(`no ${what} within ${ms} ms; podtap status:\n${JSON.stringify(doc, null, 1)}`);
    await sleep(200);
  }
}

/** Frames as `pkt recv` prints them (hex), taken apart. */
export function parseHexFrames(hex: readonly string[]): ParsedFrame[] {
  return hex.map((h) => parseFrame(Buffer.from(h, 'hex')));
}

/** The one frame podtap may send towards the node: its solicitation for the gateway's MAC, from the pod's own MAC and address. */
export function gatewaySolicitation(nic: Nic6): string {
  return neighborSolicitationFrame({ srcMac: nic.mac, target: nic.gateway6, src: nic.ip6 }).toString('hex');
}

/**
 * What the node side of a pod interface must never see from the pod: a
 * router advertisement, DHCPv6 or DHCPv4, a neighbour advertisement for
 * anything but the guest's own addresses (podtap's answers for its router
 * address stay with the guest), or a frame from any MAC but the pod's.
 * One line per offending frame.
 */
export function nodeSideViolations(frames: readonly ParsedFrame[], nic: Nic6): string[] {
  const own = new Set([nic.ip6, eui64LinkLocal(nic.mac)]);
  const out: string[] = [];
  for (const f of frames) {
    const eth = 'eth' in f ? f.eth : undefined;
    const what = f.kind === 'ipv6' ? `${f.src} > ${f.dst} proto ${f.protocol}${f.icmp6 ? ` icmp6 ${f.icmp6.type}` : ''}${f.udp ? ` udp ${f.udp.srcPort} > ${f.udp.dstPort}` : ''}` : f.kind;
    if (eth && eth.src !== nic.mac) out.push(`from ${eth.src}, not the pod's MAC: ${what}`);
    if (f.kind === 'ipv6') {
      if (f.icmp6?.type === ND.ROUTER_ADVERTISEMENT) out.push(`router advertisement: ${what}`);
      if (f.icmp6?.type === ND.REDIRECT) out.push(`redirect: ${what}`);
      if (f.udp && [546, 547].some((p) => p === f.udp!.srcPort || p === f.udp!.dstPort)) out.push(`DHCPv6: ${what}`);
      if (f.icmp6?.type === ND.NEIGHBOR_ADVERTISEMENT) {
        const na = parseNeighborAdvertisement(f);
        if (!na.ok || !own.has(na.target)) out.push(`neighbour advertisement for ${na.ok ? na.target : `? (${na.reason})`}: ${what}`);
      }
    }
    if (f.kind === 'ipv4' && f.udp && [67, 68].some((p) => p === f.udp!.srcPort || p === f.udp!.dstPort)) out.push(`DHCPv4: ${f.src} > ${f.dst}`);
  }
  return out;
}

/**
 * MLD reports from the unspecified address sent by some MAC other than the
 * pod's: what the pod interface's own IPv6 stack sends out of it on the
 * bridge data path once it wears the generated port MAC (see the known
 * issue in test/ns/ipv6-clients.test.ts).
 */
export function isPortMld(f: ParsedFrame, nic: Nic6): boolean {
  return f.kind === 'ipv6' && f.eth.src !== nic.mac && f.src === '::' && f.icmp6?.type === 143;
}

/** Router advertisements among frames received in a guest, parsed as a host would (RFC 4861 §6.1.2). */
export function routerAdvertisements(frames: readonly ParsedFrame[]): { frame: Ipv6Packet; ra: ParsedRouterAdvertisement }[] {
  const out: { frame: Ipv6Packet; ra: ParsedRouterAdvertisement }[] = [];
  for (const f of frames) {
    if (f.kind !== 'ipv6' || f.icmp6?.type !== ND.ROUTER_ADVERTISEMENT) continue;
    const r = parseRouterAdvertisement(f);
    if (!r.ok) throw new Error(`an invalid router advertisement reached the guest: ${r.reason} ${r.detail ?? ''}`);
    out.push({ frame: f, ra: r.ra });
  }
  return out;
}

/** `pkt recv` matches for ICMPv6 of one type in an untagged IPv6 frame without extension headers. */
export function icmp6Match(type: number): string[] {
  return ['86dd@12', '3a@20', `${type.toString(16).padStart(2, '0')}@54`];
}

export interface AddrMonitor {
  /** Every address (family, address/prefix, scope) the kernel reported added so far. */
  added(): { family: 'inet' | 'inet6'; address: string; scope: string; line: string }[];
  stop(): Promise<void>;
}

/**
 * `ip -o monitor address` in namespace `ns` (a guest's), from now on: every
 * address that appears, however briefly.
 */
export async function monitorAddresses(ns: string, cleanup: Cleanup): Promise<AddrMonitor> {
  const { pid, start, unregister, stdout } = spawnInNs(ns, ['ip', '-o', 'monitor', 'address'], cleanup);
  // ip prints nothing until something changes: give it a moment to subscribe.
  await sleep(300);
  return {
    added: () =>
      stdout()
        .split('\n')
        .filter((l) => l.trim() && !l.startsWith('Deleted'))
        .flatMap((line) => {
          const m = /\b(inet6?) (\S+) .*?scope (\S+)/.exec(line);
          return m ? [{ family: m[1] as 'inet' | 'inet6', address: m[2]!, scope: m[3]!, line }] : [];
        }),
    async stop() {
      await killPid(pid, start);
      unregister();
    },
  };
}
