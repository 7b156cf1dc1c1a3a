// Planning is pure: from what discovery found and the options, one
// attachment per pod interface and the ordered steps that take each
// interface over, each step with its undo. Undo replays in reverse, so the
// order here is also the restore order, read backwards: addresses come back
// before the routes that need them, on-link routes before gateway routes,
// and an interface's IPv6 address generation last.

import { PodtapError } from '../errors.ts';
import { formatIpv4, networkOf, parseIpv4 } from '../net/ipv4.ts';
import { network6 } from '../net/ipv6.ts';
import type { Address, Link, Pod, PodInterface, Route } from '../pod/model.ts';
import { routeSpec, type Step } from '../journal/actions.ts';
import { checkInterface, chooseServerId, ipv4Of, ipv6Of, nicNames, primaryNic, type Attachment, type Names } from './attachment.ts';
import { chooseDatapath, type Datapath, type DatapathSupport } from './datapath/index.ts';
import { bridgeSteps } from './datapath/bridge.ts';
import { redirectSteps } from './datapath/redirect.ts';
import { TABLE, type NicGuard, type NftTable } from './guard.ts';
import { eui64LinkLocal } from '../serve/frames.ts';

export interface PlanOptions extends Names {
  queues: number;
  linkLocal: string; // CIDR
  linkLocalExplicit: boolean;
  antispoof: boolean;
  persistTap: boolean;
  tapOwner?: { uid: number; gid?: number };
  datapath?: Datapath;
  support: DatapathSupport;
  /** --forward-port: ports of the VM to reach from 127.0.0.1 in the pod namespace. */
  forwardPorts?: { port: number; proto: 'tcp' | 'udp' }[];
}

/** MACs podtap makes up, per NIC (random in production, fixed in tests). */
export interface Generated {
  serverMac: string;
  portMac: string;
  bridgeMac: string;
}

export interface Plan {
  attachments: Attachment[];
  serverId: string; // DHCPv4 server identifier (CIDR)
  /** The NIC whose guest answers forwarded ports, and where podtap connects from. */
  forward?: { nic: number; from: string; to: string };
  steps: Step[];
}

/** The NIC forwarded ports go to: the primary one with IPv4, else the first with IPv4. */
export function forwardNic(attachments: Attachment[]): Attachment | undefined {
  return attachments.find((a) => a.primary && a.ipv4) ?? attachments.find((a) => a.ipv4);
}

/**
 * The pod's own stack must reach the guest for forwarded ports: the server
 * identifier on the NIC's bridge (or TAP), a host route to the guest's
 * address with it as source, and a permanent neighbour entry so no ARP is
 * ever needed. Journaled like everything else.
 */
function forwardSteps(a: Attachment, serverId: string): Step[] {
  const dev = a.bridge ?? a.tap;
  const from = serverId.split('/')[0]!;
  const addr = { family: 'inet' as const, local: from, prefixlen: 32, scope: 'link', flags: [] };
  const route = { family: 'inet' as const, table: 'main', type: 'unicast', dst: `${a.ipv4!.address}/32`, dev, protocol: 'static', scope: 'link', prefsrc: from, flags: [] };
  const neigh = { family: 'inet' as const, dst: a.ipv4!.address, lladdr: a.mac, dev, router: false, proxy: false, permanent: true };
  return [
    {
      id: `nic${a.nic}/forward-path`,
      do: [{ op: 'addr-add', dev, addr }, { op: 'route-add', route }, { op: 'neigh-add', neigh }],
      undo: [{ op: 'neigh-del', neigh }, { op: 'route-del', route }, { op: 'addr-del', dev, addr }],
    },
  ];
}

/**
 * Routes podtap moves: every route through the interface except those the
 * kernel owns: the local table (derived from addresses) and the IPv6
 * link-local prefix route, which comes and goes with the link-local address.
 * Restoring the latter by hand races the kernel's own copy and can leave two.
 */
export function movableRoutes(routes: Route[]): Route[] {
  const kernelLinkLocal = (r: Route) => r.family === 'inet6' && r.protocol === 'kernel' && r.dst === 'fe80::/64';
  return routes.filter((r) => r.table !== 'local' && r.expires === undefined && !kernelLinkLocal(r));
}

function rank(r: Route): number {
  if (r.dst === 'default') return 2;
  return r.gateway || r.nexthops?.some((h) => h.gateway) ? 1 : 0;
}

/** Add order: on-link routes, then gateway routes, then default routes; stable within each. */
export function routeAddOrder(routes: Route[]): Route[] {
  return routes.map((r, i) => ({ r, i })).sort((a, b) => rank(a.r) - rank(b.r) || a.i - b.i).map((x) => x.r);
}

/**
 * Addresses in the order that recreates them as they were: primaries before
 * their secondaries. The kernel's IPv6 link-local address is among them: it
 * is taken away with the rest (the pod's stack must say nothing on the
 * link, and without it the kernel sends no router solicitations or MLD
 * reports) and put back as it was.
 */
export function addressAddOrder(addresses: Address[]): Address[] {
  return addresses.filter((a) => !a.flags.includes('dadfailed'));
}

/** Kernel prefix routes that re-adding an address creates but the pod did not have (CNI ptp deletes its own). */
function strayPrefixRoutes(a: Address, routes: Route[], dev: string): Route[] {
  if (a.flags.includes('noprefixroute') || a.peer) return [];
  const v6 = a.family === 'inet6';
  if (a.prefixlen === (v6 ? 128 : 32) || (v6 && a.scope === 'link')) return [];
  const net = `${v6 ? network6(a.local, a.prefixlen) : formatIpv4(networkOf(parseIpv4(a.local) ?? 0, a.prefixlen))}/${a.prefixlen}`;
  // The kernel's metric for an IPv6 prefix route is 256 unless the address sets one.
  const metric = a.metric ?? (v6 ? 256 : undefined);
  const present = routes.some((r) => r.table === 'main' && r.dst === net && r.protocol === 'kernel' && r.metric === metric);
  if (present) return [];
  return [{ family: a.family, table: 'main', type: 'unicast', dst: net, dev, protocol: 'kernel', ...(v6 ? {} : { scope: 'link' }), ...(metric !== undefined ? { metric } : {}), flags: [] }];
}

/**
 * The steps that take an interface's layer-3 identity away, recording how to
 * put it back. A multipath route through several pod interfaces is the
 * first one's to move (`moved` remembers it): once deleted it is gone for
 * all, and put back after every interface's addresses are.
 */
function stripSteps(iface: PodInterface, p: string, moved: Set<string>): Step[] {
  const dev = iface.link.name;
  const steps: Step[] = [];
  // IPv6 address generation off first, so nothing regenerates the link-local
  // address once it is gone; it is put back last. A netlink change rather
  // than disable_ipv6, which engines mount read-only.
  const mode = iface.link.addrGenMode;
  if (mode && mode !== 'none' && ['eui64', 'stable_secret', 'random'].includes(mode))
    steps.push({ id: `${p}/ipv6-quiet`, do: [{ op: 'link-set', name: dev, addrGenMode: 'none' }], undo: [{ op: 'link-set', name: dev, addrGenMode: mode as 'eui64' }] });
  routeAddOrder(movableRoutes(iface.routes).filter((r) => {
    const key = routeSpec(r);
    if (moved.has(key)) return false;
    moved.add(key);
    return true;
  }))
    .reverse()
    .forEach((route, i) => steps.push({ id: `${p}/route-del/${i}`, do: [{ op: 'route-del', route }], undo: [{ op: 'route-add', route }] }));
  iface.neighbours
    .filter((n) => n.permanent && !n.proxy)
    .forEach((neigh, i) => steps.push({ id: `${p}/neigh-del/${i}`, do: [{ op: 'neigh-del', neigh }], undo: [{ op: 'neigh-add', neigh }] }));
  addressAddOrder(iface.addresses)
    .reverse()
    .forEach((addr, i) =>
      steps.push({
        id: `${p}/addr-del/${i}`,
        do: [{ op: 'addr-del', dev, addr }],
        undo: [{ op: 'addr-add', dev, addr }, ...strayPrefixRoutes(addr, iface.routes, dev).map((route) => ({ op: 'route-del' as const, route }))],
      }),
    );
  return steps;
}

function guardOf(a: Attachment, iface: PodInterface, antispoof: boolean): NicGuard {
  const v6 = a.ipv6;
  const reserved = v6 ? [...new Set([v6.router, ...(v6.gateway && /^fe[89ab]/i.test(v6.gateway) ? [v6.gateway] : [])])] : [];
  return {
    nic: a.nic,
    podIf: a.interface,
    tap: a.tap,
    ...(a.bridge ? { bridge: a.bridge } : {}),
    vmMac: a.mac,
    antispoof,
    // Every address of the interface, not only the one DHCP hands out: the
    // guest may configure the others itself.
    ipv4: iface.addresses.filter((x) => x.family === 'inet').map((x) => x.local),
    ipv6: iface.addresses.filter((x) => x.family === 'inet6' && x.scope === 'global').map((x) => x.local),
    guestLinkLocal: [eui64LinkLocal(a.mac)],
    reservedLinkLocal: reserved,
    // podtap answers for a router address of its own; a link-local gateway
    // answers for itself.
    ...(v6 && v6.router !== v6.gateway ? { ndProxy: v6.router } : {}),
  };
}

export function plan(pod: Pod, links: Link[], opts: PlanOptions, gen: (nic: number) => Generated): Plan {
  if (!pod.interfaces.length) throw new PodtapError('discovery', 'no pod interface to take over', 'name one with --interface');
  const primary = primaryNic(pod.interfaces);
  const taken = new Set<string>();
  const attachments = pod.interfaces.map((iface, nic): Attachment => {
    const names = nicNames(nic, opts);
    const datapath = chooseDatapath(iface.link, opts.datapath, opts.support);
    checkInterface(iface, links, names, datapath);
    for (const n of datapath === 'bridge' ? [names.bridge, names.tap] : [names.tap]) {
      if (taken.has(n) || pod.interfaces.some((i) => i.link.name === n))
        throw new PodtapError('usage', `the device name ${n} for NIC ${nic} (${iface.link.name}) is already used by another NIC or pod interface`, 'choose --bridge/--tap names that leave room for one per NIC (see `podtap --help`)');
      taken.add(n);
    }
    const g = gen(nic);
    const isPrimary = primary === nic;
    const v4 = ipv4Of(iface, isPrimary);
    const v6 = ipv6Of(iface, isPrimary);
    return {
      nic,
      interface: iface.link.name,
      kind: iface.link.kind,
      mac: iface.link.mac.toLowerCase(),
      mtu: iface.link.mtu,
      datapath,
      tap: names.tap,
      ...(datapath === 'bridge' ? { bridge: names.bridge, bridgeMac: g.bridgeMac, portMac: g.portMac } : {}),
      serverMac: g.serverMac,
      primary: isPrimary,
      ...(v4 ? { ipv4: v4 } : {}),
      ...(v6 ? { ipv6: v6 } : {}),
    };
  });
  const serverId = chooseServerId(pod.interfaces, opts);

  const steps: Step[] = [];
  // The TAPs first: they depend on nothing, and opening them in podtap
  // (which keeps the queue fds for the VMM) here lets every later link
  // change go to the kernel in one `ip -batch`.
  for (const a of attachments) {
    steps.push({
      id: `nic${a.nic}/tap-open`,
      do: [{ op: 'tap-open', tap: { name: a.tap, queues: opts.queues, persist: opts.persistTap, ...(opts.tapOwner ? { owner: opts.tapOwner } : {}) } }],
      undo: [{ op: 'link-del', name: a.tap }],
    });
  }
  const moved = new Set<string>();
  pod.interfaces.forEach((iface, nic) => steps.push(...stripSteps(iface, `nic${nic}`, moved)));
  attachments.forEach((a, nic) => {
    const up = pod.interfaces[nic]!.link.up;
    steps.push(...(a.datapath === 'bridge' ? bridgeSteps(a, up) : redirectSteps(a, up)));
  });
  let forward: Plan['forward'];
  if (opts.forwardPorts?.length) {
    const a = forwardNic(attachments);
    if (!a) throw new PodtapError('usage', '--forward-port needs a NIC with an IPv4 address to forward to, and no pod interface has one', 'leave --forward-port out for this pod');
    steps.push(...forwardSteps(a, serverId));
    forward = { nic: a.nic, from: serverId.split('/')[0]!, to: a.ipv4!.address };
  }
  // The guard tables last: by then every device they name exists.
  for (const family of ['bridge', 'netdev'] as const) {
    const path: Datapath = family === 'bridge' ? 'bridge' : 'redirect';
    const nics = attachments.filter((a) => a.datapath === path).map((a) => {
      const g = { ...guardOf(a, pod.interfaces[a.nic]!, opts.antispoof), ...(a.ipv4 ? { serverId: serverId.split('/')[0]! } : {}) };
      if (forward?.nic !== a.nic) return g;
      const ports = (proto: 'tcp' | 'udp') => opts.forwardPorts!.filter((f) => f.proto === proto).map((f) => f.port);
      return { ...g, forward: { address: forward.from, tcp: ports('tcp'), udp: ports('udp'), ...(a.bridgeMac ? { bridgeMac: a.bridgeMac } : {}) } };
    });
    // Where the kernel has egress hooks, a bridge port's own stack is
    // silenced there (with antispoof only: without it the guest may send
    // from any MAC, and the hook could not tell its frames apart).
    const quiet =
      family === 'netdev' && opts.support.egress && opts.antispoof
        ? attachments.filter((a) => a.datapath === 'bridge').map((a) => ({ nic: a.nic, podIf: a.interface, vmMac: a.mac }))
        : [];
    if (!nics.length && !quiet.length) continue;
    const table: NftTable = { family, name: TABLE, nics, ...(quiet.length ? { quiet } : {}) };
    steps.push({ id: `guard/${family}`, do: [{ op: 'nft-load', table }], undo: [{ op: 'nft-delete', family, name: TABLE }], background: true });
  }
  return { attachments, serverId, ...(forward ? { forward } : {}), steps };
}
