// The guard, and for the redirect data path the data path itself: one
// nftables table of podtap's own per family, loaded and deleted as a unit.
// A dedicated table (rather than `ebtables -A`) is what makes teardown exact:
// deleting it removes every trace in one transaction.
//
// The rules are an allow-list, applied to what the node will actually
// process: from the guest only untagged IPv4, ARP and IPv6 frames leave
// (the kernel strips VLAN tags the node would then take as plain frames),
// with the guest's own MAC and addresses; no DHCP or router messages pass in
// either direction; podtap's own servers read the guest's requests from a
// packet socket on the TAP, which sees frames before these hooks do.
//
// The journal holds the typed description (NftTable), never the script:
// `validateNftTable` checks it before anything is rendered from it.

import { parseIpv4 } from '../net/ipv4.ts';
import { parseIpv6 } from '../net/ipv6.ts';
import { validIfname, validMac } from '../net/names.ts';

export const TABLE = 'podtap';

/** One NIC's rules. */
export interface NicGuard {
  nic: number;
  podIf: string; // the pod interface
  tap: string;
  bridge?: string; // bridge data path only
  vmMac: string;
  antispoof: boolean;
  ipv4: string[]; // sources the guest may use besides DHCP's 0.0.0.0
  ipv6: string[]; // global sources the guest may use besides its link-local ones and ::
  /**
   * The guest's own link-local addresses: the one its MAC gives (EUI-64),
   * and what it claimed first by duplicate address detection (a guest with
   * stable-privacy addresses), which podtap adds as it sees them
   * (serve/savi.ts). No other link-local source or claim leaves the guest.
   */
  guestLinkLocal: string[];
  /** Link-local addresses that are the router's (podtap's or the gateway's): never the guest's. */
  reservedLinkLocal: string[];
  /** The router address podtap answers neighbour solicitations for: the guest's solicitations for it stay inside. */
  ndProxy?: string;
  /** The DHCPv4 server identifier podtap answers ARP for: the guest's requests for it stay inside. */
  serverId?: string;
  /**
   * Ports forwarded from the pod namespace (--forward-port): the guest's
   * answers to podtap's address on these ports go to the pod's stack
   * instead of the node; nothing else of the guest's ever does.
   */
  forward?: { address: string; tcp: number[]; udp: number[]; bridgeMac?: string };
}

export interface NftTable {
  family: 'bridge' | 'netdev';
  name: typeof TABLE;
  nics: NicGuard[];
  /**
   * Bridge-path pod interfaces whose own stack must say nothing (netdev
   * family, where the kernel has egress hooks): such a port wears a MAC the
   * node never knew, and the kernel's last MLD reports for the addresses
   * podtap took away would go out with it, past the bridge's hooks. Every
   * frame the VM sends carries the VM's MAC, so any other source is the
   * pod's stack. (On the redirect path the pod interface keeps the VM's
   * MAC: what its stack says then is the pod's, as before podtap.)
   */
  quiet?: { nic: number; podIf: string; vmMac: string }[];
}

/** Broadcast and multicast frames per second the guest may send (ARP, ND, DHCP need a handful). */
export const FLOOD_LIMIT = { rate: 2000, burst: 1000 };

// Raw link-layer matches for the rules every frame meets. They load the same
// bytes as `ether type` and `meta pkttype { broadcast, multicast }`, and the
// kernel reads a VLAN-tagged frame's ethertype as 0x8100 either way (it puts
// the tag it took off back for link-layer loads), but they cost a frame less:
// no `meta iiftype` check (a TAP, veth or macvlan is always Ethernet) and no
// set lookup: on the redirect path, about 7 % more frames per CPU-second
// than `ether type vmap` and the pkttype set (bench/datapath.ts).
/** The destination's group bit: set in broadcast and multicast frames, exactly those the kernel gives pkttype broadcast or multicast. */
export const GROUP_BIT = '@ll,7,1 1';
/** The ethertype (after any VLAN tag the kernel took off: 0x8100 then). */
export const ETHERTYPE = '@ll,96,16';
const ETHERTYPES = { ip: '0x0800', arp: '0x0806', ip6: '0x86dd' } as const;

function set(items: string[]): string {
  return items.length === 1 ? items[0]! : `{ ${items.join(', ')} }`;
}

/** An IPv6 address as the 128-bit integer nft's raw payload matches compare with. */
function hex128(addr: string): string {
  return '0x' + parseIpv6(addr)!.toString(16).padStart(32, '0');
}

/**
 * A direction's rules: `head` for every frame, then per ethertype, which the
 * head chain dispatches to (anything else is dropped). Every rule drops;
 * what is left goes on (the bridge forwards it, the redirect chain moves
 * it). A frame meets only its own protocol's rules: an IPv4 frame from the
 * guest passes about five, which matters at millions of frames a second.
 * Drops that mean an attack or a misconfigured guest are counted under a
 * reason that `podtap status` reports.
 */
export interface Rules {
  head: string[];
  ip: string[];
  arp: string[];
  ip6: string[];
}

/** Rules for frames from the guest. */
export function fromVmRules(g: NicGuard): Rules {
  const head: string[] = [];
  if (g.antispoof) head.push(`ether saddr != ${g.vmMac} counter drop comment "spoofed-mac"`);
  head.push(`${GROUP_BIT} limit rate over ${FLOOD_LIMIT.rate}/second burst ${FLOOD_LIMIT.burst} packets counter drop comment "flood"`);
  const v4 = g.ipv4;
  const ip = [
    // The guest's DHCP requests are for podtap, whose packet socket
    // already has them.
    `udp dport 67 drop`,
    `udp sport 67 counter drop comment "dhcp-server"`,
  ];
  const arp: string[] = g.serverId ? [`arp daddr ip ${g.serverId} drop`] : [];
  const ip6 = [
    `udp dport 547 drop`,
    `icmpv6 type nd-router-solicit drop`,
    `udp sport 547 counter drop comment "dhcp-server"`,
    `icmpv6 type { nd-router-advert, nd-redirect, router-renumbering } counter drop comment "router"`,
  ];
  if (g.ndProxy) ip6.push(`icmpv6 type nd-neighbor-solicit @th,64,128 ${hex128(g.ndProxy)} drop`);
  if (g.antispoof) {
    ip.push(v4.length ? `ip saddr != ${set(v4)} counter drop comment "spoofed-ipv4"` : `counter drop comment "spoofed-ipv4"`);
    arp.push(
      `arp htype != 1 counter drop comment "bad-arp"`,
      `arp ptype != ip counter drop comment "bad-arp"`,
      `arp hlen != 6 counter drop comment "bad-arp"`,
      `arp plen != 4 counter drop comment "bad-arp"`,
      `arp saddr ether != ${g.vmMac} counter drop comment "spoofed-arp"`,
      `arp saddr ip != ${set(['0.0.0.0', ...v4])} counter drop comment "spoofed-arp"`,
    );
    ip6.push(
      // The unspecified address is for duplicate address detection and the
      // MLD reports that go with it, nothing else.
      // 58 rather than ipv6-icmp: nft looks names up in /etc/protocols,
      // which slim images lack.
      `ip6 saddr :: meta l4proto != 58 counter drop comment "spoofed-ipv6"`,
      `ip6 saddr :: icmpv6 type != { nd-neighbor-solicit, mld-listener-report, mld2-listener-report } counter drop comment "spoofed-ipv6"`,
      `ip6 saddr != ${set(['::', 'fe80::/10', ...g.ipv6])} counter drop comment "spoofed-ipv6"`,
      `ip6 saddr fe80::/10 ip6 saddr != ${set(g.guestLinkLocal)} counter drop comment "spoofed-ipv6"`,
      // Neighbour advertisements may claim only the guest's own addresses.
      `icmpv6 type nd-neighbor-advert @th,64,64 0xfe80000000000000 @th,64,128 != ${set(g.guestLinkLocal.map(hex128))} counter drop comment "spoofed-na"`,
      `icmpv6 type nd-neighbor-advert @th,64,64 != 0xfe80000000000000${g.ipv6.length ? ` @th,64,128 != ${set(g.ipv6.map(hex128))}` : ''} counter drop comment "spoofed-na"`,
    );
  }
  // Last, once the frame is known to be the guest's own: answers on
  // forwarded ports go up the pod's stack (the guest routes them to its
  // gateway's MAC; the pod's stack must take them as its own).
  const f = g.forward;
  if (f) {
    const up = f.bridgeMac ? `ether daddr set ${f.bridgeMac} meta pkttype set host` : 'meta pkttype set host accept';
    if (f.tcp.length) ip.push(`ip daddr ${f.address} tcp sport ${set(f.tcp.map(String))} ${up}`);
    if (f.udp.length) ip.push(`ip daddr ${f.address} udp sport ${set(f.udp.map(String))} ${up}`);
  }
  return { head, ip, arp, ip6 };
}

/** Rules for frames from the pod interface towards the guest. */
export function fromPodRules(): Rules {
  // The guest's identity comes from podtap only: no outside DHCP server or
  // router may answer it, and nobody outside talks to podtap's servers.
  return {
    head: [],
    ip: [`udp sport 67 counter drop comment "outside-dhcp"`, `udp dport 67 counter drop comment "outside-dhcp"`],
    arp: [],
    ip6: [
      `udp sport 547 counter drop comment "outside-dhcp"`,
      `udp dport 547 counter drop comment "outside-dhcp"`,
      `icmpv6 type { nd-router-advert, nd-redirect } counter drop comment "outside-router"`,
    ],
  };
}

/**
 * One direction's chains: `name` dispatches by ethertype to `name_ip`,
 * `name_arp` and `name_ip6` and drops every other ethertype (VLAN tags
 * included). `last` ends each protocol chain: the redirect path's `fwd`.
 * One compare per protocol, IPv4 first: cheaper than a verdict map's lookup
 * for three entries.
 */
function direction(name: string, head: string | undefined, rules: Rules, last: string[]): string[] {
  const protos = ['ip', 'arp', 'ip6'] as const;
  return [
    chain(name, head, [
      ...rules.head,
      ...protos.map((p) => `${ETHERTYPE} ${ETHERTYPES[p]} goto ${name}_${p}`),
      `counter drop comment "not-ip"`,
    ]),
    ...protos.map((p) => chain(`${name}_${p}`, undefined, [...rules[p], ...last])),
  ];
}

const q = (name: string) => JSON.stringify(name);

function bridgeTable(t: NftTable): string {
  const vmap = t.nics.flatMap((g) => [`${q(g.tap)} : jump vm${g.nic}`, `${q(g.podIf)} : jump pod${g.nic}`]).join(', ');
  const chains = t.nics.flatMap((g) => [...direction(`vm${g.nic}`, undefined, fromVmRules(g), []), ...direction(`pod${g.nic}`, undefined, fromPodRules(), [])]);
  // The bridge has no address and nothing to say or hear: whatever its own
  // stack would send stays inside, and broadcast and multicast (and frames
  // for its own MAC) it would pass up to the pod's stack, where a service
  // bound to 0.0.0.0 would answer the guest or the node, go nowhere. The one
  // exception: podtap's forwarded connections to the guest.
  const ports = t.nics.flatMap((g) => [g.podIf, g.tap]).map(q);
  const forwarded = (way: 'out' | 'in') =>
    t.nics.flatMap((g) => {
      const f = g.forward;
      if (!f) return [];
      const [dev, addr, port] = way === 'out' ? ['oifname', 'saddr', 'dport'] : ['iifname', 'daddr', 'sport'];
      return (['tcp', 'udp'] as const).flatMap((p) => (f[p].length ? [`${dev} ${q(g.tap)} ip ${addr} ${f.address} ${p} ${port} ${set(f[p].map(String))} accept`] : []));
    });
  const out = forwarded('out');
  const up = forwarded('in');
  return [
    chain('prerouting', 'type filter hook prerouting priority dstnat; policy accept;', [`iifname vmap { ${vmap} }`]),
    ...chains,
    chain('input', 'type filter hook input priority filter; policy accept;', [...up, `iifname ${set(ports)} counter drop comment "bridge-input"`]),
    chain('output', 'type filter hook output priority filter; policy accept;', [...out, `oifname ${set(ports)} counter drop comment "bridge-output"`]),
  ].join('');
}

function netdevTable(t: NftTable): string {
  const quiet = (t.quiet ?? []).map((x) =>
    chain(
      `out${x.nic}`,
      `type filter hook egress device ${q(x.podIf)} priority filter; policy accept;`,
      [`ether saddr != ${x.vmMac} counter drop comment "pod-stack"`],
    ),
  );
  return t.nics
    .flatMap((g) => [
      ...direction(`vm${g.nic}`, `type filter hook ingress device ${q(g.tap)} priority filter; policy drop;`, fromVmRules(g), [`fwd to ${q(g.podIf)}`]),
      ...direction(`pod${g.nic}`, `type filter hook ingress device ${q(g.podIf)} priority filter; policy drop;`, fromPodRules(), [`fwd to ${q(g.tap)}`]),
    ])
    .concat(quiet)
    .join('');
}

function chain(name: string, head: string | undefined, rules: string[]): string {
  return `  chain ${name} {\n${head ? `    ${head}\n` : ''}${rules.map((r) => `    ${r}\n`).join('')}  }\n`;
}

/** The whole table as an `nft -f` script; loading it replaces any earlier copy atomically. */
export function renderTable(t: NftTable): string {
  const body = t.family === 'bridge' ? bridgeTable(t) : netdevTable(t);
  return `add table ${t.family} ${TABLE}\ndelete table ${t.family} ${TABLE}\ntable ${t.family} ${TABLE} {\n${body}}\n`;
}

/** Idempotent removal: `add` first so deleting never fails on a missing table. */
export function removalScript(family: NftTable['family']): string {
  return `add table ${family} ${TABLE}\ndelete table ${family} ${TABLE}\n`;
}

/** Throws naming the first field that is not what podtap itself would write. */
export function validateNftTable(t: NftTable): void {
  const bad = (what: string, v: unknown): never => {
    throw new Error(`bad ${what} ${JSON.stringify(v)}`);
  };
  if (!t || typeof t !== 'object') bad('nftables table', t);
  if (t.family !== 'bridge' && t.family !== 'netdev') bad('nftables family', t.family);
  if (t.name !== TABLE) bad('nftables table name (podtap loads only its own)', t.name);
  if (!Array.isArray(t.nics) || t.nics.length > 64 || (t.nics.length < 1 && !t.quiet?.length)) bad('NIC list', t.nics);
  if (t.quiet !== undefined) {
    if (t.family !== 'netdev' || !Array.isArray(t.quiet) || t.quiet.length > 64) bad('quiet list', t.quiet);
    for (const x of t.quiet) {
      if (!Number.isInteger(x?.nic) || x.nic < 0 || x.nic > 63) bad('NIC index', x?.nic);
      if (typeof x.podIf !== 'string' || !validIfname(x.podIf)) bad('interface name', x.podIf);
      if (typeof x.vmMac !== 'string' || !validMac(x.vmMac)) bad('MAC', x.vmMac);
    }
  }
  for (const g of t.nics) {
    if (!Number.isInteger(g.nic) || g.nic < 0 || g.nic > 63) bad('NIC index', g.nic);
    for (const n of [g.podIf, g.tap, ...(g.bridge !== undefined ? [g.bridge] : [])]) if (typeof n !== 'string' || !validIfname(n)) bad('interface name', n);
    if (typeof g.vmMac !== 'string' || !validMac(g.vmMac)) bad('MAC', g.vmMac);
    if (typeof g.antispoof !== 'boolean') bad('antispoof flag', g.antispoof);
    if (!Array.isArray(g.ipv4) || g.ipv4.some((a) => typeof a !== 'string' || parseIpv4(a) === undefined)) bad('IPv4 list', g.ipv4);
    const v6 = (a: unknown) => typeof a === 'string' && parseIpv6(a) !== undefined;
    if (!Array.isArray(g.ipv6) || !g.ipv6.every(v6)) bad('IPv6 list', g.ipv6);
    if (!Array.isArray(g.reservedLinkLocal) || !g.reservedLinkLocal.every(v6)) bad('reserved link-local list', g.reservedLinkLocal);
    const ll = (a: unknown) => v6(a) && /^fe[89ab]/i.test(a as string);
    if (!Array.isArray(g.guestLinkLocal) || g.guestLinkLocal.length < 1 || g.guestLinkLocal.length > 4 || !g.guestLinkLocal.every(ll)) bad('guest link-local list', g.guestLinkLocal);
    if (g.ndProxy !== undefined && !v6(g.ndProxy)) bad('router address', g.ndProxy);
    if (g.serverId !== undefined && (typeof g.serverId !== 'string' || parseIpv4(g.serverId) === undefined)) bad('server identifier', g.serverId);
    if (g.forward !== undefined) {
      const f = g.forward;
      const ports = (p: unknown) => Array.isArray(p) && p.length <= 64 && p.every((x) => Number.isInteger(x) && x >= 1 && x <= 65535);
      if (!f || typeof f.address !== 'string' || parseIpv4(f.address) === undefined) bad('forward address', f?.address);
      if (!ports(f.tcp) || !ports(f.udp)) bad('forwarded ports', f);
      if (f.bridgeMac !== undefined && !validMac(f.bridgeMac)) bad('bridge MAC', f.bridgeMac);
    }
  }
}
