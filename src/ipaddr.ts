// IPv4 arithmetic on plain numbers: small enough not to need a library, and
// shared by planning, the DHCP identity and option validation.

import { isIPv4 } from 'node:net';

export interface Cidr4 {
  address: string;
  prefixlen: number;
}

export function ip4ToInt(ip: string): number {
  const p = ip.split('.');
  return ((Number(p[0]) << 24) | (Number(p[1]) << 16) | (Number(p[2]) << 8) | Number(p[3])) >>> 0;
}

export function intToIp4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

export function maskOf(prefixlen: number): number {
  return prefixlen === 0 ? 0 : (0xffffffff << (32 - prefixlen)) >>> 0;
}

export function parseCidr4(s: string): Cidr4 | undefined {
  const m = /^([0-9.]+)(?:\/(\d{1,2}))?$/.exec(s);
  if (!m || !isIPv4(m[1]!)) return undefined;
  const prefixlen = m[2] === undefined ? 32 : Number(m[2]);
  if (prefixlen > 32) return undefined;
  return { address: m[1]!, prefixlen };
}

export function networkOf(c: Cidr4): string {
  return intToIp4((ip4ToInt(c.address) & maskOf(c.prefixlen)) >>> 0);
}

export function contains(net: Cidr4, ip: string): boolean {
  const m = maskOf(net.prefixlen);
  return ((ip4ToInt(net.address) & m) >>> 0) === ((ip4ToInt(ip) & m) >>> 0);
}

/** `ip -j` writes host routes without a prefix and the default route as "default". */
export function routeDst4(dst: string): Cidr4 {
  if (dst === 'default') return { address: '0.0.0.0', prefixlen: 0 };
  const c = parseCidr4(dst);
  if (!c) throw new Error(`not an IPv4 destination: ${dst}`);
  return c;
}

/** IPv6 text to a 128-bit number; undefined if malformed. */
export function parseIpv6(s: string): bigint | undefined {
  if (!/^[0-9a-fA-F:.]+$/.test(s)) return undefined;
  const halves = s.split('::');
  if (halves.length > 2) return undefined;
  const groups = (h: string) => (h === '' ? [] : h.split(':'));
  const head = groups(halves[0]!);
  const tail = halves.length === 2 ? groups(halves[1]!) : [];
  const missing = 8 - head.length - tail.length;
  if ((halves.length === 1 && missing !== 0) || missing < 0) return undefined;
  let v = 0n;
  for (const g of [...head, ...Array(halves.length === 2 ? missing : 0).fill('0'), ...tail]) {
    if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return undefined;
    v = (v << 16n) | BigInt(parseInt(g, 16));
  }
  return v;
}

/** RFC 5952 text, as iproute2 prints it. */
export function formatIpv6(v: bigint): string {
  const g: number[] = [];
  for (let i = 7; i >= 0; i--) g.push(Number((v >> BigInt(i * 16)) & 0xffffn));
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = g.map((x) => x.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

export function network6(address: string, prefixlen: number): string {
  const v = parseIpv6(address);
  if (v === undefined) throw new Error(`not an IPv6 address: ${address}`);
  const mask = prefixlen === 0 ? 0n : ((1n << 128n) - 1n) ^ ((1n << BigInt(128 - prefixlen)) - 1n);
  return formatIpv6(v & mask);
}
