// The bridge guard: one nftables table of the bridge family, created and
// deleted as a unit. A dedicated table (rather than `ebtables -A`) is what makes
// teardown exact: ebtables-nft leaves `table bridge filter` and its base chains
// behind after its last rule is deleted, so the ruleset would differ from the
// one we found. Deleting our own table removes every trace in one transaction.

export const GUARD_TABLE = 'podtap';

export interface GuardSpec {
  veth: string;
  tap: string;
  bridgeMac: string; // where the guest's unicast DHCP traffic is redirected
  serverIp: string; // the bridge's link-local address, our DHCP server identifier
  antispoof?: {
    vmMac: string;
    ipv4: string[]; // addresses the guest may use as IPv4/ARP sender
    ipv6: string[]; // pod IPv6 addresses the guest may use (plus link-local)
  };
}

function set(items: string[]): string {
  return items.length === 1 ? items[0]! : `{ ${items.join(', ')} }`;
}

/** The whole table as an `nft -f` script; loading it replaces any earlier copy atomically. */
export function guardRuleset(g: GuardSpec): string {
  const v = JSON.stringify(g.veth);
  const t = JSON.stringify(g.tap);
  const pre: string[] = [
    // Nothing from outside may talk to our DHCP server or its address, and
    // outside DHCP servers may not answer the guest: the pod's identity comes
    // from us only.
    `iifname ${v} udp dport 67 drop`,
    `iifname ${v} udp sport 67 drop`,
    `iifname ${v} ip daddr ${g.serverIp} drop`,
    `iifname ${v} arp daddr ip ${g.serverIp} drop`,
    // A renewing guest unicasts to the server identifier, which is not on any
    // of the pod's subnets, so its frame carries the gateway's MAC. Hand it
    // to br0 instead; this keeps the guest's routes exactly the pod's.
    `iifname ${t} ip daddr ${g.serverIp} udp dport 67 ether daddr set ${g.bridgeMac} meta pkttype set host`,
  ];
  if (g.antispoof) {
    const a = g.antispoof;
    pre.push(
      `iifname ${t} ether saddr != ${a.vmMac} drop`,
      `iifname ${t} arp saddr ether != ${a.vmMac} drop`,
      `iifname ${t} ip saddr != ${set(['0.0.0.0', ...a.ipv4])} drop`,
      `iifname ${t} arp saddr ip != ${set(['0.0.0.0', ...a.ipv4])} drop`,
      `iifname ${t} ip6 saddr != ${set(['::', 'fe80::/10', ...a.ipv6])} drop`,
    );
  }
  const forward = [
    // The guest's DHCP requests are for us alone: never flood them to the node.
    `iifname ${t} oifname ${v} udp dport 67 drop`,
  ];
  // The pod's own stack has nothing to say to the node any more: whatever
  // br0 itself sends (DHCP replies, ARP for its address) stays inside.
  const output = [`oifname ${v} udp sport 67 drop`, `oifname ${v} ether saddr ${g.bridgeMac} drop`];
  const chain = (name: string, hook: string, prio: string, rules: string[]) =>
    `  chain ${name} {\n    type filter hook ${hook} priority ${prio}; policy accept;\n` +
    rules.map((r) => `    ${r}\n`).join('') +
    '  }\n';
  return (
    `add table bridge ${GUARD_TABLE}\ndelete table bridge ${GUARD_TABLE}\n` +
    `table bridge ${GUARD_TABLE} {\n` +
    chain('prerouting', 'prerouting', 'dstnat', pre) +
    chain('forward', 'forward', 'filter', forward) +
    chain('output', 'output', 'filter', output) +
    '}\n'
  );
}

/** Idempotent removal: `add` first so deleting never fails on a missing table. */
export function guardRemoval(): string {
  return `add table bridge ${GUARD_TABLE}\ndelete table bridge ${GUARD_TABLE}\n`;
}
