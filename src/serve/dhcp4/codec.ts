// BOOTP/DHCP message layout (RFC 2131 §2, RFC 2132 §2-3, RFC 3396). Parsing
// never reads outside the datagram and never trusts a length it was given:
// every rejection is a ParseError carrying a short, stable reason that the
// server counts and logs. Parsed options are views into the datagram, copied
// only when RFC 3396 says to join several instances.

import { OPT, optionWireLength, writeOption } from './options.ts';

export const BOOTREQUEST = 1;
export const BOOTREPLY = 2;
export const MAGIC_COOKIE = 0x63825363;
/** Fixed header (236) plus the cookie. */
export const HEADER_SIZE = 240;
/** RFC 1542 §3.3 / RFC 2131: BOOTP relays and old clients expect at least this much. */
export const MIN_REPLY_SIZE = 300;

const SNAME_AT = 44;
const FILE_AT = 108;
const COOKIE_AT = 236;

export type ParseReason =
  | 'truncated'
  | 'bad-op'
  | 'bad-hlen'
  | 'no-cookie'
  | 'option-header-past-end'
  | 'option-past-end'
  | 'no-end-option'
  | 'bad-overload';

export class ParseError extends Error {
  override name = 'ParseError';
  readonly reason: ParseReason;
  constructor(reason: ParseReason, detail?: string) {
    super(detail ? `${reason}: ${detail}` : reason);
    this.reason = reason;
  }
}

/** The fixed BOOTP header fields; addresses are IPv4 as uint32. */
export interface HeaderFields {
  op: number;
  htype: number;
  hlen: number;
  hops: number;
  xid: number;
  secs: number;
  flags: number;
  ciaddr: number;
  yiaddr: number;
  siaddr: number;
  giaddr: number;
}

export interface DhcpPacket extends HeaderFields {
  chaddr: Buffer; // all 16 bytes as sent; the address is the first hlen
  sname: Buffer; // raw field, meaningless when overloaded with options
  file: Buffer;
  options: Map<number, Buffer>; // RFC 3396: every instance of a code joined in order
}

/** What a caller sets to build a message; chaddr/sname/file may be shorter than their field. */
export interface PacketFields extends HeaderFields {
  chaddr: Uint8Array;
  sname?: Uint8Array;
  file?: Uint8Array;
}

export type OptionList = ReadonlyArray<readonly [code: number, data: Uint8Array]>;

export const BROADCAST_FLAG = 0x8000;

/**
 * Walks one options area. Instances are appended per code so that RFC 3396
 * concatenation happens in the order the RFC gives: the options field, then
 * 'file', then 'sname'.
 */
function scanOptions(
  buf: Buffer,
  start: number,
  end: number,
  where: string,
  found: Map<number, Buffer[]>,
): void {
  let i = start;
  while (i < end) {
    const code = buf[i]!;
    if (code === OPT.PAD) {
      i++;
      continue;
    }
    if (code === OPT.END) return;
    if (i + 1 >= end) throw new ParseError('option-header-past-end', `option ${code} in ${where} at ${i}`);
    const len = buf[i + 1]!;
    if (i + 2 + len > end) {
      throw new ParseError('option-past-end', `option ${code} of ${len} bytes in ${where} at ${i}`);
    }
    const data = buf.subarray(i + 2, i + 2 + len);
    const list = found.get(code);
    if (list) list.push(data);
    else found.set(code, [data]);
    i += 2 + len;
  }
  throw new ParseError('no-end-option', where);
}

export function parsePacket(buf: Buffer): DhcpPacket {
  if (buf.length < HEADER_SIZE) throw new ParseError('truncated', `${buf.length} bytes`);
  const op = buf[0]!;
  if (op !== BOOTREQUEST && op !== BOOTREPLY) throw new ParseError('bad-op', String(op));
  const hlen = buf[2]!;
  if (hlen > 16) throw new ParseError('bad-hlen', String(hlen));
  if (buf.readUInt32BE(COOKIE_AT) !== MAGIC_COOKIE) throw new ParseError('no-cookie');

  const found = new Map<number, Buffer[]>();
  scanOptions(buf, HEADER_SIZE, buf.length, 'options', found);
  // Option 52 is only meaningful in the options field itself.
  const overload = found.get(OPT.OVERLOAD);
  let useFile = false;
  let useSname = false;
  if (overload) {
    const v = overload.length === 1 && overload[0]!.length === 1 ? overload[0]![0]! : 0;
    if (v < 1 || v > 3) throw new ParseError('bad-overload');
    useFile = (v & 1) !== 0;
    useSname = (v & 2) !== 0;
    if (useFile) scanOptions(buf, FILE_AT, FILE_AT + 128, 'file', found);
    if (useSname) scanOptions(buf, SNAME_AT, SNAME_AT + 64, 'sname', found);
  }

  const options = new Map<number, Buffer>();
  for (const [code, parts] of found) {
    options.set(code, parts.length === 1 ? parts[0]! : Buffer.concat(parts));
  }
  return {
    op,
    htype: buf[1]!,
    hlen,
    hops: buf[3]!,
    xid: buf.readUInt32BE(4),
    secs: buf.readUInt16BE(8),
    flags: buf.readUInt16BE(10),
    ciaddr: buf.readUInt32BE(12),
    yiaddr: buf.readUInt32BE(16),
    siaddr: buf.readUInt32BE(20),
    giaddr: buf.readUInt32BE(24),
    chaddr: buf.subarray(28, 44),
    sname: buf.subarray(SNAME_AT, SNAME_AT + 64),
    file: buf.subarray(FILE_AT, FILE_AT + 128),
    options,
  };
}

/** Bytes the options take once encoded, END included. */
export function optionsWireLength(options: OptionList): number {
  let n = 1;
  for (const [, data] of options) n += optionWireLength(data.length);
  return n;
}

/**
 * One allocation: the size is worked out first, the buffer is zero-filled
 * (so the padding up to 300 bytes is PAD options), and everything is written
 * into it in place. Options keep the order given.
 */
export function encodePacket(f: PacketFields, options: OptionList, minSize = MIN_REPLY_SIZE): Buffer {
  const size = Math.max(minSize, HEADER_SIZE + optionsWireLength(options));
  const out = Buffer.alloc(size);
  out[0] = f.op;
  out[1] = f.htype;
  out[2] = f.hlen;
  out[3] = f.hops;
  out.writeUInt32BE(f.xid >>> 0, 4);
  out.writeUInt16BE(f.secs, 8);
  out.writeUInt16BE(f.flags, 10);
  out.writeUInt32BE(f.ciaddr >>> 0, 12);
  out.writeUInt32BE(f.yiaddr >>> 0, 16);
  out.writeUInt32BE(f.siaddr >>> 0, 20);
  out.writeUInt32BE(f.giaddr >>> 0, 24);
  out.set(f.chaddr.subarray(0, 16), 28);
  if (f.sname) out.set(f.sname.subarray(0, 64), SNAME_AT);
  if (f.file) out.set(f.file.subarray(0, 128), FILE_AT);
  out.writeUInt32BE(MAGIC_COOKIE, COOKIE_AT);
  let off = HEADER_SIZE;
  for (const [code, data] of options) off = writeOption(out, off, code, data);
  out[off] = OPT.END;
  return out;
}

/** "aa:bb:cc:dd:ee:ff" from the first hlen bytes of chaddr. */
export function hardwareAddress(p: Pick<DhcpPacket, 'chaddr' | 'hlen'>): string {
  let s = '';
  const n = Math.min(p.hlen, 16);
  for (let i = 0; i < n; i++) {
    const b = p.chaddr[i]!;
    s += (i ? ':' : '') + (b < 16 ? '0' : '') + b.toString(16);
  }
  return s;
}

/** Parses "aa:bb:..." (or '-' separated) into bytes; undefined if malformed. */
export function parseMac(text: string): Buffer | undefined {
  const parts = text.split(/[:-]/);
  if (parts.length !== 6 || !parts.every((p) => /^[0-9a-fA-F]{2}$/.test(p))) return undefined;
  return Buffer.from(parts.map((p) => parseInt(p, 16)));
}
