// DHCP option payloads (RFC 2132 and the later option RFCs) and the RFC 3396
// rules for options longer than one TLV can hold. Encoders run once at
// start-up, so they validate and throw; decoders read guest input, so they
// bound every read and throw OptionError, which callers turn into a reason.

import { formatIpv4, parseCidr } from '../../net/ipv4.ts';

export const OPT = {
  PAD: 0,
  SUBNET_MASK: 1,
  ROUTER: 3,
  DNS: 6,
  HOSTNAME: 12,
  DOMAIN_NAME: 15,
  MTU: 26,
  BROADCAST: 28,
  REQUESTED_IP: 50,
  LEASE_TIME: 51,
  OVERLOAD: 52,
  MESSAGE_TYPE: 53,
  SERVER_ID: 54,
  PARAM_REQUEST_LIST: 55,
  MESSAGE: 56,
  MAX_MESSAGE_SIZE: 57,
  RENEWAL_TIME: 58,
  REBINDING_TIME: 59,
  CLIENT_ID: 61,
  DOMAIN_SEARCH: 119,
  CLASSLESS_ROUTES: 121,
  MS_CLASSLESS_ROUTES: 249,
  END: 255,
} as const;

export const MSG = {
  DISCOVER: 1,
  OFFER: 2,
  REQUEST: 3,
  DECLINE: 4,
  ACK: 5,
  NAK: 6,
  RELEASE: 7,
  INFORM: 8,
} as const;

export const MSG_NAMES: Record<number, string> = {
  1: 'DISCOVER',
  2: 'OFFER',
  3: 'REQUEST',
  4: 'DECLINE',
  5: 'ACK',
  6: 'NAK',
  7: 'RELEASE',
  8: 'INFORM',
};

export class OptionError extends Error {
  override name = 'OptionError';
}

// ---- scalars -------------------------------------------------------------

export function encodeU8(v: number): Buffer {
  const b = Buffer.alloc(1);
  b.writeUInt8(v);
  return b;
}

export function encodeU16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return b;
}

export function encodeU32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
}

export function encodeIps(addrs: readonly number[]): Buffer {
  const b = Buffer.alloc(4 * addrs.length);
  addrs.forEach((a, i) => b.writeUInt32BE(a >>> 0, 4 * i));
  return b;
}

export function decodeIps(data: Uint8Array): string[] {
  if (data.length === 0 || data.length % 4 !== 0) {
    throw new OptionError(`address list of ${data.length} bytes`);
  }
  const out: string[] = [];
  const view = Buffer.from(data.buffer, data.byteOffset, data.length);
  for (let i = 0; i < data.length; i += 4) out.push(formatIpv4(view.readUInt32BE(i)));
  return out;
}

/** NVT ASCII text; callers validate what may appear (see checkDomainName). */
export function encodeText(s: string): Buffer {
  return Buffer.from(s, 'latin1');
}

// ---- RFC 3442 classless static routes (121, and Microsoft's 249) ---------

export interface ClasslessRoute {
  dst: string; // CIDR, "a.b.c.d" (a /32) or "default"
  gateway: string; // 0.0.0.0 for an on-link route
}

/**
 * Each route is its prefix width, only the significant octets of the
 * destination (so 0.0.0.0/0 is the single byte 0), then the router.
 */
export function encodeClasslessRoutes(routes: readonly ClasslessRoute[]): Buffer {
  const parts: number[] = [];
  for (const r of routes) {
    const c = parseCidr(r.dst);
    if (!c) throw new OptionError(`bad route destination ${JSON.stringify(r.dst)}`);
    const gw = parseCidr(r.gateway);
    if (!gw || gw.prefixlen !== 32) throw new OptionError(`bad gateway ${JSON.stringify(r.gateway)}`);
    parts.push(c.prefixlen);
    const significant = Math.ceil(c.prefixlen / 8);
    for (let i = 0; i < significant; i++) parts.push((c.addr >>> (24 - 8 * i)) & 255);
    for (let i = 0; i < 4; i++) parts.push((gw.addr >>> (24 - 8 * i)) & 255);
  }
  return Buffer.from(parts);
}

export function decodeClasslessRoutes(data: Uint8Array): ClasslessRoute[] {
  const out: ClasslessRoute[] = [];
  let i = 0;
  while (i < data.length) {
    const width = data[i]!;
    if (width > 32) throw new OptionError(`route prefix width ${width}`);
    const significant = Math.ceil(width / 8);
    if (i + 1 + significant + 4 > data.length) throw new OptionError('route runs past the end');
    let dst = 0;
    for (let k = 0; k < 4; k++) dst = dst * 256 + (k < significant ? data[i + 1 + k]! : 0);
    let gw = 0;
    for (let k = 0; k < 4; k++) gw = gw * 256 + data[i + 1 + significant + k]!;
    out.push({ dst: `${formatIpv4(dst)}/${width}`, gateway: formatIpv4(gw) });
    i += 1 + significant + 4;
  }
  return out;
}

// ---- RFC 3397 domain search list (119), RFC 1035 names -------------------

const LABEL = /^[A-Za-z0-9_-]{1,63}$/;

/**
 * Why a name can't go on the wire, or undefined if it can. Beyond RFC 1035's
 * limits we refuse anything but letters, digits, '-' and '_': guests' DHCP
 * scripts paste these strings into shell commands and config files.
 */
export function checkDomainName(name: string): string | undefined {
  const n = name.endsWith('.') ? name.slice(0, -1) : name;
  if (n === '') return 'empty name';
  let wire = 1;
  for (const label of n.split('.')) {
    if (label === '') return 'empty label';
    if (label.length > 63) return `label longer than 63 bytes (${label.slice(0, 20)}...)`;
    if (!LABEL.test(label)) return `label ${JSON.stringify(label)} has characters outside [A-Za-z0-9_-]`;
    wire += 1 + label.length;
  }
  if (wire > 255) return `name is ${wire} bytes encoded, more than 255`;
  return undefined;
}

/**
 * Names in RFC 1035 wire form, each ending in the root label. With
 * compression, a name whose tail was already written ends in a pointer to it;
 * offsets count from the start of the option's data as RFC 3397 says, which
 * is why the whole list is one buffer that RFC 3396 splitting cuts later.
 */
export function encodeSearchList(names: readonly string[], compress = true): Buffer {
  const bytes: number[] = [];
  const seen = new Map<string, number>();
  for (const name of names) {
    const why = checkDomainName(name);
    if (why) throw new OptionError(`search domain ${JSON.stringify(name)}: ${why}`);
    const labels = (name.endsWith('.') ? name.slice(0, -1) : name).split('.');
    let pointer = -1;
    for (let i = 0; i < labels.length; i++) {
      const suffix = labels.slice(i).join('.');
      const at = compress ? seen.get(suffix) : undefined;
      if (at !== undefined) {
        pointer = at;
        break;
      }
      // Pointers have 14 bits; later names just can't point this far.
      if (bytes.length <= 0x3fff) seen.set(suffix, bytes.length);
      const label = labels[i]!;
      bytes.push(label.length);
      for (let k = 0; k < label.length; k++) bytes.push(label.charCodeAt(k));
    }
    if (pointer >= 0) bytes.push(0xc0 | (pointer >> 8), pointer & 255);
    else bytes.push(0);
  }
  return Buffer.from(bytes);
}

/**
 * Decodes a (concatenated) option 119. Every pointer must jump strictly before
 * the previous jump's target, so a hostile list can't loop; names are limited
 * to 255 wire bytes.
 */
export function decodeSearchList(data: Uint8Array): string[] {
  const names: string[] = [];
  let pos = 0;
  while (pos < data.length) {
    const labels: string[] = [];
    let p = pos;
    let limit = pos; // a pointer must land before this
    let next = -1; // where the next name starts, once known
    let wire = 1;
    for (;;) {
      if (p >= data.length) throw new OptionError('name runs past the end');
      const len = data[p]!;
      if (len === 0) {
        if (next < 0) next = p + 1;
        break;
      }
      const kind = len & 0xc0;
      if (kind === 0xc0) {
        if (p + 1 >= data.length) throw new OptionError('pointer runs past the end');
        const target = ((len & 0x3f) << 8) | data[p + 1]!;
        if (next < 0) next = p + 2;
        if (target >= limit) throw new OptionError(`pointer to ${target} does not point backwards`);
        limit = target;
        p = target;
        continue;
      }
      if (kind !== 0) throw new OptionError(`label type 0x${kind.toString(16)}`);
      if (p + 1 + len > data.length) throw new OptionError('label runs past the end');
      wire += 1 + len;
      if (wire > 255) throw new OptionError('name longer than 255 bytes');
      labels.push(Buffer.from(data.buffer, data.byteOffset + p + 1, len).toString('latin1'));
      p += 1 + len;
    }
    names.push(labels.join('.'));
    pos = next;
  }
  return names;
}

// ---- RFC 3396 long options -----------------------------------------------

/** Bytes an option takes on the wire once split into TLVs of at most 255 data bytes. */
export function optionWireLength(dataLength: number): number {
  return dataLength === 0 ? 2 : dataLength + 2 * Math.ceil(dataLength / 255);
}

/**
 * Writes one option at `off`, as consecutive instances of the same code when
 * the data exceeds 255 bytes (RFC 3396), and returns the offset after it.
 */
export function writeOption(out: Buffer, off: number, code: number, data: Uint8Array): number {
  if (data.length === 0) {
    out[off] = code;
    out[off + 1] = 0;
    return off + 2;
  }
  for (let start = 0; start < data.length; start += 255) {
    const n = Math.min(255, data.length - start);
    out[off] = code;
    out[off + 1] = n;
    out.set(data.subarray(start, start + n), off + 2);
    off += 2 + n;
  }
  return off;
}
