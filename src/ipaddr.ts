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
