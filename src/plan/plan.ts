// Planning is pure: from what discovery found and the options, the ordered
// steps that turn the pod's veth into br0 + tap0, each with its undo. Undo
// replays in reverse, so the order here is also the restore order, read
// backwards: routes come back after addresses, on-link routes before the
// gateway routes that need them, the MAC before IPv6 is re-enabled (the
// kernel derives the link-local address from it).

import { PodtapError } from '../errors.ts';
import { guardRuleset, guardRemoval } from './guard.ts';
import { contains, formatIpv4, networkOf, parseCidr, parseIfaceCidr, parseIpv4, type Cidr } from '../net/ipv4.ts';
import { network6 } from '../net/ipv6.ts';
import type { Address, PodNetwork, Route, Link } from '../pod/model.ts';
import { addrDel, addrRestore, neighRestore, neighSpec, routeSpec, type Step, type Action } from './steps.ts';

export interface PlanOptions {
  bridge: string;
  tap: string;
  queues: number;
  linkLocal: string; // CIDR
  linkLocalExplicit: boolean;
  antispoof: boolean;
  persistTap: boolean;
  tapOwner?: { uid: number; gid?: number };
}

export interface Generated {
  vethMac: string; // what the veth wears while the VM has its MAC
  bridgeMac: string;
}

export interface VmIdentity {
  mac: string;
  ip: string; // CIDR
  address: string;
  prefixlen: number;
  mtu: number;
  gateway?: string;
}

export interface Plan {
  vm: VmIdentity;
  linkLocal: string; // CIDR actually used
  steps: Step[];
}

/** The address the VM gets: the first primary global IPv4 address of the veth. */
export function primaryIpv4(addresses: Address[]): Address | undefined {
  return addresses.find((a) => a.family === 'inet' && !a.flags.includes('secondary') && a.scope === 'global') ?? addresses.find((a) => a.family === 'inet');
}

/**
 * Routes podtap moves: every route through the veth except those the kernel
 * owns: the local table (derived from addresses) and the IPv6 link-local
 * prefix route, which comes and goes with IPv6 on the link. Restoring the
 * latter by hand races the kernel's own copy and can leave two.
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

/** Addresses in the order that recreates them as they were: primaries before their secondaries. */
export function addressAddOrder(addresses: Address[]): Address[] {
  const restorable = addresses.filter((a) => !a.flags.includes('dadfailed'));
  const v6LinkLocal = (a: Address) => a.family === 'inet6' && a.scope === 'link';
  // IPv6 link-local addresses the kernel generates come back by themselves
  // when IPv6 is re-enabled; the rest are restored explicitly.
  return restorable.filter((a) => !v6LinkLocal(a) || a.flags.includes('nodad') || a.flags.includes('noprefixroute'));
}

/** Kernel prefix routes that re-adding an address creates but the pod did not have (CNI ptp deletes its own). */
function strayPrefixRoutes(a: Address, routes: Route[], dev: string): string[] {
  if (a.flags.includes('noprefixroute') || a.peer) return [];
  const v6 = a.family === 'inet6';
  if (a.prefixlen === (v6 ? 128 : 32) || (v6 && a.scope === 'link')) return [];
  const net = `${v6 ? network6(a.local, a.prefixlen) : formatIpv4(networkOf(parseIpv4(a.local) ?? 0, a.prefixlen))}/${a.prefixlen}`;
  // The kernel's metric for an IPv6 prefix route is 256 unless the address sets one.
  const metric = a.metric ?? (v6 ? 256 : undefined);
  const present = routes.some((r) => r.table === 'main' && r.dst === net && r.protocol === 'kernel' && r.metric === metric);
  if (present) return [];
  return [`route del ${net} dev ${dev} table main proto kernel${v6 ? '' : ' scope link'}${metric !== undefined ? ' metric ' + metric : ''}`];
}

const LL_CANDIDATES = ['169.254.75.1/32', '169.254.75.2/32', '169.254.76.1/32', '169.254.77.1/32'];

function clashes(ll: string, pod: PodNetwork): boolean {
  const c = parseIfaceCidr(ll)!;
  const v4routes = pod.routes.filter((r) => r.family === 'inet');
  const v4addrs = pod.addresses.filter((a) => a.family === 'inet');
  const hosts = [...v4addrs.map((a) => a.local), ...v4routes.flatMap((r) => [r.gateway, r.prefsrc])]
    .map((h) => (h ? parseIpv4(h) : undefined))
    .filter((x): x is number => x !== undefined);
  // Networks the pod reaches directly or by route, other than the default.
  const nets: Cidr[] = [
    ...v4addrs.map((a) => ({ addr: parseIpv4(a.local) ?? 0, prefixlen: a.prefixlen })),
    ...v4routes.filter((r) => r.dst !== 'default').flatMap((r) => parseCidr(r.dst) ?? []),
  ];
  return (
    hosts.some((h) => contains(c.addr, c.prefixlen, h)) ||
    nets.some((n) => n.prefixlen > 0 && (contains(n.addr, n.prefixlen, c.addr) || contains(c.addr, c.prefixlen, n.addr)))
  );
}

export function chooseLinkLocal(pod: PodNetwork, opts: Pick<PlanOptions, 'linkLocal' | 'linkLocalExplicit'>): string {
  if (!clashes(opts.linkLocal, pod)) return opts.linkLocal;
  if (opts.linkLocalExplicit)
    throw new PodtapError('conflict', `--link-local ${opts.linkLocal} overlaps an address, route or gateway of the pod`, 'choose another 169.254.x.y address with --link-local');
  const free = LL_CANDIDATES.find((c) => !clashes(c, pod));
  if (!free) throw new PodtapError('conflict', 'every default link-local address overlaps the pod network', 'choose a free 169.254.x.y address with --link-local');
  return free;
}

/** Checks that need only discovery data; each names the problem and the fix. */
export function checkPod(pod: PodNetwork, links: Link[], opts: Pick<PlanOptions, 'bridge' | 'tap'>): Address {
  const v4 = primaryIpv4(pod.addresses);
  if (!v4)
    throw new PodtapError('discovery', `${pod.link.name} has no IPv4 address, so there is no identity to give the VM`, 'run podtap after the CNI plugin has configured the pod (IPv6-only pods are not supported yet)');
  if (pod.link.master)
    throw new PodtapError('conflict', `${pod.link.name} is already a port of ${pod.link.master}`, 'if a previous podtap left it so, run `podtap down`; otherwise release it first');
  for (const [what, name] of [['bridge', opts.bridge], ['tap', opts.tap]] as const) {
    if (links.some((l) => l.name === name))
      throw new PodtapError('conflict', `a link named ${name} already exists, so the ${what} can't be created`, `remove it, run \`podtap down\` if podtap left it, or choose another name with --${what}`);
  }
  return v4;
}

export function plan(pod: PodNetwork, links: Link[], opts: PlanOptions, gen: Generated): Plan {
  const v4 = checkPod(pod, links, opts);
  const dev = pod.link.name;
  const ll = chooseLinkLocal(pod, opts);
  const llAddr = ll.split('/')[0]!;
  const mtu = pod.link.mtu;
  const defaultRoute = pod.routes.find((r) => r.family === 'inet' && r.table === 'main' && r.dst === 'default' && r.gateway);
  const vm: VmIdentity = {
    mac: pod.link.mac,
    ip: `${v4.local}/${v4.prefixlen}`,
    address: v4.local,
    prefixlen: v4.prefixlen,
    mtu,
    ...(defaultRoute?.gateway ? { gateway: defaultRoute.gateway } : {}),
  };
  const steps: Step[] = [];
  const ip = (line: string): Action => ({ ip: line });

  // 0. The TAP first: it depends on nothing, and opening it in podtap (which
  // keeps the queue fds for the VMM) here lets every later link change go
  // to the kernel in one `ip -batch`.
  steps.push({
    id: 'tap-open',
    do: [{ tap: { name: opts.tap, queues: opts.queues, persist: opts.persistTap, ...(opts.tapOwner ? { owner: opts.tapOwner } : {}) } }],
    undo: [ip(`link del dev ${opts.tap}`)],
  });

  // 1. Take the pod's layer-3 identity off the veth, recording how to put it back.
  const routes = routeAddOrder(movableRoutes(pod.routes)).reverse();
  routes.forEach((r, i) => steps.push({ id: `route-del/${i}`, do: [ip(`route del ${routeSpec(r)}`)], undo: [ip(`route replace ${routeSpec(r)}`)] }));
  pod.neighbours.filter((n) => !n.proxy).forEach((n, i) =>
    steps.push({ id: `neigh-del/${i}`, do: [ip(`neigh del ${neighSpec(n)}`)], undo: [ip(neighRestore(n))] }),
  );
  const addrs = addressAddOrder(pod.addresses).reverse();
  addrs.forEach((a, i) =>
    steps.push({
      id: `addr-del/${i}`,
      do: [ip(addrDel(a, dev))],
      undo: [ip(addrRestore(a, dev)), ...strayPrefixRoutes(a, pod.routes, dev).map(ip)],
    }),
  );
  // 2. The VM takes the veth's MAC; the veth gets a generated one.
  steps.push({ id: 'veth-mac', do: [ip(`link set dev ${dev} address ${gen.vethMac}`)], undo: [ip(`link set dev ${dev} address ${pod.link.mac}`)] });

  // 3. The bridge: forwarding at once (no STP, no forward delay), multicast
  // flooded so the guest's IPv6 neighbour discovery works without snooping,
  // and no IPv6 address of its own, so it never speaks IPv6 (RS, MLD, DAD).
  steps.push({
    id: 'bridge-add',
    do: [ip(`link add name ${opts.bridge} address ${gen.bridgeMac} mtu ${mtu} type bridge stp_state 0 forward_delay 0 mcast_snooping 0`), ip(`link set dev ${opts.bridge} addrgenmode none`)],
    undo: [ip(`link del dev ${opts.bridge}`)],
  });
  steps.push({
    id: 'veth-enslave',
    // Learning off on the veth port: frames reflected from the node side with
    // the VM's source MAC must never move the VM's FDB entry away from the tap
    // (the Flannel/Weave failure). Unknown destinations still flood to the tap.
    do: [ip(`link set dev ${dev} master ${opts.bridge}`), ip(`link set dev ${dev} type bridge_slave learning off`)],
    undo: [ip(`link set dev ${dev} nomaster`)],
  });
  if (!pod.link.up) steps.push({ id: 'veth-up', do: [ip(`link set dev ${dev} up`)], undo: [ip(`link set dev ${dev} down`)] });

  steps.push({ id: 'tap-enslave', do: [ip(`link set dev ${opts.tap} addrgenmode none mtu ${mtu} master ${opts.bridge} up`)], undo: [] });

  // 5. The bridge's own address: the DHCP server identifier, plus the host
  // route and static neighbour that let replies reach the VM by unicast.
  steps.push({
    id: 'bridge-up',
    do: [
      ip(`link set dev ${opts.bridge} up`),
      ip(`addr add ${ll} dev ${opts.bridge}`),
      ip(`route add ${v4.local}/32 dev ${opts.bridge} src ${llAddr}`),
      ip(`neigh replace ${v4.local} lladdr ${pod.link.mac} dev ${opts.bridge} nud permanent`),
    ],
    undo: [],
  });

  // 6. A bridge port must not speak IPv6 of its own (RS, MLD, DAD) with the
  // pod's identity gone; disabling also drops the kernel's link-local
  // address. It comes after the one `ip -batch` of link changes, so its undo
  // puts the original MAC back first: the kernel derives the link-local
  // address from the MAC when IPv6 comes back on.
  const v6key = `net/ipv6/conf/${dev}/disable_ipv6`;
  if (pod.sysctls[v6key] === '0') {
    steps.push({
      id: 'veth-ipv6-off',
      do: [{ sysctl: v6key, value: '1' }],
      undo: [ip(`link set dev ${dev} address ${pod.link.mac}`), { sysctl: v6key, value: '0' }],
    });
  }

  // 7. The guard.
  const v4s = pod.addresses.filter((a) => a.family === 'inet').map((a) => a.local);
  const v6s = pod.addresses.filter((a) => a.family === 'inet6' && a.scope === 'global').map((a) => a.local);
  steps.push({
    id: 'guard',
    do: [
      {
        nft: guardRuleset({
          veth: dev,
          tap: opts.tap,
          bridgeMac: gen.bridgeMac,
          serverIp: llAddr,
          ...(opts.antispoof ? { antispoof: { vmMac: pod.link.mac, ipv4: v4s, ipv6: v6s } } : {}),
        }),
      },
    ],
    undo: [{ nft: guardRemoval() }],
    background: true,
  });
  return { vm, linkLocal: ll, steps };
}
