// Discovery is read-only: one `ip -j -d -batch` reads links, addresses,
// routes of every table and family, and permanent neighbours; files give DNS,
// hostname and sysctls. Parsing is pure so it is unit-tested on captured JSON.

import { readFileSync, existsSync } from 'node:fs';
import { hostname } from 'node:os';
import { PodtapError } from '../errors.ts';
import type { Address, Link, Neighbour, PodNetwork, Route, Family } from './model.ts';
import { parseResolvConf } from './resolv.ts';
import { ipJsonBatch } from '../sys/ip.ts';

export const DISCOVERY_COMMANDS = ['addr show', 'route show table all', 'neigh show nud permanent'];

type Json = Record<string, any>;

export interface Observed {
  links: Link[];
  addresses: Map<string, Address[]>;
  routes: Route[];
  neighbours: Neighbour[];
}

const ADDR_FLAGS = ['secondary', 'nodad', 'noprefixroute', 'home', 'mngtmpaddr', 'optimistic', 'autojoin', 'dadfailed', 'deprecated', 'tentative', 'dynamic', 'stable-privacy'];

export function parseLinks(addrShow: Json[]): Observed['links'] {
  return addrShow.map((l) => ({
    name: l.ifname,
    ifindex: l.ifindex,
    kind: l.linkinfo?.info_kind ?? (l.link_type === 'loopback' ? 'loopback' : 'unknown'),
    mac: l.address,
    mtu: l.mtu,
    up: Array.isArray(l.flags) && l.flags.includes('UP'),
    ...(l.master ? { master: l.master } : {}),
    ...(l.txqlen !== undefined ? { txqlen: l.txqlen } : {}),
    ...(l.linkinfo?.info_kind === 'tun'
      ? { tun: { attachedQueues: l.linkinfo.info_data?.numqueues ?? 0, persist: l.linkinfo.info_data?.persist === true, multiQueue: l.linkinfo.info_data?.multi_queue === true } }
      : {}),
  }));
}

export function parseAddresses(addrShow: Json[]): Map<string, Address[]> {
  const out = new Map<string, Address[]>();
  for (const l of addrShow) {
    out.set(
      l.ifname,
      (l.addr_info ?? []).map((a: Json): Address => ({
        family: a.family as Family,
        local: a.local,
        prefixlen: a.prefixlen,
        ...(a.broadcast ? { broadcast: a.broadcast } : {}),
        ...(a.address && a.address !== a.local ? { peer: a.address } : {}),
        scope: String(a.scope),
        ...(a.label ? { label: a.label } : {}),
        flags: ADDR_FLAGS.filter((f) => a[f] === true),
        ...(a.metric !== undefined ? { metric: a.metric } : {}),
        ...(a.valid_life_time !== undefined && a.valid_life_time !== 4294967295
          ? { validLft: a.valid_life_time, preferredLft: a.preferred_life_time }
          : {}),
      })),
    );
  }
  return out;
}

export function parseRoutes(routeShow: Json[]): Route[] {
  return routeShow.map((r): Route => {
    const family: Family = r.family === 'inet6' || (typeof r.dst === 'string' && r.dst.includes(':')) || (r.gateway ?? '').includes(':') ? 'inet6' : 'inet';
    return {
      family,
      table: String(r.table ?? 'main'),
      type: r.type ?? 'unicast',
      dst: r.dst,
      ...(r.gateway ? { gateway: r.gateway } : {}),
      dev: r.dev,
      ...(r.protocol !== undefined ? { protocol: String(r.protocol) } : {}),
      ...(r.scope !== undefined ? { scope: String(r.scope) } : {}),
      ...(r.metric !== undefined ? { metric: r.metric } : {}),
      ...(r.prefsrc ? { prefsrc: r.prefsrc } : {}),
      flags: r.flags ?? [],
      ...(r.pref ? { pref: r.pref } : {}),
      ...(r.nexthops ? { nexthops: r.nexthops } : {}),
      ...(r.tos !== undefined && r.tos !== 0 && r.tos !== '0' ? { tos: String(r.tos) } : {}),
      ...(r.expires !== undefined ? { expires: r.expires } : {}),
    } as Route;
  });
}

export function parseNeighbours(neighShow: Json[]): Neighbour[] {
  return neighShow
    .filter((n) => Array.isArray(n.state) && n.state.includes('PERMANENT'))
    .map((n) => ({
      family: String(n.dst).includes(':') ? 'inet6' : 'inet',
      dst: n.dst,
      ...(n.lladdr ? { lladdr: n.lladdr } : {}),
      dev: n.dev,
      router: n.router === true,
      proxy: n.proxy === true,
    }));
}

export function parseObserved(outputs: Json[][]): Observed {
  const [addr = [], route = [], neigh = []] = outputs;
  return { links: parseLinks(addr), addresses: parseAddresses(addr), routes: parseRoutes(route), neighbours: parseNeighbours(neigh) };
}

/** Routes that "go through" a link: its device, or a multipath route with a hop on it. */
export function routesVia(routes: Route[], dev: string): Route[] {
  return routes.filter((r) => r.dev === dev || (r.nexthops ?? []).some((h) => h.dev === dev));
}

/** Picks the pod's veth: the one named, or the only veth. Errors say what was found. */
export function chooseLink(links: Link[], addresses: Map<string, Address[]>, wanted?: string): Link {
  const describe = (l: Link) => {
    const v4 = (addresses.get(l.name) ?? []).filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`);
    return `${l.name} (${l.kind}${v4.length ? ', ' + v4.join(' ') : ''})`;
  };
  if (wanted) {
    const l = links.find((x) => x.name === wanted);
    if (!l)
      throw new PodtapError('discovery', `interface ${wanted} does not exist in this network namespace (links: ${links.map(describe).join(', ')})`, 'name an existing interface with --interface, or run podtap inside the pod network namespace');
    if (['bridge', 'tun', 'loopback'].includes(l.kind))
      throw new PodtapError('discovery', `interface ${wanted} is a ${l.kind}, not the pod's veth`, 'name the CNI veth (usually eth0) with --interface');
    return l;
  }
  const veths = links.filter((l) => l.kind === 'veth');
  if (veths.length === 1) return veths[0]!;
  if (veths.length === 0)
    throw new PodtapError('discovery', `no veth in this network namespace (links: ${links.map(describe).join(', ') || 'none'})`, 'run podtap inside the pod network namespace, or name the interface with --interface');
  throw new PodtapError('discovery', `${veths.length} veths in this network namespace: ${veths.map(describe).join(', ')}`, 'choose one with --interface');
}

export interface DiscoverInput {
  interface?: string;
  resolvConf: string;
  resolvConfRequired?: boolean;
}

export function assemble(obs: Observed, link: Link, sysctls: Record<string, string>, resolvText: string, host: string): PodNetwork {
  return {
    link,
    addresses: obs.addresses.get(link.name) ?? [],
    routes: routesVia(obs.routes, link.name),
    neighbours: obs.neighbours.filter((n) => n.dev === link.name),
    sysctls,
    dns: parseResolvConf(resolvText),
    hostname: host,
  };
}

export function sysctlKeys(ifname: string): string[] {
  return [
    `net/ipv6/conf/${ifname}/disable_ipv6`,
    `net/ipv6/conf/${ifname}/accept_ra`,
    `net/ipv6/conf/${ifname}/addr_gen_mode`,
    `net/ipv4/conf/${ifname}/proxy_arp`,
    `net/ipv4/conf/${ifname}/rp_filter`,
    `net/ipv4/ip_forward`,
  ];
}

export function readSysctls(keys: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of keys) {
    try {
      out[k] = readFileSync(`/proc/sys/${k}`, 'utf8').trim();
    } catch {
      // IPv6 may be compiled out or disabled at boot: simply not recorded.
    }
  }
  return out;
}

function readResolv(path: string, required: boolean): string {
  // A pod without /etc/resolv.conf simply has no DNS to hand over; a file
  // named explicitly must exist.
  if (!required && !existsSync(path)) return '';
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    throw new PodtapError('environment', `cannot read ${path}: ${(e as Error).message}`, 'make the resolver file readable, or point --resolv-conf at another file', e);
  }
}

export async function observe(): Promise<Observed> {
  return parseObserved(await ipJsonBatch(DISCOVERY_COMMANDS));
}

export async function discover(input: DiscoverInput, obs?: Observed): Promise<{ pod: PodNetwork; observed: Observed }> {
  const observed = obs ?? (await observe());
  const link = chooseLink(observed.links, observed.addresses, input.interface);
  const pod = assemble(observed, link, readSysctls(sysctlKeys(link.name)), readResolv(input.resolvConf, input.resolvConfRequired ?? false), hostname());
  return { pod, observed };
}
