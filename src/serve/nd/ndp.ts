// Neighbor Discovery messages other than the router advertisement (RFC 4861
// §4.1-4.4, §4.6), with the validity checks of §6.1.1 and §7.1 applied to
// what the guest sends. Parsers take a packet parseFrame already took apart
// and never throw; a message that fails a check comes back with the rule it
// broke. Builders produce ICMPv6 bodies (everything after the checksum), and
// the *Frame helpers wrap them for the wire.

import {
  formatIpv6Bytes,
  formatMac,
  icmp6Frame,
  ipv6Bytes,
  ipv6MulticastMac,
  isIpv6Multicast,
  isIpv6Unspecified,
  macBytes,
  mustIpv6,
  solicitedNode,
} from '../frames.ts';
import type { Icmp6Message } from '../frames.ts';

export const ND = {
  ROUTER_SOLICITATION: 133,
  ROUTER_ADVERTISEMENT: 134,
  NEIGHBOR_SOLICITATION: 135,
  NEIGHBOR_ADVERTISEMENT: 136,
  REDIRECT: 137,
} as const;

export const NDOPT = {
  SOURCE_LINK_LAYER: 1,
  TARGET_LINK_LAYER: 2,
  PREFIX_INFORMATION: 3,
  REDIRECTED_HEADER: 4,
  MTU: 5,
  NONCE: 14, // RFC 3971/7527, sent by Linux with its DAD probes
  ROUTE_INFORMATION: 24, // RFC 4191
  RDNSS: 25, // RFC 8106
  DNSSL: 31, // RFC 8106
} as const;

/** RFC 4861 §6.1, §7.1: ND messages are only valid if no router forwarded them. */
export const ND_HOP_LIMIT = 255;
export const ALL_NODES = 'ff02::1';
export const ALL_ROUTERS = 'ff02::2';

/** The IPv6 fields ND validity depends on, as parseFrame gives them. */
export interface NdPacket {
  src: string;
  dst: string;
  hopLimit: number;
  icmp6?: Icmp6Message;
}

export interface NdParseOptions {
  /**
   * The socket layer knows the checksum was never filled in (checksum
   * offload, TP_STATUS_CSUMNOTREADY) rather than wrong: don't judge it.
   */
  checksumNotReady?: boolean;
}

export type NdReason =
  | 'not-icmp6'
  | 'wrong-type'
  | 'bad-hop-limit'
  | 'bad-code'
  | 'bad-checksum'
  | 'too-short'
  | 'bad-option'
  | 'source-not-link-local'
  | 'slla-with-unspecified-source'
  | 'multicast-target'
  | 'unspecified-source-not-to-solicited-node'
  | 'solicited-flag-to-multicast';

export type NdFailure = { ok: false; reason: NdReason; detail?: string };

export interface NdOption {
  type: number;
  data: Buffer; // the option's bytes after type and length
}

// ---- options -----------------------------------------------------------------

/**
 * RFC 4861 §4.6: type, length in units of 8 octets (0 is invalid and makes
 * the whole message invalid), data. Never reads past `buf`.
 */
export function parseNdOptions(buf: Buffer): { ok: true; options: NdOption[] } | NdFailure {
  const options: NdOption[] = [];
  let i = 0;
  while (i < buf.length) {
    if (i + 2 > buf.length) return { ok: false, reason: 'bad-option', detail: `option header past the end at ${i}` };
    const type = buf[i]!;
    const units = buf[i + 1]!;
    if (units === 0) return { ok: false, reason: 'bad-option', detail: `option ${type} of length 0 at ${i}` };
    const end = i + units * 8;
    if (end > buf.length) return { ok: false, reason: 'bad-option', detail: `option ${type} of ${units * 8} bytes past the end at ${i}` };
    options.push({ type, data: buf.subarray(i + 2, end) });
    i = end;
  }
  return { ok: true, options };
}

/** Source/target link-layer address option (§4.6.1) for Ethernet: 8 bytes. */
export function linkLayerOption(type: number, mac: string): Buffer {
  const m = macBytes(mac);
  if (!m) throw new Error(`not a MAC address: ${JSON.stringify(mac)}`);
  return Buffer.concat([Buffer.from([type, 1]), m]);
}

/** The MAC in a link-layer address option; undefined unless it holds (at least) 6 bytes. */
function linkLayerOf(options: NdOption[], type: number): { present: boolean; mac?: string } {
  const o = options.find((x) => x.type === type);
  if (!o) return { present: false };
  return o.data.length >= 6 ? { present: true, mac: formatMac(o.data, 0) } : { present: true };
}

/** The checks every ND message shares (§6.1, §7.1): hop limit, code, checksum, length, options. */
function common(p: NdPacket, type: number, fixed: number, o: NdParseOptions): { ok: true; body: Buffer; options: NdOption[] } | NdFailure {
  const m = p.icmp6;
  if (!m) return { ok: false, reason: 'not-icmp6' };
  if (m.type !== type) return { ok: false, reason: 'wrong-type', detail: String(m.type) };
  if (p.hopLimit !== ND_HOP_LIMIT) return { ok: false, reason: 'bad-hop-limit', detail: String(p.hopLimit) };
  if (m.code !== 0) return { ok: false, reason: 'bad-code', detail: String(m.code) };
  if (m.checksum !== 'valid' && !o.checksumNotReady) return { ok: false, reason: 'bad-checksum' };
  if (m.body.length < fixed) return { ok: false, reason: 'too-short', detail: `${m.body.length + 4} bytes` };
  const opts = parseNdOptions(m.body.subarray(fixed));
  if (!opts.ok) return opts;
  return { ok: true, body: m.body, options: opts.options };
}

// ---- router solicitation (§4.1, §6.1.1) ----------------------------------

export type RouterSolicitation = { ok: true; sourceMac?: string; options: NdOption[] } | NdFailure;

export function parseRouterSolicitation(p: NdPacket, o: NdParseOptions = {}): RouterSolicitation {
  const c = common(p, ND.ROUTER_SOLICITATION, 4, o);
  if (!c.ok) return c;
  const slla = linkLayerOf(c.options, NDOPT.SOURCE_LINK_LAYER);
  if (slla.present && isIpv6Unspecified(p.src)) return { ok: false, reason: 'slla-with-unspecified-source' };
  const out: RouterSolicitation = { ok: true, options: c.options };
  if (slla.mac) out.sourceMac = slla.mac;
  return out;
}

// ---- neighbor solicitation (§4.3, §7.1.1) -----------------------------------

export type NeighborSolicitation =
  | {
      ok: true;
      target: string;
      /** Unspecified source: duplicate address detection, answered to all-nodes if at all. */
      dad: boolean;
      sourceMac?: string;
      nonce?: Buffer;
      options: NdOption[];
    }
  | NdFailure;

export function parseNeighborSolicitation(p: NdPacket, o: NdParseOptions = {}): NeighborSolicitation {
  const c = common(p, ND.NEIGHBOR_SOLICITATION, 20, o);
  if (!c.ok) return c;
  const target = c.body.subarray(4, 20);
  if (isIpv6Multicast(target)) return { ok: false, reason: 'multicast-target', detail: formatIpv6Bytes(target) };
  const dad = isIpv6Unspecified(p.src);
  const slla = linkLayerOf(c.options, NDOPT.SOURCE_LINK_LAYER);
  const targetText = formatIpv6Bytes(target);
  if (dad) {
    // Any solicited-node group will do (Linux checks no more either).
    if (!isSolicitedNodeAddress(p.dst)) {
      return { ok: false, reason: 'unspecified-source-not-to-solicited-node', detail: p.dst };
    }
    if (slla.present) return { ok: false, reason: 'slla-with-unspecified-source' };
  }
  const out: NeighborSolicitation = { ok: true, target: targetText, dad, options: c.options };
  if (slla.mac) out.sourceMac = slla.mac;
  const nonce = c.options.find((x) => x.type === NDOPT.NONCE);
  if (nonce) out.nonce = nonce.data;
  return out;
}

/** ff02::1:ffXX:XXXX, whatever XX:XXXX is. */
const SOLICITED_NODE_PREFIX = mustIpv6('ff02::1:ff00:0').subarray(0, 13);

function isSolicitedNodeAddress(addr: string): boolean {
  const b = ipv6Bytes(addr);
  return b !== undefined && b.subarray(0, 13).equals(SOLICITED_NODE_PREFIX);
}

// ---- neighbor advertisement (§4.4, §7.1.2) ----------------------------------

export type NeighborAdvertisement =
  | {
      ok: true;
      target: string;
      router: boolean;
      solicited: boolean;
      override: boolean;
      targetMac?: string;
      options: NdOption[];
    }
  | NdFailure;

const NA_ROUTER = 0x80;
const NA_SOLICITED = 0x40;
const NA_OVERRIDE = 0x20;

export function parseNeighborAdvertisement(p: NdPacket, o: NdParseOptions = {}): NeighborAdvertisement {
  const c = common(p, ND.NEIGHBOR_ADVERTISEMENT, 20, o);
  if (!c.ok) return c;
  const target = c.body.subarray(4, 20);
  if (isIpv6Multicast(target)) return { ok: false, reason: 'multicast-target', detail: formatIpv6Bytes(target) };
  const flags = c.body[0]!;
  const solicited = (flags & NA_SOLICITED) !== 0;
  if (solicited && isIpv6Multicast(p.dst)) return { ok: false, reason: 'solicited-flag-to-multicast' };
  const out: NeighborAdvertisement = {
    ok: true,
    target: formatIpv6Bytes(target),
    router: (flags & NA_ROUTER) !== 0,
    solicited,
    override: (flags & NA_OVERRIDE) !== 0,
    options: c.options,
  };
  const tlla = linkLayerOf(c.options, NDOPT.TARGET_LINK_LAYER);
  if (tlla.mac) out.targetMac = tlla.mac;
  return out;
}

export interface NeighborAdvertisementSpec {
  target: string;
  router: boolean;
  solicited: boolean;
  override: boolean;
  /** §7.2.4: include the target link-layer address; required when answering a multicast solicitation. */
  targetMac?: string;
}

export function buildNeighborAdvertisement(s: NeighborAdvertisementSpec): Buffer {
  const fixed = Buffer.alloc(20);
  fixed[0] = (s.router ? NA_ROUTER : 0) | (s.solicited ? NA_SOLICITED : 0) | (s.override ? NA_OVERRIDE : 0);
  fixed.set(mustIpv6(s.target), 4);
  return s.targetMac ? Buffer.concat([fixed, linkLayerOption(NDOPT.TARGET_LINK_LAYER, s.targetMac)]) : fixed;
}

/**
 * The answer to a solicitation for `target` (§7.2.4). A DAD probe
 * (unspecified source) is answered to all-nodes with S=0; anything else is
 * answered to its source with S=1. The caller decides whether to answer.
 */
export function neighborAdvertisementFrame(s: {
  srcMac: string;
  src: string; // an address of ours on the link, usually the target itself
  target: string;
  router: boolean;
  override?: boolean; // default true: we answer for addresses we own
  to: { ip: string; mac: string } | 'all-nodes';
}): Buffer {
  const to = s.to === 'all-nodes' ? { ip: ALL_NODES, mac: ipv6MulticastMac(ALL_NODES) } : s.to;
  const allNodes = s.to === 'all-nodes';
  return icmp6Frame({
    srcMac: s.srcMac,
    dstMac: to.mac,
    src: s.src,
    dst: to.ip,
    hopLimit: ND_HOP_LIMIT,
    type: ND.NEIGHBOR_ADVERTISEMENT,
    code: 0,
    body: buildNeighborAdvertisement({
      target: s.target,
      router: s.router,
      solicited: !allNodes,
      override: s.override ?? true,
      targetMac: s.srcMac,
    }),
  });
}

// ---- neighbor solicitation, sent (§4.3, §7.2.2) -----------------------------

export interface NeighborSolicitationSpec {
  target: string;
  /** Include a source link-layer option; never with an unspecified source (§7.1.1). */
  sourceMac?: string;
  nonce?: Uint8Array; // RFC 7527, for DAD probes: a multiple of 8 minus 2 bytes (6 is usual)
}

export function buildNeighborSolicitation(s: NeighborSolicitationSpec): Buffer {
  const fixed = Buffer.alloc(20);
  fixed.set(mustIpv6(s.target), 4);
  const parts: Buffer[] = [fixed];
  if (s.sourceMac) parts.push(linkLayerOption(NDOPT.SOURCE_LINK_LAYER, s.sourceMac));
  if (s.nonce) {
    if ((s.nonce.length + 2) % 8 !== 0) throw new Error(`nonce of ${s.nonce.length} bytes does not fill whole option units`);
    parts.push(Buffer.concat([Buffer.from([NDOPT.NONCE, (s.nonce.length + 2) / 8]), s.nonce]));
  }
  return Buffer.concat(parts);
}

/**
 * A solicitation to resolve `target` (say, the pod's gateway) from a TAP
 * with no address: without `src` it goes DAD-style, from :: with no source
 * link-layer option (§7.1.1 forbids one), and the owner answers to
 * all-nodes; with `src` it carries our MAC and the answer comes back to
 * `src`. Multicast to the target's solicited-node group, unless `unicastTo`
 * names the MAC to probe directly (neighbour unreachability detection).
 */
export function neighborSolicitationFrame(s: { srcMac: string; target: string; src?: string; unicastTo?: string; nonce?: Uint8Array }): Buffer {
  const unspecified = s.src === undefined || isIpv6Unspecified(s.src);
  const spec: NeighborSolicitationSpec = { target: s.target };
  if (!unspecified) spec.sourceMac = s.srcMac;
  if (s.nonce) spec.nonce = s.nonce;
  if (s.unicastTo && unspecified) throw new Error('a unicast neighbour solicitation needs a source address');
  const group = solicitedNode(s.target);
  return icmp6Frame({
    srcMac: s.srcMac,
    dstMac: s.unicastTo ?? ipv6MulticastMac(group),
    src: unspecified ? '::' : s.src!,
    dst: s.unicastTo ? s.target : group,
    hopLimit: ND_HOP_LIMIT,
    type: ND.NEIGHBOR_SOLICITATION,
    code: 0,
    body: buildNeighborSolicitation(spec),
  });
}

/** A router solicitation body, for tests and for probing: reserved word and an optional SLLA. */
export function buildRouterSolicitation(sourceMac?: string): Buffer {
  const fixed = Buffer.alloc(4);
  return sourceMac ? Buffer.concat([fixed, linkLayerOption(NDOPT.SOURCE_LINK_LAYER, sourceMac)]) : fixed;
}
