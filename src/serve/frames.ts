// Ethernet frames as an AF_PACKET socket on a TAP hands them over (no
// virtio-net header), taken apart and put together for the servers that
// speak to the VM without any IP address of their own. Parsing reads guest
// input: it never throws and never trusts a length field, and every frame it
// cannot use comes back as a short, stable reason. Building is for our own
// replies, from values the caller already validated.
//
// Checksums are reported, not enforced. A guest with checksum offload hands
// the host UDP and ICMPv6 packets whose checksum field holds only the
// pseudo-header sum (the kernel marks them CHECKSUM_PARTIAL and AF_PACKET
// delivers them as they are; PACKET_AUXDATA says so with
// TP_STATUS_CSUMNOTREADY), so whether a bad sum means a broken packet is the
// socket layer's call.

import { formatIpv6, parseIpv6 } from '../net/ipv6.ts';
import { formatIpv4, parseIpv4 } from '../net/ipv4.ts';

export const ETH_HEADER = 14;
export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_ARP = 0x0806;
export const ETHERTYPE_IPV6 = 0x86dd;
export const ETHERTYPE_VLAN = 0x8100;
export const ETHERTYPE_QINQ = 0x88a8;

export const IPPROTO_HOPOPTS = 0;
export const IPPROTO_UDP = 17;
export const IPPROTO_ROUTING = 43;
export const IPPROTO_FRAGMENT = 44;
export const IPPROTO_ICMPV6 = 58;
export const IPPROTO_NONE = 59;
export const IPPROTO_DSTOPTS = 60;

const IPV4_MIN_HEADER = 20;
const IPV6_HEADER = 40;
const UDP_HEADER = 8;
const ICMP_HEADER = 4;
/** A frame with more extension headers than this is not one a guest's DHCP client or ND sends. */
const MAX_EXTENSION_HEADERS = 8;

export type FrameReason =
  | 'short-ethernet'
  | 'ipv4-truncated'
  | 'ipv4-bad-version'
  | 'ipv4-bad-header-length'
  | 'ipv4-bad-total-length'
  | 'ipv4-bad-header-checksum'
  | 'ipv6-truncated'
  | 'ipv6-bad-version'
  | 'ipv6-jumbogram'
  | 'ipv6-extension-truncated'
  | 'ipv6-hop-by-hop-not-first'
  | 'ipv6-too-many-extensions'
  | 'udp-truncated'
  | 'udp-bad-length'
  | 'icmp6-truncated';

/** 'absent' is a zero UDP checksum: allowed over IPv4, never valid over IPv6 (RFC 8200 §8.1). */
export type ChecksumState = 'valid' | 'invalid' | 'absent';

export interface EthernetHeader {
  dst: string; // "aa:bb:cc:dd:ee:ff", lower case
  src: string;
  ethertype: number;
}

export interface UdpDatagram {
  srcPort: number;
  dstPort: number;
  payload: Buffer; // a view into the frame
  checksum: ChecksumState;
}

export interface Icmp6Message {
  type: number;
  code: number;
  body: Buffer; // everything after type, code and checksum; a view into the frame
  checksum: Exclude<ChecksumState, 'absent'>;
}

export interface Ipv4Packet {
  kind: 'ipv4';
  eth: EthernetHeader;
  src: string;
  dst: string;
  protocol: number;
  ttl: number;
  /** A fragment of a larger datagram: no transport header is parsed. */
  fragment: boolean;
  udp?: UdpDatagram;
}

export interface Ipv6Packet {
  kind: 'ipv6';
  eth: EthernetHeader;
  src: string;
  dst: string;
  hopLimit: number;
  /** The upper-layer protocol after hop-by-hop, destination options and routing headers. */
  protocol: number;
  /** Extension headers skipped on the way, in order. */
  extensions: number[];
  /**
   * A routing header with segments left, or a fragment header: the packet
   * is not for this hop as it stands, so no transport header is parsed.
   */
  inTransit: boolean;
  udp?: UdpDatagram;
  icmp6?: Icmp6Message;
}

export type ParsedFrame =
  | Ipv4Packet
  | Ipv6Packet
  | { kind: 'tagged'; eth: EthernetHeader } // 802.1Q / 802.1ad: not served
  | { kind: 'other'; eth: EthernetHeader } // ARP and everything else
  | { kind: 'invalid'; reason: FrameReason; detail?: string; eth?: EthernetHeader };

// ---- addresses -----------------------------------------------------------

/** "aa:bb:..." from six bytes at `at`. */
export function formatMac(buf: Uint8Array, at = 0): string {
  let s = '';
  for (let i = 0; i < 6; i++) {
    const b = buf[at + i]!;
    s += (i ? ':' : '') + (b < 16 ? '0' : '') + b.toString(16);
  }
  return s;
}

/** Six bytes from "aa:bb:cc:dd:ee:ff" (or '-' separated); undefined if malformed. */
export function macBytes(text: string): Buffer | undefined {
  const parts = text.split(/[:-]/);
  if (parts.length !== 6 || !parts.every((p) => /^[0-9a-fA-F]{2}$/.test(p))) return undefined;
  return Buffer.from(parts.map((p) => parseInt(p, 16)));
}

function mustMac(text: string): Buffer {
  const b = macBytes(text);
  if (!b) throw new Error(`not a MAC address: ${JSON.stringify(text)}`);
  return b;
}

/** Sixteen bytes from IPv6 text; undefined if malformed. */
export function ipv6Bytes(text: string): Buffer | undefined {
  const v = parseIpv6(text);
  if (v === undefined) return undefined;
  const b = Buffer.alloc(16);
  b.writeBigUInt64BE(v >> 64n, 0);
  b.writeBigUInt64BE(v & 0xffffffffffffffffn, 8);
  return b;
}

/** Like ipv6Bytes, for our own configuration, where a bad address is a bug. */
export function mustIpv6(text: string): Buffer {
  const b = ipv6Bytes(text);
  if (!b) throw new Error(`not an IPv6 address: ${JSON.stringify(text)}`);
  return b;
}

/** RFC 5952 text of sixteen bytes at `at`. */
export function formatIpv6Bytes(buf: Uint8Array, at = 0): string {
  const view = Buffer.from(buf.buffer, buf.byteOffset + at, 16);
  return formatIpv6((view.readBigUInt64BE(0) << 64n) | view.readBigUInt64BE(8));
}

function mustIpv4(text: string): Buffer {
  const v = parseIpv4(text);
  if (v === undefined) throw new Error(`not an IPv4 address: ${JSON.stringify(text)}`);
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
}

/** RFC 2464 §7: 33:33 and the low 32 bits of the group address. */
export function ipv6MulticastMac(addr: string): string {
  const a = mustIpv6(addr);
  return formatMac(Buffer.from([0x33, 0x33, a[12]!, a[13]!, a[14]!, a[15]!]));
}

/** RFC 4291 §2.7.1: ff02::1:ff00:0/104 plus the low 24 bits of the address. */
export function solicitedNode(addr: string): string {
  const a = mustIpv6(addr);
  const g = mustIpv6('ff02::1:ff00:0');
  g[13] = a[13]!;
  g[14] = a[14]!;
  g[15] = a[15]!;
  return formatIpv6Bytes(g);
}

/** RFC 4291 appendix A: fe80:: plus the MAC as a modified EUI-64 (fffe in the middle, U/L bit flipped). */
export function eui64LinkLocal(mac: string): string {
  const m = mustMac(mac);
  const a = Buffer.alloc(16);
  a[0] = 0xfe;
  a[1] = 0x80;
  a[8] = m[0]! ^ 0x02;
  a[9] = m[1]!;
  a[10] = m[2]!;
  a[11] = 0xff;
  a[12] = 0xfe;
  a[13] = m[3]!;
  a[14] = m[4]!;
  a[15] = m[5]!;
  return formatIpv6Bytes(a);
}

export function isIpv6Multicast(addr: Uint8Array | string): boolean {
  const b = typeof addr === 'string' ? ipv6Bytes(addr) : addr;
  return b !== undefined && b[0] === 0xff;
}

export function isIpv6Unspecified(addr: Uint8Array | string): boolean {
  const b = typeof addr === 'string' ? ipv6Bytes(addr) : addr;
  return b !== undefined && b.every((x) => x === 0);
}

export function isIpv6LinkLocal(addr: Uint8Array | string): boolean {
  const b = typeof addr === 'string' ? ipv6Bytes(addr) : addr;
  return b !== undefined && b[0] === 0xfe && (b[1]! & 0xc0) === 0x80;
}

// ---- checksums -------------------------------------------------------------

/** Adds 16-bit big-endian words of buf[start, end) to sum; an odd last byte is padded with zero. */
function sumWords(sum: number, buf: Uint8Array, start: number, end: number): number {
  let i = start;
  for (; i + 1 < end; i += 2) sum += (buf[i]! << 8) | buf[i + 1]!;
  if (i < end) sum += buf[i]! << 8;
  return sum;
}

function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

/** RFC 1071 Internet checksum of buf[start, end), starting from a partial sum. */
export function internetChecksum(buf: Uint8Array, start = 0, end = buf.length, initial = 0): number {
  return ~fold(sumWords(initial, buf, start, end)) & 0xffff;
}

/** RFC 8200 §8.1 pseudo-header (addresses, upper-layer length, next header) as a partial sum. */
function pseudo6(buf: Uint8Array, srcAt: number, dstAt: number, length: number, next: number): number {
  let s = sumWords(0, buf, srcAt, srcAt + 16);
  s = sumWords(s, buf, dstAt, dstAt + 16);
  return s + Math.floor(length / 0x10000) + (length & 0xffff) + next;
}

function pseudo4(buf: Uint8Array, srcAt: number, dstAt: number, length: number, protocol: number): number {
  let s = sumWords(0, buf, srcAt, srcAt + 4);
  s = sumWords(s, buf, dstAt, dstAt + 4);
  return s + length + protocol;
}

// ---- parsing ---------------------------------------------------------------

function invalid(reason: FrameReason, eth?: EthernetHeader, detail?: string): ParsedFrame {
  const out: ParsedFrame = { kind: 'invalid', reason };
  if (eth) out.eth = eth;
  if (detail !== undefined) out.detail = detail;
  return out;
}

/** Covered bytes (checksum field included) that fold to all ones carry a correct checksum. */
function verdict(total: number): 'valid' | 'invalid' {
  return fold(total) === 0xffff ? 'valid' : 'invalid';
}

function parseUdp(
  frame: Buffer,
  at: number,
  end: number,
  pseudo: number,
): { udp: UdpDatagram } | { reason: FrameReason; detail: string } {
  if (end - at < UDP_HEADER) return { reason: 'udp-truncated', detail: `${end - at} bytes` };
  const length = frame.readUInt16BE(at + 4);
  // IPv6 jumbograms (UDP length 0) are refused earlier, with the IPv6 header.
  if (length < UDP_HEADER || length > end - at) {
    return { reason: 'udp-bad-length', detail: `length ${length} in ${end - at} bytes` };
  }
  const sum = frame.readUInt16BE(at + 6);
  let checksum: ChecksumState;
  if (sum === 0) checksum = 'absent';
  else checksum = verdict(sumWords(pseudo, frame, at, at + length));
  return {
    udp: {
      srcPort: frame.readUInt16BE(at),
      dstPort: frame.readUInt16BE(at + 2),
      payload: frame.subarray(at + UDP_HEADER, at + length),
      checksum,
    },
  };
}

function takeIpv4(frame: Buffer, eth: EthernetHeader): ParsedFrame {
  const at = ETH_HEADER;
  if (frame.length - at < IPV4_MIN_HEADER) return invalid('ipv4-truncated', eth, `${frame.length - at} bytes`);
  const vihl = frame[at]!;
  if (vihl >> 4 !== 4) return invalid('ipv4-bad-version', eth, String(vihl >> 4));
  const ihl = (vihl & 15) * 4;
  if (ihl < IPV4_MIN_HEADER) return invalid('ipv4-bad-header-length', eth, String(ihl));
  const total = frame.readUInt16BE(at + 2);
  // The frame may carry Ethernet padding past the datagram, never less than it.
  if (total < ihl || total > frame.length - at) {
    return invalid('ipv4-bad-total-length', eth, `total ${total}, header ${ihl}, ${frame.length - at} bytes`);
  }
  if (verdict(sumWords(0, frame, at, at + ihl)) !== 'valid') return invalid('ipv4-bad-header-checksum', eth);
  const fragField = frame.readUInt16BE(at + 6);
  const fragment = (fragField & 0x2000) !== 0 || (fragField & 0x1fff) !== 0;
  const protocol = frame[at + 9]!;
  const out: Ipv4Packet = {
    kind: 'ipv4',
    eth,
    src: formatIpv4(frame.readUInt32BE(at + 12)),
    dst: formatIpv4(frame.readUInt32BE(at + 16)),
    protocol,
    ttl: frame[at + 8]!,
    fragment,
  };
  if (protocol === IPPROTO_UDP && !fragment) {
    const end = at + total;
    const l4 = at + ihl;
    const r = parseUdp(frame, l4, end, pseudo4(frame, at + 12, at + 16, end - l4, IPPROTO_UDP));
    if ('reason' in r) return invalid(r.reason, eth, r.detail);
    out.udp = r.udp;
  }
  return out;
}

function takeIpv6(frame: Buffer, eth: EthernetHeader): ParsedFrame {
  const at = ETH_HEADER;
  if (frame.length - at < IPV6_HEADER) return invalid('ipv6-truncated', eth, `${frame.length - at} bytes`);
  const version = frame[at]! >> 4;
  if (version !== 6) return invalid('ipv6-bad-version', eth, String(version));
  const payloadLength = frame.readUInt16BE(at + 4);
  let next = frame[at + 6]!;
  if (payloadLength === 0 && next === IPPROTO_HOPOPTS) {
    // RFC 2675: the real length is in a hop-by-hop option. Nothing we serve
    // is anywhere near 64 KiB.
    return invalid('ipv6-jumbogram', eth);
  }
  const end = at + IPV6_HEADER + payloadLength;
  if (end > frame.length) {
    return invalid('ipv6-truncated', eth, `payload length ${payloadLength}, ${frame.length - at - IPV6_HEADER} bytes`);
  }
  const out: Ipv6Packet = {
    kind: 'ipv6',
    eth,
    src: formatIpv6Bytes(frame, at + 8),
    dst: formatIpv6Bytes(frame, at + 24),
    hopLimit: frame[at + 7]!,
    protocol: next,
    extensions: [],
    inTransit: false,
  };
  let p = at + IPV6_HEADER;
  for (;;) {
    if (next !== IPPROTO_HOPOPTS && next !== IPPROTO_DSTOPTS && next !== IPPROTO_ROUTING && next !== IPPROTO_FRAGMENT) break;
    // RFC 8200 §4.1: hop-by-hop options only ever come first.
    if (next === IPPROTO_HOPOPTS && out.extensions.length > 0) return invalid('ipv6-hop-by-hop-not-first', eth);
    if (out.extensions.length >= MAX_EXTENSION_HEADERS) return invalid('ipv6-too-many-extensions', eth);
    if (end - p < 8) return invalid('ipv6-extension-truncated', eth, `header ${next} at ${p - at}`);
    const length = next === IPPROTO_FRAGMENT ? 8 : (frame[p + 1]! + 1) * 8;
    if (p + length > end) return invalid('ipv6-extension-truncated', eth, `header ${next} of ${length} bytes at ${p - at}`);
    out.extensions.push(next);
    if (next === IPPROTO_FRAGMENT || (next === IPPROTO_ROUTING && frame[p + 3]! !== 0)) out.inTransit = true;
    next = frame[p]!;
    p += length;
    if (out.inTransit) break;
  }
  out.protocol = next;
  if (out.inTransit) return out;
  const length = end - p;
  if (next === IPPROTO_UDP) {
    const r = parseUdp(frame, p, end, pseudo6(frame, at + 8, at + 24, length, IPPROTO_UDP));
    if ('reason' in r) return invalid(r.reason, eth, r.detail);
    out.udp = r.udp;
  } else if (next === IPPROTO_ICMPV6) {
    if (length < ICMP_HEADER) return invalid('icmp6-truncated', eth, `${length} bytes`);
    out.icmp6 = {
      type: frame[p]!,
      code: frame[p + 1]!,
      body: frame.subarray(p + ICMP_HEADER, end),
      checksum: verdict(sumWords(pseudo6(frame, at + 8, at + 24, length, IPPROTO_ICMPV6), frame, p, end)),
    };
  }
  return out;
}

/** Takes a frame apart; never throws. Views point into `frame`, so copy what outlives it. */
export function parseFrame(frame: Buffer): ParsedFrame {
  if (frame.length < ETH_HEADER) return invalid('short-ethernet', undefined, `${frame.length} bytes`);
  const eth: EthernetHeader = { dst: formatMac(frame, 0), src: formatMac(frame, 6), ethertype: frame.readUInt16BE(12) };
  switch (eth.ethertype) {
    case ETHERTYPE_IPV4:
      return takeIpv4(frame, eth);
    case ETHERTYPE_IPV6:
      return takeIpv6(frame, eth);
    case ETHERTYPE_VLAN:
    case ETHERTYPE_QINQ:
      return { kind: 'tagged', eth };
    default:
      return { kind: 'other', eth };
  }
}

// ---- building --------------------------------------------------------------

/** A UDP datagram in an Ethernet frame; addresses in their family's text form. */
interface UdpFrameSpec {
  srcMac: string;
  dstMac: string;
  src: string;
  dst: string;
  srcPort: number;
  dstPort: number;
  payload: Uint8Array;
}

export interface Udp4FrameSpec extends UdpFrameSpec {
  ttl?: number; // 64
}

export interface Udp6FrameSpec extends UdpFrameSpec {
  hopLimit?: number; // 64
}

export interface Icmp6FrameSpec {
  srcMac: string;
  dstMac: string;
  src: string;
  dst: string;
  hopLimit: number;
  type: number;
  code: number;
  body: Uint8Array;
}

function ethernet(out: Buffer, dstMac: string, srcMac: string, ethertype: number): void {
  out.set(mustMac(dstMac), 0);
  out.set(mustMac(srcMac), 6);
  out.writeUInt16BE(ethertype, 12);
}

function checkPort(p: number): void {
  if (!Number.isInteger(p) || p < 0 || p > 0xffff) throw new Error(`bad port ${p}`);
}

/** An IPv4/UDP frame with both checksums. No IP options, not fragmented (DF clear, id 0). */
export function udp4Frame(s: Udp4FrameSpec): Buffer {
  checkPort(s.srcPort);
  checkPort(s.dstPort);
  const total = IPV4_MIN_HEADER + UDP_HEADER + s.payload.length;
  if (total > 0xffff) throw new Error(`UDP payload of ${s.payload.length} bytes does not fit an IPv4 datagram`);
  const out = Buffer.alloc(ETH_HEADER + total);
  ethernet(out, s.dstMac, s.srcMac, ETHERTYPE_IPV4);
  const ip = ETH_HEADER;
  out[ip] = 0x45;
  out.writeUInt16BE(total, ip + 2);
  out[ip + 8] = s.ttl ?? 64;
  out[ip + 9] = IPPROTO_UDP;
  out.set(mustIpv4(s.src), ip + 12);
  out.set(mustIpv4(s.dst), ip + 16);
  out.writeUInt16BE(internetChecksum(out, ip, ip + IPV4_MIN_HEADER), ip + 10);
  const length = UDP_HEADER + s.payload.length;
  udpDatagram(out, ip + IPV4_MIN_HEADER, s, pseudo4(out, ip + 12, ip + 16, length, IPPROTO_UDP));
  return out;
}

/** The UDP header and payload at `u`, checksummed over `pseudo` (the IP pseudo-header's sum). */
function udpDatagram(out: Buffer, u: number, s: UdpFrameSpec, pseudo: number): void {
  const length = UDP_HEADER + s.payload.length;
  out.writeUInt16BE(s.srcPort, u);
  out.writeUInt16BE(s.dstPort, u + 2);
  out.writeUInt16BE(length, u + 4);
  out.set(s.payload, u + UDP_HEADER);
  // RFC 768: a computed zero goes on the wire as all ones; zero means "none".
  const sum = internetChecksum(out, u, u + length, pseudo);
  out.writeUInt16BE(sum === 0 ? 0xffff : sum, u + 6);
}

function ipv6Header(out: Buffer, src: string, dst: string, payloadLength: number, next: number, hopLimit: number): void {
  const ip = ETH_HEADER;
  out.writeUInt32BE(0x60000000, ip);
  out.writeUInt16BE(payloadLength, ip + 4);
  out[ip + 6] = next;
  out[ip + 7] = hopLimit;
  out.set(mustIpv6(src), ip + 8);
  out.set(mustIpv6(dst), ip + 24);
}

function checkHopLimit(h: number): void {
  if (!Number.isInteger(h) || h < 0 || h > 255) throw new Error(`bad hop limit ${h}`);
}

/** An IPv6/UDP frame with its (mandatory) checksum. */
export function udp6Frame(s: Udp6FrameSpec): Buffer {
  checkPort(s.srcPort);
  checkPort(s.dstPort);
  const hopLimit = s.hopLimit ?? 64;
  checkHopLimit(hopLimit);
  const length = UDP_HEADER + s.payload.length;
  if (length > 0xffff) throw new Error(`UDP payload of ${s.payload.length} bytes does not fit without a jumbogram`);
  const out = Buffer.alloc(ETH_HEADER + IPV6_HEADER + length);
  ethernet(out, s.dstMac, s.srcMac, ETHERTYPE_IPV6);
  ipv6Header(out, s.src, s.dst, length, IPPROTO_UDP, hopLimit);
  udpDatagram(out, ETH_HEADER + IPV6_HEADER, s, pseudo6(out, ETH_HEADER + 8, ETH_HEADER + 24, length, IPPROTO_UDP));
  return out;
}

/** An IPv6/ICMPv6 frame; `body` is everything after the checksum. */
export function icmp6Frame(s: Icmp6FrameSpec): Buffer {
  checkHopLimit(s.hopLimit);
  if (!Number.isInteger(s.type) || s.type < 0 || s.type > 255 || !Number.isInteger(s.code) || s.code < 0 || s.code > 255) {
    throw new Error(`bad ICMPv6 type ${s.type} code ${s.code}`);
  }
  const length = ICMP_HEADER + s.body.length;
  if (length > 0xffff) throw new Error(`ICMPv6 body of ${s.body.length} bytes does not fit without a jumbogram`);
  const out = Buffer.alloc(ETH_HEADER + IPV6_HEADER + length);
  ethernet(out, s.dstMac, s.srcMac, ETHERTYPE_IPV6);
  ipv6Header(out, s.src, s.dst, length, IPPROTO_ICMPV6, s.hopLimit);
  const c = ETH_HEADER + IPV6_HEADER;
  out[c] = s.type;
  out[c + 1] = s.code;
  out.set(s.body, c + ICMP_HEADER);
  out.writeUInt16BE(
    internetChecksum(out, c, c + length, pseudo6(out, ETH_HEADER + 8, ETH_HEADER + 24, length, IPPROTO_ICMPV6)),
    c + 2,
  );
  return out;
}
