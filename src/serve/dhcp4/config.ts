// What one NIC's guest is told by DHCPv4, derived from what discovery found
// on its pod interface. Pure: the same interface always gives the same
// config and warnings, so the identity the guest gets can be reviewed and
// tested without a namespace. Only the primary NIC (the one that carried the
// pod's default route) gets a default route, DNS and the hostname.

import type { Dns, PodInterface, Route } from '../../pod/model.ts';
import { handedPrefixlen, primaryIpv4 } from '../../plan/attachment.ts';
import { checkDomainName } from './options.ts';
import { contains, formatCidr, formatIpv4, maskOf, networkOf, parseCidr, parseIpv4 } from '../../net/ipv4.ts';
import type { Cidr } from '../../net/ipv4.ts';

export interface DhcpConfig {
  vmMac: string;
  ip: string;
  prefixlen: number;
  router?: string;
  routes: { dst: string /* CIDR */; gateway: string }[];
  dns: string[];
  domain?: string;
  search: string[];
  hostname?: string;
  mtu: number;
  broadcast?: string;
  serverId: string;
  leaseSeconds: number;
}

interface Candidate {
  dst: Cidr;
  gateway: number; // 0 = on-link
  metric: number;
  text: string; // for warnings
}

function describe(r: Route): string {
  return `${r.dst}${r.gateway ? ` via ${r.gateway}` : ''} dev ${r.dev ?? 'multipath'}${r.table !== 'main' ? ` table ${r.table}` : ''}`;
}

/**
 * Longest-prefix match over the on-link subnet the guest derives from its
 * address and mask plus the routes it is about to be given. A gateway is
 * usable only if that match is on-link; a tie between the subnet and a
 * gateway route for the same prefix counts as not on-link, because clients
 * resolve that clash differently.
 */
function reachableOnLink(gw: number, ip: number, prefixlen: number, routes: readonly Candidate[]): boolean {
  let best = -1;
  let onLink = false;
  if (prefixlen < 32 && contains(ip, prefixlen, gw)) {
    best = prefixlen;
    onLink = true;
  }
  for (const r of routes) {
    if (!contains(r.dst.addr, r.dst.prefixlen, gw)) continue;
    if (r.dst.prefixlen > best || (r.dst.prefixlen === best && r.gateway !== 0)) {
      best = r.dst.prefixlen;
      onLink = r.gateway === 0;
    }
  }
  return onLink;
}

export interface NicContext {
  serverId: string;
  leaseSeconds: number;
  /** Carries the pod's default route, DNS and hostname. */
  primary: boolean;
  dns: Dns;
  hostname: string;
}

/** The config for one NIC, or no config when its interface has no IPv4 address (nothing to serve). */
export function dhcpConfigFrom(iface: PodInterface, opts: NicContext): { config?: DhcpConfig; warnings: string[] } {
  const warnings: string[] = [];
  const dev = iface.link.name;

  // DHCP hands out one address: the first primary global one.
  const v4 = iface.addresses.filter((a) => a.family === 'inet' && a.scope === 'global');
  const primary = primaryIpv4(iface.addresses);
  if (!primary) return { warnings };
  for (const a of v4) {
    if (a !== primary) {
      warnings.push(`address ${a.local}/${a.prefixlen} on ${dev} cannot be given by DHCP; the VM gets only ${primary.local}/${primary.prefixlen}`);
    }
  }
  const ip = parseIpv4(primary.local);
  if (ip === undefined) throw new Error(`bad IPv4 address ${primary.local} on ${dev}`);
  const subnet = networkOf(ip, primary.prefixlen);
  const prefixlen = handedPrefixlen(iface, primary);
  const pod = { routes: iface.routes, dns: opts.primary ? opts.dns : { nameservers: [], search: [], options: [] }, hostname: opts.primary ? opts.hostname : '' };

  // Routes: main table, IPv4, through the interface, unicast; the default
  // route on the primary NIC only, so the guest has exactly one.
  const byDst = new Map<string, Candidate>();
  let defaultRoute: Candidate | undefined;
  for (const r of pod.routes) {
    if (r.family !== 'inet' || r.dev !== dev) continue;
    if (r.table !== 'main') {
      if (r.table !== 'local') warnings.push(`route ${describe(r)} is not in the main table; policy routing is not given to the VM`);
      continue;
    }
    if (r.type !== 'unicast') {
      if (r.type !== 'broadcast' && r.type !== 'local' && r.type !== 'multicast') {
        warnings.push(`route ${describe(r)} of type ${r.type} is not given to the VM`);
      }
      continue;
    }
    const dst = parseCidr(r.dst);
    if (!dst) {
      warnings.push(`route ${describe(r)} has a destination that is not IPv4; skipped`);
      continue;
    }
    // The guest makes its own subnet route from the address and mask.
    if (r.protocol === 'kernel' && r.scope === 'link' && !r.gateway && dst.prefixlen === primary.prefixlen && dst.addr === subnet) {
      continue;
    }
    let gateway = 0;
    if (r.gateway) {
      const g = parseIpv4(r.gateway);
      if (g === undefined) {
        warnings.push(`route ${describe(r)} has a gateway that is not IPv4; skipped`);
        continue;
      }
      gateway = g;
    }
    if (dst.prefixlen === 0 && !opts.primary) {
      warnings.push(`default route ${describe(r)} is not given to the VM: its default route is on the NIC of the pod's own default route`);
      continue;
    }
    const c: Candidate = { dst, gateway, metric: r.metric ?? 0, text: describe(r) };
    // Option 121 has no metrics: of several routes to one destination, the
    // one the pod itself would use (lowest metric) wins.
    const key = formatCidr(dst);
    const earlier = dst.prefixlen === 0 ? defaultRoute : byDst.get(key);
    if (earlier) {
      const [keep, drop] = earlier.metric <= c.metric ? [earlier, c] : [c, earlier];
      warnings.push(`route ${drop.text} (metric ${drop.metric}) is shadowed by ${keep.text} (metric ${keep.metric}); option 121 carries no metrics, so only the latter is given`);
      if (keep === earlier) continue;
    }
    if (dst.prefixlen === 0) defaultRoute = c;
    else byDst.set(key, c);
  }

  // On-link routes first, then gateway routes, then the default route: a
  // client that installs them in order always finds each gateway reachable.
  const rest = [...byDst.values()];
  const ordered: Candidate[] = [...rest.filter((r) => r.gateway === 0), ...rest.filter((r) => r.gateway !== 0)];
  if (defaultRoute) ordered.push(defaultRoute);

  // A gateway the pod reaches through an `onlink` flag, or whose subnet
  // route is a gateway route (CNI ptp), needs an explicit host route in the
  // guest or its routes can't be installed.
  const synthesized: Candidate[] = [];
  for (const r of ordered) {
    if (r.gateway === 0) continue;
    if (synthesized.some((s) => s.dst.addr === r.gateway)) continue;
    if (!reachableOnLink(r.gateway, ip, prefixlen, [...synthesized, ...ordered])) {
      const s: Candidate = { dst: { addr: r.gateway, prefixlen: 32 }, gateway: 0, metric: 0, text: `${formatIpv4(r.gateway)}/32` };
      synthesized.push(s);
      warnings.push(`gateway ${formatIpv4(r.gateway)} is not on-link for the VM by its address and routes; adding an on-link host route ${s.text} before ${r.text}`);
    }
  }
  const routes = [...synthesized, ...ordered].map((r) => ({ dst: formatCidr(r.dst), gateway: formatIpv4(r.gateway) }));

  const dns: string[] = [];
  for (const ns of pod.dns.nameservers) if (parseIpv4(ns) !== undefined) dns.push(ns);

  const search: string[] = [];
  for (const s of pod.dns.search) {
    const why = checkDomainName(s);
    if (why) warnings.push(`search domain ${JSON.stringify(s)} cannot be encoded (${why}); skipped`);
    else search.push(s.endsWith('.') ? s.slice(0, -1) : s);
  }

  let hostname: string | undefined;
  if (pod.hostname) {
    const why = checkDomainName(pod.hostname);
    if (why) warnings.push(`hostname ${JSON.stringify(pod.hostname)} cannot be sent (${why}); skipped`);
    else hostname = pod.hostname;
  }

  // Option 28 only means something where the subnet has a broadcast address.
  let broadcast: string | undefined;
  if (prefixlen <= 30) {
    broadcast = primary.broadcast ?? formatIpv4((subnet | ~maskOf(prefixlen)) >>> 0);
  }

  const config: DhcpConfig = {
    vmMac: '',
    ip: primary.local,
    prefixlen,
    routes,
    dns,
    search,
    mtu: iface.link.mtu,
    serverId: opts.serverId,
    leaseSeconds: opts.leaseSeconds,
  };
  // The VM's MAC is the pod veth's: that is what makes the guest the pod on
  // the wire (peers' ARP caches and the CNI's antispoofing keep working).
  config.vmMac = iface.link.mac.toLowerCase();
  // An on-link default route ("default dev eth0") has no router to name.
  if (defaultRoute && defaultRoute.gateway !== 0) config.router = formatIpv4(defaultRoute.gateway);
  if (search[0] !== undefined) config.domain = search[0];
  if (hostname !== undefined) config.hostname = hostname;
  if (broadcast !== undefined) config.broadcast = broadcast;
  return { config, warnings };
}
