// What the VM is told by DHCPv6, derived from the NIC's IPv6 identity. Pure:
// the same identity always gives the same config and warnings.

import { formatIpv6, network6, parseIpv6 } from '../../net/ipv6.ts';
import { checkDomainName } from '../dhcp4/options.ts';
import { isIpv6LinkLocal, isIpv6Multicast } from '../frames.ts';
import type { Ipv6Identity } from '../nd/ra.ts';
import { DUID_MAX, DUID_MIN } from './codec.ts';

export interface Dhcp6Config {
  serverDuid: Buffer;
  /** The pod interface's global addresses, all handed out in one IA_NA, in this order. */
  addresses: string[];
  /**
   * Prefixes of this link: each address's own subnet and the pod's on-link
   * prefixes. A hint outside all of them is "not on link" (RFC 8415 §18.3.2).
   */
  linkPrefixes: { prefix: string; prefixlen: number }[];
  dnsServers: string[]; // IPv6 only (option 23)
  search: string[]; // option 24
  /** Preferred and valid lifetime of every address. */
  leaseSeconds: number;
  t1: number;
  t2: number;
  /** Option 7 in every Advertise: 255 makes the client request at once (RFC 8415 §18.2.1). */
  preference: number;
  /** Answer a Solicit with Rapid Commit by a Reply that binds (RFC 8415 §18.3.1). */
  rapidCommit: boolean;
  /** Option 32, only in replies to Information-request (RFC 8415 §21.23). */
  informationRefreshSeconds: number;
}

/** RFC 8415 §7.6 IRT_MINIMUM: clients ignore a shorter refresh time. */
export const IRT_MINIMUM = 600;

export function dhcp6ConfigFrom(
  identity: Ipv6Identity,
  opts: { serverDuid: Buffer; leaseSeconds: number; rapidCommit?: boolean },
): { config: Dhcp6Config; warnings: string[] } {
  const warnings: string[] = [];
  if (opts.serverDuid.length < DUID_MIN || opts.serverDuid.length > DUID_MAX) {
    throw new Error(`server DUID of ${opts.serverDuid.length} bytes; RFC 8415 allows ${DUID_MIN}-${DUID_MAX}`);
  }
  const lease = opts.leaseSeconds;
  // All ones means infinity on the wire (RFC 8415 §7.7); a lease is finite.
  if (!Number.isInteger(lease) || lease < 1 || lease >= 0xffffffff) throw new Error(`bad lease time ${lease}`);

  const addresses: string[] = [];
  const linkPrefixes: { prefix: string; prefixlen: number }[] = [];
  const seenPrefix = new Set<string>();
  const addPrefix = (prefix: string, prefixlen: number) => {
    const net = network6(prefix, prefixlen);
    const key = `${net}/${prefixlen}`;
    if (seenPrefix.has(key)) return;
    seenPrefix.add(key);
    linkPrefixes.push({ prefix: net, prefixlen });
  };
  for (const a of identity.addresses) {
    const v = parseIpv6(a.address);
    if (v === undefined || !Number.isInteger(a.prefixlen) || a.prefixlen < 0 || a.prefixlen > 128) {
      throw new Error(`bad IPv6 address ${a.address}/${a.prefixlen}`);
    }
    // DHCPv6 carries addresses, not prefixes: the guest learns what is
    // on-link from the RA's prefix information.
    const text = formatIpv6(v);
    if (isIpv6LinkLocal(text) || isIpv6Multicast(text) || v <= 1n) {
      warnings.push(`address ${a.address} is not a global unicast address; not handed out`);
      continue;
    }
    if (addresses.includes(text)) continue;
    addresses.push(text);
    addPrefix(text, a.prefixlen);
  }
  for (const p of identity.onLink) {
    if (parseIpv6(p.prefix) === undefined || !Number.isInteger(p.prefixlen) || p.prefixlen < 0 || p.prefixlen > 128) {
      throw new Error(`bad on-link prefix ${p.prefix}/${p.prefixlen}`);
    }
    addPrefix(p.prefix, p.prefixlen);
  }

  const dnsServers: string[] = [];
  const search: string[] = [];
  if (identity.dns) {
    for (const s of identity.dns.servers) {
      const v = parseIpv6(s);
      // IPv4 nameservers go out by DHCPv4; option 23 only holds IPv6.
      if (v !== undefined) dnsServers.push(formatIpv6(v));
    }
    // The search list (option 24) only with an IPv6 nameserver, as in the
    // RA (nd/ra.ts): without one it belongs with DHCPv4's nameservers.
    for (const d of dnsServers.length > 0 ? identity.dns.search : []) {
      const why = checkDomainName(d);
      if (why) warnings.push(`search domain ${JSON.stringify(d)} cannot be encoded (${why}); skipped`);
      else search.push(d.endsWith('.') ? d.slice(0, -1) : d);
    }
  }

  const config: Dhcp6Config = {
    serverDuid: Buffer.from(opts.serverDuid),
    addresses,
    linkPrefixes,
    dnsServers,
    search,
    leaseSeconds: lease,
    // RFC 8415 §21.4 recommends 0.5 and 0.8 of the shortest preferred lifetime.
    t1: Math.floor(lease * 0.5),
    t2: Math.floor(lease * 0.8),
    preference: 255,
    rapidCommit: opts.rapidCommit ?? true,
    informationRefreshSeconds: Math.max(IRT_MINIMUM, lease),
  };
  if (addresses.length === 0) warnings.push('no global IPv6 address to hand out; DHCPv6 answers with NoAddrsAvail and serves configuration only');
  return { config, warnings };
}
