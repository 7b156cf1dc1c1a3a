// DHCPv6 message layout (RFC 8415 §8 and §21, RFC 3646 for options 23 and
// 24). Decoding reads guest input, so it never throws and never reads past
// the datagram or past the option that contains a nested one: every
// rejection is a typed error with a short, stable reason. Encoding is for
// our own replies and validates what it is given (a bad value is a bug).

import { formatIpv6Bytes, macBytes, mustIpv6 } from '../frames.ts';
import { OptionError, decodeSearchList, encodeSearchList } from '../dhcp4/options.ts';

export const CLIENT_PORT = 546;
export const SERVER_PORT = 547;
/** All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1): where clients send. */
export const ALL_DHCP_RELAY_AGENTS_AND_SERVERS = 'ff02::1:2';

export const MSG6 = {
  SOLICIT: 1,
  ADVERTISE: 2,
  REQUEST: 3,
  CONFIRM: 4,
  RENEW: 5,
  REBIND: 6,
  REPLY: 7,
  RELEASE: 8,
  DECLINE: 9,
  RECONFIGURE: 10,
  INFORMATION_REQUEST: 11,
  RELAY_FORW: 12,
  RELAY_REPL: 13,
} as const;

export const MSG6_NAMES: Record<number, string> = {
  1: 'SOLICIT',
  2: 'ADVERTISE',
  3: 'REQUEST',
  4: 'CONFIRM',
  5: 'RENEW',
  6: 'REBIND',
  7: 'REPLY',
  8: 'RELEASE',
  9: 'DECLINE',
  10: 'RECONFIGURE',
  11: 'INFORMATION-REQUEST',
  12: 'RELAY-FORW',
  13: 'RELAY-REPL',
};

export const OPT6 = {
  CLIENTID: 1,
  SERVERID: 2,
  IA_NA: 3,
  IA_TA: 4,
  IAADDR: 5,
  ORO: 6,
  PREFERENCE: 7,
  ELAPSED_TIME: 8,
  STATUS_CODE: 13,
  RAPID_COMMIT: 14,
  RECONF_ACCEPT: 20,
  DNS_SERVERS: 23,
  DOMAIN_LIST: 24,
  IA_PD: 25,
  IAPREFIX: 26,
  INFORMATION_REFRESH_TIME: 32,
} as const;

export const STATUS = {
  Success: 0,
  UnspecFail: 1,
  NoAddrsAvail: 2,
  NoBinding: 3,
  NotOnLink: 4,
  UseMulticast: 5,
  NoPrefixAvail: 6,
} as const;

/** RFC 8415 §11.1: a DUID is a 2-byte type and at most 128 more bytes. */
export const DUID_MAX = 130;
export const DUID_MIN = 3;
/** RFC 8415 §7.7: a lifetime of all ones means "forever". */
export const INFINITY = 0xffffffff;

export type Dhcp6Option =
  | { kind: 'client-id'; duid: Buffer }
  | { kind: 'server-id'; duid: Buffer }
  | { kind: 'ia-na'; iaid: number; t1: number; t2: number; options: Dhcp6Option[] }
  | { kind: 'ia-ta'; iaid: number; options: Dhcp6Option[] }
  | { kind: 'iaaddr'; address: string; preferred: number; valid: number; options: Dhcp6Option[] }
  | { kind: 'oro'; codes: number[] }
  | { kind: 'preference'; value: number }
  | { kind: 'elapsed-time'; hundredths: number }
  | { kind: 'status'; status: number; message: string }
  | { kind: 'rapid-commit' }
  | { kind: 'reconf-accept' }
  | { kind: 'dns-servers'; servers: string[] }
  | { kind: 'domain-list'; domains: string[] }
  | { kind: 'ia-pd'; iaid: number; t1: number; t2: number; options: Dhcp6Option[] }
  | { kind: 'iaprefix'; preferred: number; valid: number; prefixlen: number; prefix: string; options: Dhcp6Option[] }
  | { kind: 'information-refresh-time'; seconds: number }
  | { kind: 'raw'; code: number; data: Buffer };

export type OptionKind = Dhcp6Option['kind'];

export interface Dhcp6Message {
  type: number;
  xid: number; // 24 bits
  options: Dhcp6Option[];
}

export type DecodeReason =
  | 'truncated'
  | 'relay-message'
  | 'option-header-past-end'
  | 'option-past-end'
  | 'bad-option';

export interface DecodeError {
  reason: DecodeReason;
  detail: string;
}

export type DecodeResult = { ok: true; message: Dhcp6Message } | { ok: false; error: DecodeError };

const CODE_OF: Record<Exclude<OptionKind, 'raw'>, number> = {
  'client-id': OPT6.CLIENTID,
  'server-id': OPT6.SERVERID,
  'ia-na': OPT6.IA_NA,
  'ia-ta': OPT6.IA_TA,
  iaaddr: OPT6.IAADDR,
  oro: OPT6.ORO,
  preference: OPT6.PREFERENCE,
  'elapsed-time': OPT6.ELAPSED_TIME,
  status: OPT6.STATUS_CODE,
  'rapid-commit': OPT6.RAPID_COMMIT,
  'reconf-accept': OPT6.RECONF_ACCEPT,
  'dns-servers': OPT6.DNS_SERVERS,
  'domain-list': OPT6.DOMAIN_LIST,
  'ia-pd': OPT6.IA_PD,
  iaprefix: OPT6.IAPREFIX,
  'information-refresh-time': OPT6.INFORMATION_REFRESH_TIME,
};

export function optionCode(o: Dhcp6Option): number {
  return o.kind === 'raw' ? o.code : CODE_OF[o.kind];
}

// ---- decoding --------------------------------------------------------------

/** Thrown inside this module only; decodeMessage turns it into a DecodeError. */
class Malformed extends Error {
  readonly reason: DecodeReason;
  constructor(reason: DecodeReason, detail: string) {
    super(detail);
    this.reason = reason;
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: false });

function need(code: number, data: Buffer, ok: boolean, what: string): void {
  if (!ok) throw new Malformed('bad-option', `option ${code} of ${data.length} bytes: ${what}`);
}

/**
 * Which options may hold which: RFC 8415 §21.4-21.6 and 21.21-21.22. An
 * option elsewhere is kept as raw bytes, so a nested IAADDR in a top-level
 * position can't be mistaken for an assignment.
 */
type Scope = 'message' | 'ia-na' | 'ia-ta' | 'ia-pd' | 'iaaddr' | 'iaprefix';

const CONTAINERS: Partial<Record<number, Scope>> = {
  [OPT6.IA_NA]: 'ia-na',
  [OPT6.IA_TA]: 'ia-ta',
  [OPT6.IA_PD]: 'ia-pd',
  [OPT6.IAADDR]: 'iaaddr',
  [OPT6.IAPREFIX]: 'iaprefix',
};

function allowedIn(code: number, scope: Scope): boolean {
  switch (code) {
    case OPT6.IAADDR:
      return scope === 'ia-na' || scope === 'ia-ta';
    case OPT6.IAPREFIX:
      return scope === 'ia-pd';
    case OPT6.STATUS_CODE:
      return true;
    default:
      return scope === 'message';
  }
}

function decodeOptions(buf: Buffer, start: number, end: number, scope: Scope, depth: number): Dhcp6Option[] {
  const out: Dhcp6Option[] = [];
  let i = start;
  while (i < end) {
    if (i + 4 > end) throw new Malformed('option-header-past-end', `${end - i} bytes left at ${i}`);
    const code = buf.readUInt16BE(i);
    const len = buf.readUInt16BE(i + 2);
    if (i + 4 + len > end) throw new Malformed('option-past-end', `option ${code} of ${len} bytes at ${i}`);
    const data = buf.subarray(i + 4, i + 4 + len);
    out.push(allowedIn(code, scope) ? decodeOption(code, data, depth) : { kind: 'raw', code, data });
    i += 4 + len;
  }
  return out;
}

function u32(data: Buffer, at: number): number {
  return data.readUInt32BE(at);
}

function decodeOption(code: number, data: Buffer, depth: number): Dhcp6Option {
  // Containers nest at most IA -> IAADDR/IAPREFIX -> STATUS_CODE, and every
  // level is strictly shorter than the one holding it; the bound is a belt.
  const nested = (at: number) => {
    if (depth >= 4) throw new Malformed('bad-option', `option ${code} nested too deep`);
    return decodeOptions(data, at, data.length, CONTAINERS[code]!, depth + 1);
  };
  switch (code) {
    case OPT6.CLIENTID:
    case OPT6.SERVERID:
      // Length limits are the handler's business (it says why it drops);
      // an empty identifier carries nothing at all.
      need(code, data, data.length > 0, 'empty DUID');
      return { kind: code === OPT6.CLIENTID ? 'client-id' : 'server-id', duid: data };
    case OPT6.IA_NA:
    case OPT6.IA_PD:
      need(code, data, data.length >= 12, 'shorter than IAID, T1 and T2');
      return { kind: code === OPT6.IA_NA ? 'ia-na' : 'ia-pd', iaid: u32(data, 0), t1: u32(data, 4), t2: u32(data, 8), options: nested(12) };
    case OPT6.IA_TA:
      need(code, data, data.length >= 4, 'shorter than IAID');
      return { kind: 'ia-ta', iaid: u32(data, 0), options: nested(4) };
    case OPT6.IAADDR:
      need(code, data, data.length >= 24, 'shorter than address and lifetimes');
      return { kind: 'iaaddr', address: formatIpv6Bytes(data, 0), preferred: u32(data, 16), valid: u32(data, 20), options: nested(24) };
    case OPT6.IAPREFIX: {
      need(code, data, data.length >= 25, 'shorter than lifetimes, length and prefix');
      const prefixlen = data[8]!;
      need(code, data, prefixlen <= 128, `prefix length ${prefixlen}`);
      return { kind: 'iaprefix', preferred: u32(data, 0), valid: u32(data, 4), prefixlen, prefix: formatIpv6Bytes(data, 9), options: nested(25) };
    }
    case OPT6.ORO: {
      need(code, data, data.length % 2 === 0, 'odd length');
      const codes: number[] = [];
      for (let i = 0; i < data.length; i += 2) codes.push(data.readUInt16BE(i));
      return { kind: 'oro', codes };
    }
    case OPT6.PREFERENCE:
      need(code, data, data.length === 1, 'not 1 byte');
      return { kind: 'preference', value: data[0]! };
    case OPT6.ELAPSED_TIME:
      need(code, data, data.length === 2, 'not 2 bytes');
      return { kind: 'elapsed-time', hundredths: data.readUInt16BE(0) };
    case OPT6.STATUS_CODE:
      need(code, data, data.length >= 2, 'shorter than the status');
      return { kind: 'status', status: data.readUInt16BE(0), message: utf8.decode(data.subarray(2)) };
    case OPT6.RAPID_COMMIT:
    case OPT6.RECONF_ACCEPT:
      need(code, data, data.length === 0, 'not empty');
      return { kind: code === OPT6.RAPID_COMMIT ? 'rapid-commit' : 'reconf-accept' };
    case OPT6.DNS_SERVERS: {
      need(code, data, data.length % 16 === 0, 'not a list of addresses');
      const servers: string[] = [];
      for (let i = 0; i < data.length; i += 16) servers.push(formatIpv6Bytes(data, i));
      return { kind: 'dns-servers', servers };
    }
    case OPT6.DOMAIN_LIST:
      try {
        return { kind: 'domain-list', domains: decodeSearchList(data) };
      } catch (e) {
        if (e instanceof OptionError) throw new Malformed('bad-option', `option 24: ${e.message}`);
        throw e;
      }
    case OPT6.INFORMATION_REFRESH_TIME:
      need(code, data, data.length === 4, 'not 4 bytes');
      return { kind: 'information-refresh-time', seconds: u32(data, 0) };
    default:
      return { kind: 'raw', code, data };
  }
}

/**
 * A client or server message (RFC 8415 §8). Relay messages (§9) have
 * another header and are refused here: nothing relays on a VM's TAP.
 * Option payloads are views into `buf`.
 */
export function decodeMessage(buf: Buffer): DecodeResult {
  if (buf.length < 4) return { ok: false, error: { reason: 'truncated', detail: `${buf.length} bytes` } };
  const type = buf[0]!;
  if (type === MSG6.RELAY_FORW || type === MSG6.RELAY_REPL) {
    return { ok: false, error: { reason: 'relay-message', detail: MSG6_NAMES[type]! } };
  }
  try {
    const options = decodeOptions(buf, 4, buf.length, 'message', 0);
    return { ok: true, message: { type, xid: (buf[1]! << 16) | (buf[2]! << 8) | buf[3]!, options } };
  } catch (e) {
    if (e instanceof Malformed) return { ok: false, error: { reason: e.reason, detail: e.message } };
    throw e;
  }
}

// ---- encoding --------------------------------------------------------------

function checkU32(v: number, what: string): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new Error(`bad ${what} ${v}`);
}

function checkU16(v: number, what: string): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff) throw new Error(`bad ${what} ${v}`);
}

function header(code: number, data: Buffer): Buffer {
  if (data.length > 0xffff) throw new Error(`option ${code} of ${data.length} bytes does not fit`);
  const h = Buffer.alloc(4);
  h.writeUInt16BE(code, 0);
  h.writeUInt16BE(data.length, 2);
  return Buffer.concat([h, data]);
}

function u32s(...vs: number[]): Buffer {
  const b = Buffer.alloc(4 * vs.length);
  vs.forEach((v, i) => b.writeUInt32BE(v, 4 * i));
  return b;
}

function encodeData(o: Dhcp6Option): Buffer {
  switch (o.kind) {
    case 'client-id':
    case 'server-id':
      return Buffer.from(o.duid);
    case 'ia-na':
    case 'ia-pd':
      checkU32(o.iaid, 'IAID');
      checkU32(o.t1, 'T1');
      checkU32(o.t2, 'T2');
      return Buffer.concat([u32s(o.iaid, o.t1, o.t2), encodeOptions(o.options)]);
    case 'ia-ta':
      checkU32(o.iaid, 'IAID');
      return Buffer.concat([u32s(o.iaid), encodeOptions(o.options)]);
    case 'iaaddr':
      checkU32(o.preferred, 'preferred lifetime');
      checkU32(o.valid, 'valid lifetime');
      return Buffer.concat([mustIpv6(o.address), u32s(o.preferred, o.valid), encodeOptions(o.options)]);
    case 'iaprefix': {
      checkU32(o.preferred, 'preferred lifetime');
      checkU32(o.valid, 'valid lifetime');
      if (!Number.isInteger(o.prefixlen) || o.prefixlen < 0 || o.prefixlen > 128) throw new Error(`bad prefix length ${o.prefixlen}`);
      return Buffer.concat([u32s(o.preferred, o.valid), Buffer.from([o.prefixlen]), mustIpv6(o.prefix), encodeOptions(o.options)]);
    }
    case 'oro': {
      const b = Buffer.alloc(2 * o.codes.length);
      o.codes.forEach((c, i) => {
        checkU16(c, 'option code');
        b.writeUInt16BE(c, 2 * i);
      });
      return b;
    }
    case 'preference':
      if (!Number.isInteger(o.value) || o.value < 0 || o.value > 255) throw new Error(`bad preference ${o.value}`);
      return Buffer.from([o.value]);
    case 'elapsed-time': {
      checkU16(o.hundredths, 'elapsed time');
      const b = Buffer.alloc(2);
      b.writeUInt16BE(o.hundredths);
      return b;
    }
    case 'status': {
      checkU16(o.status, 'status code');
      const b = Buffer.alloc(2);
      b.writeUInt16BE(o.status);
      return Buffer.concat([b, Buffer.from(o.message, 'utf8')]);
    }
    case 'rapid-commit':
    case 'reconf-accept':
      return Buffer.alloc(0);
    case 'dns-servers':
      return Buffer.concat(o.servers.map(mustIpv6));
    case 'domain-list':
      // RFC 8415 §10: names in DHCPv6 options are never compressed.
      return encodeSearchList(o.domains, false);
    case 'information-refresh-time':
      checkU32(o.seconds, 'information refresh time');
      return u32s(o.seconds);
    case 'raw':
      checkU16(o.code, 'option code');
      return Buffer.from(o.data);
  }
}

export function encodeOption(o: Dhcp6Option): Buffer {
  return header(optionCode(o), encodeData(o));
}

export function encodeOptions(options: readonly Dhcp6Option[]): Buffer {
  return Buffer.concat(options.map(encodeOption));
}

export function encodeMessage(m: Dhcp6Message): Buffer {
  if (!Number.isInteger(m.type) || m.type < 0 || m.type > 255) throw new Error(`bad message type ${m.type}`);
  if (!Number.isInteger(m.xid) || m.xid < 0 || m.xid > 0xffffff) throw new Error(`bad transaction id ${m.xid}`);
  const h = Buffer.from([m.type, (m.xid >> 16) & 255, (m.xid >> 8) & 255, m.xid & 255]);
  return Buffer.concat([h, encodeOptions(m.options)]);
}

// ---- helpers -----------------------------------------------------------------

/** The options of one kind, in message order, typed. */
export function optionsOf<K extends OptionKind>(options: readonly Dhcp6Option[], kind: K): Extract<Dhcp6Option, { kind: K }>[] {
  return options.filter((o): o is Extract<Dhcp6Option, { kind: K }> => o.kind === kind);
}

export function firstOption<K extends OptionKind>(options: readonly Dhcp6Option[], kind: K): Extract<Dhcp6Option, { kind: K }> | undefined {
  return options.find((o): o is Extract<Dhcp6Option, { kind: K }> => o.kind === kind);
}

/** RFC 8415 §11.4 DUID-LL: type 3, hardware type 1 (Ethernet), the MAC. Stable, and needs no clock. */
export function duidLinkLayer(mac: string): Buffer {
  const m = macBytes(mac);
  if (!m) throw new Error(`not a MAC address: ${JSON.stringify(mac)}`);
  return Buffer.concat([Buffer.from([0, 3, 0, 1]), m]);
}
