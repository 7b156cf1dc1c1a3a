// The router advertisement podtap sends the VM on the pod gateway's behalf
// (RFC 4861 §4.2 and §6.2, RFC 4191 route information, RFC 8106 RDNSS and
// DNSSL). raConfigFrom decides what the guest is told, from the NIC's IPv6
// identity; buildRouterAdvertisement only lays it out. What it says, and
// why:
//
// - M=1 and O=1: addresses and DNS come from our DHCPv6 server, and clients
//   such as systemd-networkd only start DHCPv6 when an RA asks for it.
// - Prefix information only for prefixes that were on-link for the pod, with
//   L=1 and A=0: a guest doing SLAAC would invent addresses the pod does not
//   own and antispoofing would drop its traffic. A /128 pod has none.
// - A router lifetime only on the NIC that carries the pod's default route;
//   0 elsewhere, so the guest never gets a default route the pod lacks.
// - Route information options for the pod's other off-link routes.
// - The link MTU, lowered to the smallest MTU any of those routes has.
//
// Lifetimes are three unsolicited intervals (RFC 4861's default for the
// router lifetime, RFC 8106's for RDNSS and DNSSL): a guest keeps
// everything across two lost RAs and lets it go within half an hour of
// podtap going away.

import { network6, parseIpv6, formatIpv6 } from '../../net/ipv6.ts';
import { encodeSearchList, checkDomainName, decodeSearchList, OptionError } from '../dhcp4/options.ts';
import { formatIpv6Bytes, formatMac, icmp6Frame, ipv6MulticastMac, isIpv6LinkLocal, isIpv6Multicast, mustIpv6 } from '../frames.ts';
import { ALL_NODES, ND, ND_HOP_LIMIT, NDOPT, linkLayerOption, parseNdOptions } from './ndp.ts';
import type { NdFailure, NdPacket, NdParseOptions } from './ndp.ts';

/** The NIC's IPv6 identity, as the plan hands it over. */
export interface Ipv6Identity {
  addresses: { address: string; prefixlen: number }[]; // the pod interface's global addresses, handed out by DHCPv6
  onLink: { prefix: string; prefixlen: number }[]; // prefixes that were on-link (connected) for the pod; none for a /128 pod
  routes: { prefix: string; prefixlen: number; metric?: number; mtu?: number }[]; // other off-link routes through the pod's gateway
  defaultRoute?: { metric?: number; mtu?: number }; // present when this NIC carries the pod's default route
  router: { linkLocal: string; mac?: string }; // the RA source address; mac = the gateway's MAC when known
  mtu: number;
  dns?: { servers: string[]; search: string[] }; // only on the NIC that carries DNS; servers may mix v4/v6
}

/** RFC 4861 §6.2.1 defaults, which fit a link with one host and a server that never moves. */
export const MAX_RTR_ADV_INTERVAL = 600;
export const MIN_RTR_ADV_INTERVAL = 200;
/** RFC 4861 §6.2.1: AdvDefaultLifetime is at most 9000 s. */
const MAX_ROUTER_LIFETIME = 9000;
export const IPV6_MIN_MTU = 1280;
const IPV6_HEADER = 40;
const ICMP_HEADER = 4;
const RA_FIXED = 12;

export type RoutePreference = 'high' | 'medium' | 'low';

const PREF_BITS: Record<RoutePreference, number> = { high: 0x08, medium: 0x00, low: 0x18 };

function preferenceOf(bits: number): RoutePreference | undefined {
  switch (bits & 0x18) {
    case 0x08:
      return 'high';
    case 0x00:
      return 'medium';
    case 0x18:
      return 'low';
    default:
      return undefined; // 10: reserved (RFC 4191 §2.1)
  }
}

export interface RaPrefix {
  prefix: string; // host bits clear
  prefixlen: number;
  onLink: boolean;
  autonomous: boolean;
  validLifetime: number;
  preferredLifetime: number;
}

export interface RaRoute {
  prefix: string;
  prefixlen: number;
  lifetime: number;
  preference: RoutePreference;
}

export interface RaConfig {
  source: string; // link-local: RFC 4861 §6.1.2 has hosts drop anything else
  sourceMac?: string; // source link-layer option
  managed: boolean;
  other: boolean;
  preference: RoutePreference; // default router preference (RFC 4191 §2.2)
  curHopLimit: number; // 0: the guest keeps its own
  routerLifetime: number;
  reachableTime: number; // ms, 0: unspecified
  retransTimer: number; // ms, 0: unspecified
  mtu?: number;
  prefixes: RaPrefix[];
  routes: RaRoute[];
  rdnss?: { servers: string[]; lifetime: number };
  dnssl?: { domains: string[]; lifetime: number };
  /** Unsolicited RA timing, seconds (schedule.ts). */
  maxInterval: number;
  minInterval: number;
}

export interface RaOptions {
  maxInterval?: number; // seconds, 4..1800 (RFC 4861 §6.2.1)
  minInterval?: number; // seconds, 3..0.75 × maxInterval
}

function prefixText(prefix: string, prefixlen: number): string {
  return `${prefix}/${prefixlen}`;
}

function validPrefixlen(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= 128;
}

/** Bytes the RA's ICMPv6 body takes with these options. */
function optionsSize(c: Pick<RaConfig, 'sourceMac' | 'mtu' | 'prefixes' | 'routes' | 'rdnss' | 'dnssl'>): number {
  let n = 0;
  if (c.sourceMac) n += 8;
  if (c.mtu !== undefined) n += 8;
  n += 32 * c.prefixes.length;
  for (const r of c.routes) n += routeInfoLength(r.prefixlen) * 8;
  if (c.rdnss) n += 8 + 16 * c.rdnss.servers.length;
  if (c.dnssl) n += dnsslLength(c.dnssl.domains) * 8;
  return n;
}

/** RFC 4191 §2.3: 1, 2 or 3 units, as the prefix needs 0, 8 or 16 bytes. */
function routeInfoLength(prefixlen: number): number {
  return prefixlen === 0 ? 1 : prefixlen <= 64 ? 2 : 3;
}

function dnsslLength(domains: readonly string[]): number {
  return Math.ceil((8 + encodeSearchList(domains, false).length) / 8);
}

/**
 * What the guest is told on this NIC. Problems the pod can legitimately
 * have (a search domain no encoder takes, a route MTU below IPv6's
 * minimum) become warnings; a malformed identity is a bug and throws.
 */
export function raConfigFrom(identity: Ipv6Identity, opts: RaOptions = {}): { config: RaConfig; warnings: string[] } {
  const warnings: string[] = [];
  const maxInterval = opts.maxInterval ?? MAX_RTR_ADV_INTERVAL;
  if (!Number.isInteger(maxInterval) || maxInterval < 4 || maxInterval > 1800) throw new Error(`bad MaxRtrAdvInterval ${maxInterval}`);
  const minInterval = opts.minInterval ?? (opts.maxInterval === undefined ? MIN_RTR_ADV_INTERVAL : Math.max(3, Math.floor(maxInterval / 3)));
  if (!Number.isInteger(minInterval) || minInterval < 3 || minInterval > 0.75 * maxInterval) throw new Error(`bad MinRtrAdvInterval ${minInterval}`);
  const lifetime = Math.min(3 * maxInterval, MAX_ROUTER_LIFETIME);

  const source = identity.router.linkLocal;
  if (!isIpv6LinkLocal(source)) throw new Error(`router address ${JSON.stringify(source)} is not link-local; RFC 4861 hosts drop such RAs`);
  if (!Number.isInteger(identity.mtu) || identity.mtu < 1) throw new Error(`bad MTU ${identity.mtu}`);

  // On-link prefixes. Link-local and multicast ones are not the guest's to
  // learn (§6.2.1: no prefix option for the link-local prefix).
  const prefixes: RaPrefix[] = [];
  const onLinkKeys = new Set<string>();
  for (const p of identity.onLink) {
    if (parseIpv6(p.prefix) === undefined || !validPrefixlen(p.prefixlen)) throw new Error(`bad on-link prefix ${prefixText(p.prefix, p.prefixlen)}`);
    const prefix = network6(p.prefix, p.prefixlen);
    const key = prefixText(prefix, p.prefixlen);
    if (isIpv6LinkLocal(prefix) || isIpv6Multicast(prefix) || p.prefixlen < 8) {
      warnings.push(`on-link prefix ${key} is not advertised`);
      continue;
    }
    if (onLinkKeys.has(key)) continue;
    onLinkKeys.add(key);
    prefixes.push({ prefix, prefixlen: p.prefixlen, onLink: true, autonomous: false, validLifetime: lifetime, preferredLifetime: lifetime });
  }

  // Off-link routes. The default route is the router lifetime's business;
  // of several routes to one prefix the pod's own choice (lowest metric)
  // wins, since an RA carries no metrics.
  const byKey = new Map<string, { route: RaRoute; metric: number }>();
  let mtu = identity.mtu;
  for (const r of identity.routes) {
    if (parseIpv6(r.prefix) === undefined || !validPrefixlen(r.prefixlen)) throw new Error(`bad route ${prefixText(r.prefix, r.prefixlen)}`);
    const prefix = network6(r.prefix, r.prefixlen);
    const key = prefixText(prefix, r.prefixlen);
    if (r.prefixlen === 0) {
      warnings.push(`route ${key} is a default route; it is given by the router lifetime, not a route information option`);
      continue;
    }
    if (isIpv6LinkLocal(prefix) || isIpv6Multicast(prefix)) {
      warnings.push(`route ${key} is not advertised`);
      continue;
    }
    if (onLinkKeys.has(key)) continue;
    if (r.mtu !== undefined) mtu = Math.min(mtu, r.mtu);
    const metric = r.metric ?? 0;
    const earlier = byKey.get(key);
    if (earlier && earlier.metric <= metric) continue;
    byKey.set(key, { route: { prefix, prefixlen: r.prefixlen, lifetime, preference: 'medium' }, metric });
  }
  const routes = [...byKey.values()].map((x) => x.route);
  if (identity.defaultRoute?.mtu !== undefined) mtu = Math.min(mtu, identity.defaultRoute.mtu);

  const config: RaConfig = {
    source: formatIpv6(parseIpv6(source)!),
    managed: true,
    other: true,
    preference: 'medium',
    curHopLimit: 0,
    routerLifetime: identity.defaultRoute ? lifetime : 0,
    reachableTime: 0,
    retransTimer: 0,
    prefixes,
    routes,
    maxInterval,
    minInterval,
  };
  if (identity.router.mac) config.sourceMac = identity.router.mac.toLowerCase();
  // §4.6.4 carries any value, but hosts ignore one below IPv6's minimum.
  if (mtu >= IPV6_MIN_MTU) config.mtu = mtu;
  else warnings.push(`MTU ${mtu} is below IPv6's minimum of ${IPV6_MIN_MTU}; no MTU option is sent`);

  // DNS over IPv6 only where the pod has an IPv6 nameserver. A search list
  // alone (the pod's nameservers all IPv4) would tell a guest configured by
  // RA a search path with no resolver to use it; a dual-stack guest gets
  // that list with the IPv4 nameservers by DHCPv4 already.
  const servers = (identity.dns?.servers ?? []).filter((s) => parseIpv6(s) !== undefined).map((s) => formatIpv6(parseIpv6(s)!));
  if (identity.dns && servers.length > 0) {
    config.rdnss = { servers, lifetime };
    const domains: string[] = [];
    for (const d of identity.dns.search) {
      const why = checkDomainName(d);
      if (why) warnings.push(`search domain ${JSON.stringify(d)} cannot be encoded (${why}); skipped`);
      else domains.push(d.endsWith('.') ? d.slice(0, -1) : d);
    }
    if (domains.length > 0) config.dnssl = { domains, lifetime };
  }

  // One RA has to reach a guest whose NIC may not have the pod's MTU yet
  // (this RA is what tells it): IPv6's minimum MTU is the one size every
  // link carries. Routes are the only thing that grows without bound; the
  // last ones go first.
  const budget = IPV6_MIN_MTU - IPV6_HEADER - ICMP_HEADER - RA_FIXED;
  while (optionsSize(config) > budget && config.routes.length > 0) {
    const r = config.routes.pop()!;
    warnings.push(`route ${prefixText(r.prefix, r.prefixlen)} does not fit in the router advertisement; not advertised`);
  }
  while (optionsSize(config) > budget && config.dnssl && config.dnssl.domains.length > 0) {
    const d = config.dnssl.domains.pop()!;
    warnings.push(`search domain ${JSON.stringify(d)} does not fit in the router advertisement; not advertised`);
    if (config.dnssl.domains.length === 0) delete config.dnssl;
  }
  return { config, warnings };
}

/** The same advertisement with every lifetime 0: RFC 4861 §6.2.5, for when podtap stops serving. */
export function withdrawal(config: RaConfig): RaConfig {
  const out: RaConfig = {
    ...config,
    routerLifetime: 0,
    prefixes: config.prefixes.map((p) => ({ ...p, validLifetime: 0, preferredLifetime: 0 })),
    routes: config.routes.map((r) => ({ ...r, lifetime: 0 })),
  };
  if (config.rdnss) out.rdnss = { ...config.rdnss, lifetime: 0 };
  if (config.dnssl) out.dnssl = { ...config.dnssl, lifetime: 0 };
  return out;
}

function u32(v: number, what: string): Buffer {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new Error(`bad ${what} ${v}`);
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
}

/**
 * The RA's ICMPv6 body (§4.2: from Cur Hop Limit on), options in the order
 * radvd uses: SLLA, MTU, prefixes, routes, RDNSS, DNSSL.
 */
export function buildRouterAdvertisement(c: RaConfig): Buffer {
  if (!Number.isInteger(c.routerLifetime) || c.routerLifetime < 0 || c.routerLifetime > 0xffff) throw new Error(`bad router lifetime ${c.routerLifetime}`);
  if (!Number.isInteger(c.curHopLimit) || c.curHopLimit < 0 || c.curHopLimit > 255) throw new Error(`bad hop limit ${c.curHopLimit}`);
  const fixed = Buffer.alloc(RA_FIXED);
  fixed[0] = c.curHopLimit;
  // RFC 4191 §2.2: a router that is nobody's default advertises medium.
  const pref = c.routerLifetime === 0 ? 0 : PREF_BITS[c.preference];
  fixed[1] = (c.managed ? 0x80 : 0) | (c.other ? 0x40 : 0) | pref;
  fixed.writeUInt16BE(c.routerLifetime, 2);
  fixed.set(u32(c.reachableTime, 'reachable time'), 4);
  fixed.set(u32(c.retransTimer, 'retransmission timer'), 8);
  const parts: Buffer[] = [fixed];
  if (c.sourceMac) parts.push(linkLayerOption(NDOPT.SOURCE_LINK_LAYER, c.sourceMac));
  if (c.mtu !== undefined) parts.push(Buffer.concat([Buffer.from([NDOPT.MTU, 1, 0, 0]), u32(c.mtu, 'MTU')]));
  for (const p of c.prefixes) {
    // §4.6.2: type, length 4, prefix length, L|A flags, valid, preferred, reserved, prefix.
    if (!validPrefixlen(p.prefixlen)) throw new Error(`bad prefix length ${p.prefixlen}`);
    if (p.preferredLifetime > p.validLifetime) throw new Error(`preferred lifetime above valid lifetime for ${p.prefix}/${p.prefixlen}`);
    const o = Buffer.alloc(32);
    o[0] = NDOPT.PREFIX_INFORMATION;
    o[1] = 4;
    o[2] = p.prefixlen;
    o[3] = (p.onLink ? 0x80 : 0) | (p.autonomous ? 0x40 : 0);
    o.set(u32(p.validLifetime, 'valid lifetime'), 4);
    o.set(u32(p.preferredLifetime, 'preferred lifetime'), 8);
    o.set(mustIpv6(network6(p.prefix, p.prefixlen)), 16);
    parts.push(o);
  }
  for (const r of c.routes) {
    // RFC 4191 §2.3: only as many prefix bytes as the length needs.
    if (!validPrefixlen(r.prefixlen)) throw new Error(`bad prefix length ${r.prefixlen}`);
    const units = routeInfoLength(r.prefixlen);
    const o = Buffer.alloc(units * 8);
    o[0] = NDOPT.ROUTE_INFORMATION;
    o[1] = units;
    o[2] = r.prefixlen;
    o[3] = PREF_BITS[r.preference];
    o.set(u32(r.lifetime, 'route lifetime'), 4);
    o.set(mustIpv6(network6(r.prefix, r.prefixlen)).subarray(0, (units - 1) * 8), 8);
    parts.push(o);
  }
  if (c.rdnss && c.rdnss.servers.length > 0) {
    // RFC 8106 §5.1: length 1 + 2 per address.
    const head = Buffer.from([NDOPT.RDNSS, 1 + 2 * c.rdnss.servers.length, 0, 0]);
    parts.push(Buffer.concat([head, u32(c.rdnss.lifetime, 'RDNSS lifetime'), ...c.rdnss.servers.map(mustIpv6)]));
  }
  if (c.dnssl && c.dnssl.domains.length > 0) {
    // RFC 8106 §5.2: uncompressed names, zero-padded to a multiple of 8.
    const names = encodeSearchList(c.dnssl.domains, false);
    const units = Math.ceil((8 + names.length) / 8);
    const o = Buffer.alloc(units * 8);
    o[0] = NDOPT.DNSSL;
    o[1] = units;
    o.set(u32(c.dnssl.lifetime, 'DNSSL lifetime'), 4);
    o.set(names, 8);
    parts.push(o);
  }
  return Buffer.concat(parts);
}

/**
 * The RA on the wire: from the router's link-local address to all-nodes, or
 * to one host (an RS may be answered by unicast, §6.2.6).
 */
export function routerAdvertisementFrame(c: RaConfig, s: { srcMac: string; to?: { ip: string; mac: string } }): Buffer {
  return icmp6Frame({
    srcMac: s.srcMac,
    dstMac: s.to ? s.to.mac : ipv6MulticastMac(ALL_NODES),
    src: c.source,
    dst: s.to ? s.to.ip : ALL_NODES,
    hopLimit: ND_HOP_LIMIT,
    type: ND.ROUTER_ADVERTISEMENT,
    code: 0,
    body: buildRouterAdvertisement(c),
  });
}

// ---- parsing (tests, and spotting another router on the link) ---------------

export interface ParsedRouterAdvertisement {
  curHopLimit: number;
  managed: boolean;
  other: boolean;
  preference: RoutePreference | undefined;
  routerLifetime: number;
  reachableTime: number;
  retransTimer: number;
  sourceMac?: string;
  mtu?: number;
  prefixes: RaPrefix[];
  routes: RaRoute[];
  rdnss: { servers: string[]; lifetime: number }[];
  dnssl: { domains: string[]; lifetime: number }[];
  unknown: number[]; // option types skipped (§4.2: receivers ignore them)
}

export type RouterAdvertisementResult = { ok: true; ra: ParsedRouterAdvertisement } | NdFailure;

/**
 * §6.1.2 validity (link-local source, hop limit 255, code 0, checksum, at
 * least 16 bytes, well-formed options), then each option as the RFCs that
 * define it lay it out; an option too short for its type invalidates the RA,
 * as in Linux.
 */
export function parseRouterAdvertisement(p: NdPacket, o: NdParseOptions = {}): RouterAdvertisementResult {
  const m = p.icmp6;
  if (!m) return { ok: false, reason: 'not-icmp6' };
  if (m.type !== ND.ROUTER_ADVERTISEMENT) return { ok: false, reason: 'wrong-type', detail: String(m.type) };
  if (!isIpv6LinkLocal(p.src)) return { ok: false, reason: 'source-not-link-local', detail: p.src };
  if (p.hopLimit !== ND_HOP_LIMIT) return { ok: false, reason: 'bad-hop-limit', detail: String(p.hopLimit) };
  if (m.code !== 0) return { ok: false, reason: 'bad-code', detail: String(m.code) };
  if (m.checksum !== 'valid' && !o.checksumNotReady) return { ok: false, reason: 'bad-checksum' };
  if (m.body.length < RA_FIXED) return { ok: false, reason: 'too-short', detail: `${m.body.length + 4} bytes` };
  const parsed = parseNdOptions(m.body.subarray(RA_FIXED));
  if (!parsed.ok) return parsed;
  const b = m.body;
  const ra: ParsedRouterAdvertisement = {
    curHopLimit: b[0]!,
    managed: (b[1]! & 0x80) !== 0,
    other: (b[1]! & 0x40) !== 0,
    preference: preferenceOf(b[1]!),
    routerLifetime: b.readUInt16BE(2),
    reachableTime: b.readUInt32BE(4),
    retransTimer: b.readUInt32BE(8),
    prefixes: [],
    routes: [],
    rdnss: [],
    dnssl: [],
    unknown: [],
  };
  const bad = (type: number, why: string): NdFailure => ({ ok: false, reason: 'bad-option', detail: `option ${type}: ${why}` });
  for (const { type, data } of parsed.options) {
    // `data` is the option less its 2-byte header.
    switch (type) {
      case NDOPT.SOURCE_LINK_LAYER:
        if (data.length < 6) return bad(type, 'too short');
        ra.sourceMac = formatMac(data, 0);
        break;
      case NDOPT.MTU:
        if (data.length !== 6) return bad(type, 'not 8 bytes');
        ra.mtu = data.readUInt32BE(2);
        break;
      case NDOPT.PREFIX_INFORMATION: {
        if (data.length !== 30) return bad(type, 'not 32 bytes');
        const prefixlen = data[0]!;
        if (prefixlen > 128) return bad(type, `prefix length ${prefixlen}`);
        ra.prefixes.push({
          prefixlen,
          onLink: (data[1]! & 0x80) !== 0,
          autonomous: (data[1]! & 0x40) !== 0,
          validLifetime: data.readUInt32BE(2),
          preferredLifetime: data.readUInt32BE(6),
          prefix: formatIpv6Bytes(data, 14),
        });
        break;
      }
      case NDOPT.ROUTE_INFORMATION: {
        // RFC 4191 §3.1: length 1-3, and long enough for the prefix length.
        const prefixlen = data[0]!;
        const units = (data.length + 2) / 8;
        if (prefixlen > 128 || units > 3 || (prefixlen > 64 && units < 3) || (prefixlen > 0 && units < 2)) {
          return bad(type, `prefix length ${prefixlen} in ${units} units`);
        }
        const full = Buffer.alloc(16);
        data.copy(full, 0, 6, data.length);
        const pref = preferenceOf(data[1]!);
        // A reserved preference makes the option void, not the RA (§3.1).
        if (pref === undefined) break;
        ra.routes.push({ prefix: formatIpv6Bytes(full), prefixlen, lifetime: data.readUInt32BE(2), preference: pref });
        break;
      }
      case NDOPT.RDNSS: {
        const n = (data.length - 6) / 16;
        if (data.length < 22 || !Number.isInteger(n)) return bad(type, 'not a list of addresses');
        const servers: string[] = [];
        for (let i = 0; i < n; i++) servers.push(formatIpv6Bytes(data, 6 + 16 * i));
        ra.rdnss.push({ servers, lifetime: data.readUInt32BE(2) });
        break;
      }
      case NDOPT.DNSSL: {
        if (data.length < 14) return bad(type, 'too short');
        // Trailing zero bytes are padding, not empty names.
        let end = data.length;
        while (end > 6 && data[end - 1] === 0 && data[end - 2] === 0) end--;
        try {
          ra.dnssl.push({ domains: decodeSearchList(data.subarray(6, end)), lifetime: data.readUInt32BE(2) });
        } catch (e) {
          if (e instanceof OptionError) return bad(type, e.message);
          throw e;
        }
        break;
      }
      default:
        ra.unknown.push(type);
    }
  }
  return { ok: true, ra };
}
