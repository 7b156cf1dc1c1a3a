// IPv4 addresses as unsigned 32-bit numbers. The request path compares
// addresses on every packet; numbers compare without allocating, strings are
// only made for logs and replies' destinations.

const QUAD = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/** Strict dotted quad to uint32; returns undefined for anything else (no octal, no shorthand). */
export function parseIpv4(text: string): number | undefined {
  const m = QUAD.exec(text);
  if (!m) return undefined;
  let v = 0;
  for (let i = 1; i <= 4; i++) {
    const part = m[i]!;
    if (part.length > 1 && part[0] === '0') return undefined;
    const n = Number(part);
    if (n > 255) return undefined;
    v = v * 256 + n;
  }
  return v;
}

/** Like parseIpv4 but for configuration, where a bad address is a programming error. */
export function ipv4(text: string): number {
  const v = parseIpv4(text);
  if (v === undefined) throw new Error(`not an IPv4 address: ${JSON.stringify(text)}`);
  return v;
}

export function formatIpv4(v: number): string {
  return `${(v >>> 24) & 255}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
}

export function maskOf(prefixlen: number): number {
  return prefixlen <= 0 ? 0 : (0xffffffff << (32 - prefixlen)) >>> 0;
}

export function networkOf(addr: number, prefixlen: number): number {
  return (addr & maskOf(prefixlen)) >>> 0;
}

export function contains(net: number, prefixlen: number, addr: number): boolean {
  return networkOf(addr, prefixlen) === networkOf(net, prefixlen);
}

export interface Cidr {
  addr: number; // host bits cleared by parseCidr, kept by parseIfaceCidr
  prefixlen: number;
}

/**
 * `ip -j` route destinations: "default", "a.b.c.d/n", or a bare address for a
 * host route. Host bits are cleared because a route's key is its network.
 */
export function parseCidr(text: string): Cidr | undefined {
  if (text === 'default') return { addr: 0, prefixlen: 0 };
  const slash = text.indexOf('/');
  const host = slash < 0 ? text : text.slice(0, slash);
  const addr = parseIpv4(host);
  if (addr === undefined) return undefined;
  let prefixlen = 32;
  if (slash >= 0) {
    const p = text.slice(slash + 1);
    if (!/^\d{1,2}$/.test(p)) return undefined;
    prefixlen = Number(p);
    if (prefixlen > 32) return undefined;
  }
  return { addr: networkOf(addr, prefixlen), prefixlen };
}

export function formatCidr(c: Cidr): string {
  return `${formatIpv4(c.addr)}/${c.prefixlen}`;
}

/**
 * An interface address with its prefix ("10.1.0.5/24", or a bare address as
 * /32), host bits kept: the address itself matters, not just its network.
 */
export function parseIfaceCidr(text: string): Cidr | undefined {
  const slash = text.indexOf('/');
  const addr = parseIpv4(slash < 0 ? text : text.slice(0, slash));
  if (addr === undefined) return undefined;
  const p = slash < 0 ? '32' : text.slice(slash + 1);
  if (!/^\d{1,2}$/.test(p) || Number(p) > 32) return undefined;
  return { addr, prefixlen: Number(p) };
}
