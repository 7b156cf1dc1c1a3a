// Discovery is read-only: one `ip -j -d -batch` reads links, addresses,
// routes of every table and family, and neighbours; files give DNS, hostname
// and sysctls. Parsing and choosing are pure so they are unit-tested on
// captured JSON.

import { readFileSync, existsSync } from 'node:fs';
import { hostname } from 'node:os';
import { PodtapError } from '../errors.ts';
import type { Address, Link, Neighbour, Pod, PodInterface, Route, Family } from './model.ts';
import { parseResolvConf } from './resolv.ts';
import { ipJsonBatch } from '../sys/ip.ts';
import { IFNAME_RULE, validIfname } from '../net/names.ts';

// `link show` for the IPv6 address generation mode: iproute2 prints it with
// `link show` only, never with `addr show`.
export const DISCOVERY_COMMANDS = ['addr show', 'route show table all', 'neigh show', 'link show'];

type Json = Record<string, any>;

export interface Observed {
  links: Link[];
  addresses: Map<string, Address[]>;
  routes: Route[];
  neighbours: Neighbour[];
}

const ADDR_FLAGS = ['secondary', 'nodad', 'noprefixroute', 'home', 'mngtmpaddr', 'optimistic', 'autojoin', 'dadfailed', 'deprecated', 'tentative', 'dynamic', 'stable-privacy'];

function kindOf(l: Json): string {
  if (l.linkinfo?.info_kind) return l.linkinfo.info_kind;
  if (l.link_type === 'loopback') return 'loopback';
  // No linkinfo on an Ethernet link: a physical NIC (or a driver ip can't
  // describe). Never something a CNI plugin creates.
  return l.link_type === 'ether' ? 'device' : 'unknown';
}

export function parseLinks(addrShow: Json[]): Observed['links'] {
  return addrShow.map((l) => ({
    name: l.ifname,
    ifindex: l.ifindex,
    kind: kindOf(l),
    mac: l.address,
    mtu: l.mtu,
    up: Array.isArray(l.flags) && l.flags.includes('UP'),
    ...(l.master ? { master: l.master } : {}),
    ...(Array.isArray(l.altnames) && l.altnames.length ? { altnames: l.altnames } : {}),
    ...(l.txqlen !== undefined ? { txqlen: l.txqlen } : {}),
    ...(l.inet6_addr_gen_mode ? { addrGenMode: l.inet6_addr_gen_mode } : {}),
    ...(l.link ? { parent: l.link } : {}),
    ...(l.linkinfo?.info_kind === 'macvlan' && l.linkinfo.info_data?.mode ? { macvlanMode: l.linkinfo.info_data.mode } : {}),
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

/** The route's `mtu` metric: ip -j prints metrics as [{"mtu": 1400}] (or {"mtu": {"value":..}} when locked). */
function routeMtu(r: Json): number | undefined {
  for (const m of Array.isArray(r.metrics) ? r.metrics : []) {
    const v = m?.mtu;
    if (typeof v === 'number') return v;
  }
  return undefined;
}

export function parseRoutes(routeShow: Json[]): Route[] {
  return routeShow.map((r): Route => {
    const family: Family = r.family === 'inet6' || (typeof r.dst === 'string' && r.dst.includes(':')) || (r.gateway ?? '').includes(':') ? 'inet6' : 'inet';
    const mtu = routeMtu(r);
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
      ...(mtu !== undefined ? { mtu } : {}),
    } as Route;
  });
}

export function parseNeighbours(neighShow: Json[]): Neighbour[] {
  return neighShow
    .filter((n) => typeof n.dst === 'string' && typeof n.dev === 'string')
    .map((n) => {
      const permanent = Array.isArray(n.state) && n.state.includes('PERMANENT');
      return {
        family: String(n.dst).includes(':') ? ('inet6' as const) : ('inet' as const),
        dst: n.dst,
        ...(n.lladdr ? { lladdr: n.lladdr } : {}),
        dev: n.dev,
        router: n.router === true,
        proxy: n.proxy === true,
        permanent,
      };
    })
    // Only permanent entries are state to restore; a learned entry matters only for its MAC.
    .filter((n) => n.permanent || (n.lladdr !== undefined && !n.proxy));
}

export function parseObserved(outputs: Json[][]): Observed {
  const [addr = [], route = [], neigh = [], link = []] = outputs;
  const genMode = new Map(link.filter((l) => l.inet6_addr_gen_mode).map((l) => [l.ifname, l.inet6_addr_gen_mode]));
  const links = addr.map((l) => (l.inet6_addr_gen_mode || !genMode.has(l.ifname) ? l : { ...l, inet6_addr_gen_mode: genMode.get(l.ifname) }));
  return { links: parseLinks(links), addresses: parseAddresses(addr), routes: parseRoutes(route), neighbours: parseNeighbours(neigh) };
}

/** Routes that "go through" a link: its device, or a multipath route with a hop on it. */
export function routesVia(routes: Route[], dev: string): Route[] {
  return routes.filter((r) => r.dev === dev || (r.nexthops ?? []).some((h) => h.dev === dev));
}

/** The kinds a CNI plugin leaves in a pod, which podtap takes over by default. */
export const CANDIDATE_KINDS = ['veth', 'macvlan'];
/** Kinds that are never a pod interface: podtap's own devices and loopback. */
const NEVER = ['bridge', 'tun', 'loopback'];

function describe(l: Link, addresses: Map<string, Address[]>): string {
  const ips = (addresses.get(l.name) ?? []).filter((a) => a.scope === 'global').map((a) => `${a.local}/${a.prefixlen}`);
  return `${l.name} (${l.kind}${ips.length ? ', ' + ips.join(' ') : ''})`;
}

export interface ChooseOptions {
  /** The interfaces named by the user, in NIC order. */
  wanted?: string[];
  /** Take over interfaces of kinds no CNI plugin creates (a host NIC). */
  force?: boolean;
}

/**
 * Picks the pod interfaces to take over: the ones named, or the only
 * candidate. Errors name what was found and how to choose.
 */
export function chooseInterfaces(links: Link[], addresses: Map<string, Address[]>, opts: ChooseOptions = {}): Link[] {
  const all = () => links.map((l) => describe(l, addresses)).join(', ') || 'none';
  if (opts.wanted && opts.wanted.length) {
    const seen = new Set<string>();
    return opts.wanted.map((name) => {
      if (seen.has(name)) throw new PodtapError('usage', `interface ${name} is named twice`, 'name each pod interface once; the order of --interface is the VM\'s NIC order');
      seen.add(name);
      const l = links.find((x) => x.name === name);
      if (!l) throw new PodtapError('discovery', `interface ${name} does not exist in this network namespace (links: ${all()})`, 'name an existing interface with --interface, or run podtap inside the pod network namespace');
      if (NEVER.includes(l.kind)) throw new PodtapError('discovery', `interface ${name} is a ${l.kind}, not a pod interface`, 'name the CNI interfaces (usually eth0, net1, ...) with --interface');
      if (!CANDIDATE_KINDS.includes(l.kind) && !opts.force)
        throw new PodtapError('discovery', `interface ${name} is a ${l.kind === 'device' ? 'physical NIC' : l.kind} ("${l.kind}"), which no CNI plugin puts in a pod`, `podtap takes over ${CANDIDATE_KINDS.join(' and ')} interfaces; if you really mean to give this ${l.kind} to the VM, add --force`);
      return l;
    });
  }
  const candidates = links.filter((l) => CANDIDATE_KINDS.includes(l.kind));
  if (candidates.length === 1) return [candidates[0]!];
  if (candidates.length === 0)
    throw new PodtapError('discovery', `no pod interface (${CANDIDATE_KINDS.join(' or ')}) in this network namespace (links: ${all()})`, 'run podtap inside the pod network namespace, or name the interface with --interface');
  throw new PodtapError(
    'discovery',
    `${candidates.length} pod interfaces in this network namespace: ${candidates.map((l) => describe(l, addresses)).join(', ')}`,
    `choose with --interface; repeat it (or PODTAP_INTERFACE=${candidates.map((l) => l.name).join(',')}) to give the VM one NIC per interface, in that order`,
  );
}

/**
 * Every name podtap will write into a command for these interfaces: the
 * interfaces and the devices of their routes' next hops. Checked before
 * anything changes, like names the user gives.
 */
export function checkNames(ifaces: PodInterface[]): void {
  for (const i of ifaces) {
    const names = new Set([i.link.name, ...i.routes.flatMap((r) => [...(r.dev ? [r.dev] : []), ...(r.nexthops ?? []).map((h) => h.dev)])]);
    for (const n of names) {
      if (!validIfname(n))
        throw new PodtapError('discovery', `the interface name ${JSON.stringify(n)} has characters podtap does not pass to ip or nft`, `rename the interface (CNI config "ifName"); names podtap accepts: ${IFNAME_RULE}`);
    }
  }
}

export interface DiscoverInput {
  interfaces?: string[];
  force?: boolean;
  resolvConf: string;
  resolvConfRequired?: boolean;
}

export function interfaceOf(obs: Observed, link: Link, sysctls: Record<string, string>): PodInterface {
  return {
    link,
    addresses: obs.addresses.get(link.name) ?? [],
    routes: routesVia(obs.routes, link.name),
    neighbours: obs.neighbours.filter((n) => n.dev === link.name),
    sysctls,
  };
}

export function assemble(obs: Observed, links: Link[], sysctls: (name: string) => Record<string, string>, resolvText: string, host: string): Pod {
  return {
    interfaces: links.map((l) => interfaceOf(obs, l, sysctls(l.name))),
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

/** Reads sysctls for the record; /proc/sys is read-only in containers, which reading doesn't mind. */
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

export async function discover(input: DiscoverInput, obs?: Observed): Promise<{ pod: Pod; observed: Observed }> {
  const observed = obs ?? (await observe());
  const links = chooseInterfaces(observed.links, observed.addresses, { ...(input.interfaces ? { wanted: input.interfaces } : {}), ...(input.force ? { force: true } : {}) });
  const pod = assemble(observed, links, (n) => readSysctls(validIfname(n) ? sysctlKeys(n) : []), readResolv(input.resolvConf, input.resolvConfRequired ?? false), hostname());
  checkNames(pod.interfaces);
  return { pod, observed };
}
