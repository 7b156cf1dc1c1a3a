// An attachment is one pod interface given to the VM as one NIC: the
// interface as discovered, the identity handed out (MAC, IPv4, IPv6, MTU;
// default route, DNS and hostname on the primary NIC only), the data path
// that carries its frames, its TAP (and bridge), and the MACs podtap uses.
// Pure: computed from discovery data, recorded in the journal, and read back
// by serving, status and adoption.

import { PodtapError } from '../errors.ts';
import { contains, parseCidr, parseIfaceCidr, parseIpv4, type Cidr } from '../net/ipv4.ts';
import { parseIpv6 } from '../net/ipv6.ts';
import type { Address, Link, Pod, PodInterface, Route } from '../pod/model.ts';
import type { Datapath } from './datapath/index.ts';

export interface Attachment {
  nic: number; // the VM's NIC order, from 0
  interface: string;
  kind: string;
  mac: string; // the VM's: the pod interface's own MAC
  mtu: number;
  datapath: Datapath;
  tap: string;
  bridge?: string; // bridge data path
  bridgeMac?: string;
  portMac?: string; // bridge data path: what the pod interface wears meanwhile
  serverMac: string; // source MAC of podtap's own replies on this NIC
  /** Carries the pod's default route, DNS and hostname. */
  primary: boolean;
  ipv4?: { address: string; prefixlen: number; gateway?: string };
  ipv6?: { addresses: string[]; gateway?: string; router: string; routerMac?: string };
}

export interface Names {
  bridge: string;
  tap: string;
}

/**
 * Device names for NIC i. NIC 0 keeps the given names; the others count on
 * from a trailing number (br0 → br1, br2; tap0 → tap1) or get one appended
 * (vmbr → vmbr1, vmbr2).
 */
export function nicNames(i: number, base: Names): Names {
  const next = (name: string): string => {
    if (i === 0) return name;
    const m = /^(.*?)(\d+)$/.exec(name);
    return m ? `${m[1]}${Number(m[2]) + i}` : `${name}${i}`;
  };
  return { bridge: next(base.bridge), tap: next(base.tap) };
}

const mainDefault = (r: Route) => r.table === 'main' && r.dst === 'default' && r.type === 'unicast';

/**
 * The NIC that carries the pod's default route (and so DNS and hostname):
 * IPv4's default route decides, then IPv6's; the lowest metric wins. None
 * when the pod has no default route.
 */
export function primaryNic(ifaces: PodInterface[]): number | undefined {
  for (const family of ['inet', 'inet6'] as const) {
    let best: { nic: number; metric: number } | undefined;
    ifaces.forEach((i, nic) => {
      for (const r of i.routes) {
        if (r.family !== family || !mainDefault(r) || r.dev !== i.link.name) continue;
        const metric = r.metric ?? 0;
        if (!best || metric < best.metric) best = { nic, metric };
      }
    });
    if (best) return best.nic;
  }
  return undefined;
}

/** The address the VM gets by DHCPv4: the first primary global IPv4 address. */
export function primaryIpv4(addresses: Address[]): Address | undefined {
  return addresses.find((a) => a.family === 'inet' && !a.flags.includes('secondary') && a.scope === 'global') ?? addresses.find((a) => a.family === 'inet' && a.scope === 'global');
}

/**
 * The prefix length handed out. CNI ptp deletes the kernel's connected route
 * for the pod's subnet and reaches the subnet through the gateway instead; a
 * guest given the pod's mask would recreate that route and ARP for
 * neighbours the node side does not answer. Without a connected route in
 * the pod, the guest gets a /32 and routes exactly as the pod.
 */
export function handedPrefixlen(iface: PodInterface, a: Address): number {
  const ip = parseIpv4(a.local);
  if (ip === undefined) return a.prefixlen;
  const connected = iface.routes.some((r) => {
    const d = r.family === 'inet' && r.table === 'main' && r.dev === iface.link.name && !r.gateway && r.type === 'unicast' ? parseCidr(r.dst) : undefined;
    return d !== undefined && d.prefixlen === a.prefixlen && d.addr === ((ip & (a.prefixlen ? (0xffffffff << (32 - a.prefixlen)) >>> 0 : 0)) >>> 0);
  });
  return connected ? a.prefixlen : 32;
}

/** IPv6 global addresses, and the pod's IPv6 gateway through this interface. */
export function ipv6Of(iface: PodInterface, primary: boolean): Attachment['ipv6'] {
  const addresses = iface.addresses.filter((a) => a.family === 'inet6' && a.scope === 'global' && !a.flags.includes('dadfailed')).map((a) => a.local);
  if (!addresses.length) return undefined;
  const v6main = iface.routes.filter((r) => r.family === 'inet6' && r.table === 'main' && r.type === 'unicast' && r.dev === iface.link.name && r.gateway);
  // The default route's next hop, else the next hop of the interface's other
  // routes (a secondary network with routes but no default).
  const gw = (primary ? v6main.find(mainDefault) : undefined)?.gateway ?? v6main.find((r) => !mainDefault(r))?.gateway;
  const linkLocalGw = gw !== undefined && /^fe[89ab]/i.test(gw);
  // The router the guest learns from podtap's advertisements: the gateway
  // itself when it is link-local (Calico's fe80::ecee:eeff:feee:eeee); else
  // podtap answers for a router address of its own with the gateway's MAC,
  // so the guest's off-link traffic goes to the same next hop as the pod's.
  const router = linkLocalGw ? gw! : 'fe80::1';
  const routerMac = gw ? iface.neighbours.find((n) => n.family === 'inet6' && n.dst === gw && n.lladdr)?.lladdr : undefined;
  return { addresses, ...(gw ? { gateway: gw } : {}), router, ...(routerMac ? { routerMac } : {}) };
}

export function ipv4Of(iface: PodInterface, primary: boolean): Attachment['ipv4'] {
  const a = primaryIpv4(iface.addresses);
  if (!a) return undefined;
  const gw = primary ? iface.routes.find((r) => r.family === 'inet' && mainDefault(r) && r.dev === iface.link.name && r.gateway)?.gateway : undefined;
  return { address: a.local, prefixlen: handedPrefixlen(iface, a), ...(gw ? { gateway: gw } : {}) };
}

// ----------------------------------------------------- the DHCP server id

const LL_CANDIDATES = ['169.254.75.1/32', '169.254.75.2/32', '169.254.76.1/32', '169.254.77.1/32'];

function clashes(ll: string, ifaces: PodInterface[]): boolean {
  const c = parseIfaceCidr(ll)!;
  const v4routes = ifaces.flatMap((i) => i.routes.filter((r) => r.family === 'inet'));
  const v4addrs = ifaces.flatMap((i) => i.addresses.filter((a) => a.family === 'inet'));
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

/**
 * The DHCPv4 server identifier: an address the guest reaches through its
 * default route (its unicast renewals go there, and podtap's packet socket
 * takes them off the wire), so it must not be one the pod uses.
 */
export function chooseServerId(ifaces: PodInterface[], opts: { linkLocal: string; linkLocalExplicit: boolean }): string {
  if (!clashes(opts.linkLocal, ifaces)) return opts.linkLocal;
  if (opts.linkLocalExplicit)
    throw new PodtapError('conflict', `--link-local ${opts.linkLocal} overlaps an address, route or gateway of the pod`, 'choose another 169.254.x.y address with --link-local');
  const free = LL_CANDIDATES.find((c) => !clashes(c, ifaces));
  if (!free) throw new PodtapError('conflict', 'every default link-local address overlaps the pod network', 'choose a free 169.254.x.y address with --link-local');
  return free;
}

/** Checks that need only discovery data; each names the problem and the fix. */
export function checkInterface(iface: PodInterface, links: Link[], names: Names, datapath: Datapath): void {
  const l = iface.link;
  if (l.master)
    throw new PodtapError('conflict', `${l.name} is already a port of ${l.master}`, 'if a previous podtap left it so, run `podtap down`; otherwise release it first');
  const wanted: [string, string][] = datapath === 'bridge' ? [['bridge', names.bridge], ['tap', names.tap]] : [['tap', names.tap]];
  for (const [what, name] of wanted) {
    if (links.some((x) => x.name === name))
      throw new PodtapError('conflict', `a link named ${name} already exists, so the ${what} for ${l.name} can't be created`, `remove it, run \`podtap down\` if podtap left it, or choose another name with --${what}`);
    // The kernel resolves an alternative name like a name: creating the
    // device would fail, and undoing it (`link del dev NAME`) would delete
    // the link that carries the alternative name.
    const owner = links.find((x) => x.altnames?.includes(name));
    if (owner)
      throw new PodtapError('conflict', `${name} is an alternative name of ${owner.name}, so the ${what} for ${l.name} can't be created`, `choose another name with --${what}, or remove the alternative name (ip link property del dev ${owner.name} altname ${name})`);
  }
  for (const a of iface.addresses) if (a.family === 'inet6' && parseIpv6(a.local) === undefined) throw new PodtapError('discovery', `${l.name} has an IPv6 address podtap cannot read: ${a.local}`, 'report this as a bug with `podtap inspect` output');
}

export function podHasIdentity(pod: Pod): boolean {
  return pod.interfaces.some((i) => i.addresses.some((a) => a.scope === 'global'));
}
