// The guard table, rule by rule, as nft will read it: for both families
// (bridge: the bridge data path; netdev: the redirect data path, which also
// carries the frames) and with and without antispoof.

import { describe, expect, it } from 'vitest';
import { ETHERTYPE, FLOOD_LIMIT, GROUP_BIT, TABLE, fromPodRules, fromVmRules, removalScript, renderTable, validateNftTable, type NicGuard, type NftTable } from '../../src/plan/guard.ts';
import { chainOf, parseNftScript, type Chain } from '../helpers/unit-nft.ts';

const VM_MAC = '0a:58:0a:18:00:05';
const LL_GW = 'fe80::ecee:eeff:feee:eeee';
/** The VM's own link-local address, from its MAC (EUI-64). */
const VM_LL = 'fe80::858:aff:fe18:5';

/** Dual stack with a global IPv6 gateway: podtap answers for fe80::1. */
const DUAL: NicGuard = { nic: 0, podIf: 'eth0', tap: 'tap0', vmMac: VM_MAC, antispoof: true, ipv4: ['10.24.0.5'], ipv6: ['fd00:24::5'], guestLinkLocal: [VM_LL], reservedLinkLocal: ['fe80::1'], ndProxy: 'fe80::1' };
/** IPv4 only, two addresses (jumbo). */
const V4: NicGuard = { nic: 0, podIf: 'eth0', tap: 'tap0', vmMac: VM_MAC, antispoof: true, ipv4: ['10.26.0.5', '10.26.0.6'], ipv6: [], guestLinkLocal: [VM_LL], reservedLinkLocal: [] };
/** Calico-style link-local IPv6 gateway, which answers for itself. */
const LLGW: NicGuard = { nic: 0, podIf: 'eth0', tap: 'tap0', vmMac: VM_MAC, antispoof: true, ipv4: ['10.23.5.7'], ipv6: ['fd00:23::7', 'fd00:23::8'], guestLinkLocal: [VM_LL], reservedLinkLocal: [LL_GW] };
/** Layer 2 only: no address at all. */
const L2: NicGuard = { nic: 0, podIf: 'net3', tap: 'tap0', vmMac: VM_MAC, antispoof: true, ipv4: [], ipv6: [], guestLinkLocal: [VM_LL], reservedLinkLocal: [] };

const FAMILIES = ['bridge', 'netdev'] as const;

function tableOf(family: NftTable['family'], ...nics: NicGuard[]): NftTable {
  return { family, name: TABLE, nics: nics.map((g) => (family === 'bridge' ? { bridge: `br${g.nic}`, ...g } : g)) };
}

/** A direction's chains: the dispatching one and one per protocol. */
interface Direction {
  main: Chain;
  ip: Chain;
  arp: Chain;
  ip6: Chain;
  /** Every rule of the direction, dispatching chain first. */
  rules: string[];
}

function direction(s: ReturnType<typeof parseNftScript>, name: string): Direction {
  const [main, ip, arp, ip6] = [name, `${name}_ip`, `${name}_arp`, `${name}_ip6`].map((n) => chainOf(s, n)) as [Chain, Chain, Chain, Chain];
  return { main, ip, arp, ip6, rules: [main, ip, arp, ip6].flatMap((c) => c.rules) };
}

function chains(family: NftTable['family'], g: NicGuard): { vm: Direction; pod: Direction } {
  const s = parseNftScript(renderTable(tableOf(family, g)));
  return { vm: direction(s, `vm${g.nic}`), pod: direction(s, `pod${g.nic}`) };
}

/** The filtering rules of a chain, without the redirect path's final `fwd`. */
const filters = (c: Chain) => c.rules.filter((r) => !r.startsWith('fwd to '));

const hex = (s: string) => `0x${s}`;
/** The dispatch by ethertype: one compare per protocol (raw link-layer loads, no iiftype check, no set lookup). */
const dispatch = (name: string) => [`${ETHERTYPE} 0x0800 goto ${name}_ip`, `${ETHERTYPE} 0x0806 goto ${name}_arp`, `${ETHERTYPE} 0x86dd goto ${name}_ip6`];
const isDispatch = (r: string) => r.startsWith(`${ETHERTYPE} `) && / goto \S+$/.test(r);
const FLOOD = `${GROUP_BIT} limit rate over ${FLOOD_LIMIT.rate}/second burst ${FLOOD_LIMIT.burst} packets counter drop comment "flood"`;
const FE80_1 = hex('fe800000000000000000000000000001');
const FD24_5 = hex('fd000024000000000000000000000005');
const LLGW_HEX = hex('fe80000000000000eceeeefffeeeeeee');

for (const family of FAMILIES) {
  describe(`guard, ${family} family: frames from the guest`, () => {
    it('lets only untagged IPv4, ARP and IPv6 through: a dispatch by ethertype, everything else dropped', () => {
      for (const g of [DUAL, V4, L2, { ...DUAL, antispoof: false }]) {
        const { vm } = chains(family, g);
        expect(vm.main.rules.slice(-4)).toEqual([...dispatch('vm0'), 'counter drop comment "not-ip"']);
      }
    });

    it('drops a source MAC other than the VM\'s first of all (antispoof only)', () => {
      expect(chains(family, DUAL).vm.main.rules[0]).toBe(`ether saddr != ${VM_MAC} counter drop comment "spoofed-mac"`);
      expect(chains(family, { ...DUAL, antispoof: false }).vm.rules.some((r) => r.includes('ether saddr'))).toBe(false);
    });

    it('limits broadcast and multicast floods, with or without antispoof', () => {
      expect(chains(family, DUAL).vm.main.rules).toContain(FLOOD);
      expect(chains(family, { ...DUAL, antispoof: false }).vm.main.rules).toContain(FLOOD);
    });

    it('keeps the guest\'s DHCP requests and router solicitations inside (podtap\'s packet socket has them)', () => {
      for (const g of [DUAL, { ...V4, antispoof: false }]) {
        const { vm } = chains(family, g);
        expect(vm.ip.rules).toContain('udp dport 67 drop');
        expect(vm.ip6.rules).toContain('udp dport 547 drop');
        expect(vm.ip6.rules).toContain('icmpv6 type nd-router-solicit drop');
      }
    });

    it('drops DHCP and DHCPv6 server messages from the guest', () => {
      for (const g of [DUAL, { ...DUAL, antispoof: false }]) {
        expect(chains(family, g).vm.ip.rules).toContain('udp sport 67 counter drop comment "dhcp-server"');
        expect(chains(family, g).vm.ip6.rules).toContain('udp sport 547 counter drop comment "dhcp-server"');
      }
    });

    it('drops router advertisements, redirects and renumbering from the guest', () => {
      for (const g of [DUAL, { ...DUAL, antispoof: false }]) expect(chains(family, g).vm.ip6.rules).toContain('icmpv6 type { nd-router-advert, nd-redirect, router-renumbering } counter drop comment "router"');
    });

    it('keeps the guest\'s neighbour solicitations for podtap\'s router address inside, only when podtap answers for one', () => {
      const ns = `icmpv6 type nd-neighbor-solicit @th,64,128 ${FE80_1} drop`;
      expect(chains(family, DUAL).vm.ip6.rules).toContain(ns);
      expect(chains(family, { ...DUAL, antispoof: false }).vm.ip6.rules).toContain(ns);
      expect(chains(family, LLGW).vm.rules.some((r) => r.includes('nd-neighbor-solicit @th'))).toBe(false);
    });

    it('checks ARP: Ethernet/IPv4 only, the sender MAC is the VM\'s, the sender IP one of the pod\'s (or 0.0.0.0 for probes)', () => {
      const { vm } = chains(family, V4);
      expect(filters(vm.arp)).toEqual(
        expect.arrayContaining([
          'arp htype != 1 counter drop comment "bad-arp"',
          'arp ptype != ip counter drop comment "bad-arp"',
          'arp hlen != 6 counter drop comment "bad-arp"',
          'arp plen != 4 counter drop comment "bad-arp"',
          `arp saddr ether != ${VM_MAC} counter drop comment "spoofed-arp"`,
          'arp saddr ip != { 0.0.0.0, 10.26.0.5, 10.26.0.6 } counter drop comment "spoofed-arp"',
        ]),
      );
      expect(filters(vm.arp)).toHaveLength(6);
      expect(chains(family, L2).vm.arp.rules).toContain('arp saddr ip != 0.0.0.0 counter drop comment "spoofed-arp"');
    });

    it('allows only the pod\'s IPv4 sources, and no IPv4 at all on an interface without one', () => {
      expect(chains(family, V4).vm.ip.rules).toContain('ip saddr != { 10.26.0.5, 10.26.0.6 } counter drop comment "spoofed-ipv4"');
      expect(chains(family, DUAL).vm.ip.rules).toContain('ip saddr != 10.24.0.5 counter drop comment "spoofed-ipv4"');
      const l2 = chains(family, L2).vm.ip.rules;
      expect(l2).toContain('counter drop comment "spoofed-ipv4"');
      expect(l2.some((r) => r.startsWith('ip saddr'))).toBe(false);
    });

    it('allows IPv6 sources: the guest\'s own link-local ones, the pod\'s global ones, and :: only for neighbour discovery and MLD', () => {
      const { vm } = chains(family, LLGW);
      expect(vm.ip6.rules).toContain('ip6 saddr :: meta l4proto != 58 counter drop comment "spoofed-ipv6"');
      expect(vm.rules).toContain('ip6 saddr :: icmpv6 type != { nd-neighbor-solicit, mld-listener-report, mld2-listener-report } counter drop comment "spoofed-ipv6"');
      expect(vm.rules).toContain('ip6 saddr != { ::, fe80::/10, fd00:23::7, fd00:23::8 } counter drop comment "spoofed-ipv6"');
      expect(vm.rules).toContain(`ip6 saddr fe80::/10 ip6 saddr != ${VM_LL} counter drop comment "spoofed-ipv6"`);
      expect(chains(family, V4).vm.rules).toContain('ip6 saddr != { ::, fe80::/10 } counter drop comment "spoofed-ipv6"');
      const learned = chains(family, { ...LLGW, guestLinkLocal: [VM_LL, 'fe80::1234'] }).vm.rules;
      expect(learned).toContain(`ip6 saddr fe80::/10 ip6 saddr != { ${VM_LL}, fe80::1234 } counter drop comment "spoofed-ipv6"`);
    });

    it('lets neighbour advertisements claim only the guest\'s own link-local and global addresses', () => {
      const ownLl = (rules: string[]) => rules.find((r) => r.startsWith('icmpv6 type nd-neighbor-advert @th,64,64 0xfe80000000000000 '));
      for (const g of [DUAL, LLGW, V4, L2]) expect(ownLl(chains(family, g).vm.rules)).toMatch(/@th,64,128 != 0xfe80000000000000[0-9a-f]{16} counter drop comment "spoofed-na"$/);
      expect(chains(family, DUAL).vm.rules).toContain(`icmpv6 type nd-neighbor-advert @th,64,64 != 0xfe80000000000000 @th,64,128 != ${FD24_5} counter drop comment "spoofed-na"`);
      expect(chains(family, LLGW).vm.rules).toContain(
        `icmpv6 type nd-neighbor-advert @th,64,64 != 0xfe80000000000000 @th,64,128 != { ${hex('fd000023000000000000000000000007')}, ${hex('fd000023000000000000000000000008')} } counter drop comment "spoofed-na"`,
      );
      expect(chains(family, V4).vm.rules).toContain('icmpv6 type nd-neighbor-advert @th,64,64 != 0xfe80000000000000 counter drop comment "spoofed-na"');
    });

    it('never lets the guest be the router: a router\'s link-local address is never one of the guest\'s', () => {
      for (const g of [DUAL, LLGW]) {
        const rules = chains(family, g).vm.rules;
        const pin = rules.find((r) => r.startsWith('ip6 saddr fe80::/10 ip6 saddr != '))!;
        for (const r of g.reservedLinkLocal) expect(pin).not.toContain(r);
        expect(rules.some((r) => r.includes(FE80_1) && r.includes('nd-neighbor-advert') && !r.includes('!='))).toBe(false);
      }
      expect(() => validateNftTable(tableOf(family, { ...DUAL, guestLinkLocal: [] }))).toThrow(/guest link-local list/);
      expect(() => validateNftTable(tableOf(family, { ...DUAL, guestLinkLocal: ['fd00::1'] }))).toThrow(/guest link-local list/);
    });

    it('checks no source without antispoof, but still keeps servers, routers and floods out', () => {
      const { vm } = chains(family, { ...DUAL, antispoof: false });
      expect(vm.main.rules).toEqual([FLOOD, ...dispatch('vm0'), 'counter drop comment "not-ip"']);
      expect(filters(vm.ip)).toEqual(['udp dport 67 drop', 'udp sport 67 counter drop comment "dhcp-server"']);
      expect(filters(vm.arp)).toEqual([]);
      expect(filters(vm.ip6)).toEqual([
        'udp dport 547 drop',
        'icmpv6 type nd-router-solicit drop',
        'udp sport 547 counter drop comment "dhcp-server"',
        'icmpv6 type { nd-router-advert, nd-redirect, router-renumbering } counter drop comment "router"',
        `icmpv6 type nd-neighbor-solicit @th,64,128 ${FE80_1} drop`,
      ]);
    });

    it('has exactly these rules with antispoof (nothing more to let a frame through, nothing missing)', () => {
      const count = (d: Direction) => [d.main, d.ip, d.arp, d.ip6].reduce((n, c) => n + filters(c).length, 0);
      expect(count(chains(family, DUAL).vm)).toBe(26);
      expect(count(chains(family, V4).vm)).toBe(25);
      // Every rule but the dispatch drops: what is left goes on.
      for (const r of chains(family, DUAL).vm.rules.filter((x) => !x.startsWith('fwd to ') && !isDispatch(x))) expect(r).toMatch(/(^| )drop( comment "[a-z0-9-]+")?$/);
    });

    it('a protocol chain ends the frame\'s way: moved to the pod interface (redirect) or back to the bridge', () => {
      const { vm } = chains(family, DUAL);
      for (const c of [vm.ip, vm.arp, vm.ip6]) {
        if (family === 'netdev') expect(c.rules.at(-1)).toBe('fwd to "eth0"');
        else expect(c.rules.some((r) => r.startsWith('fwd'))).toBe(false);
      }
    });
  });

  describe(`guard, ${family} family: frames towards the guest`, () => {
    it('lets only IPv4, ARP and IPv6 through, and keeps outside DHCP and routers from the guest', () => {
      for (const g of [DUAL, { ...V4, antispoof: false }]) {
        const { pod } = chains(family, g);
        expect(pod.main.rules).toEqual([...dispatch('pod0'), 'counter drop comment "not-ip"']);
        expect(filters(pod.ip)).toEqual(['udp sport 67 counter drop comment "outside-dhcp"', 'udp dport 67 counter drop comment "outside-dhcp"']);
        expect(filters(pod.arp)).toEqual([]);
        expect(filters(pod.ip6)).toEqual([
          'udp sport 547 counter drop comment "outside-dhcp"',
          'udp dport 547 counter drop comment "outside-dhcp"',
          'icmpv6 type { nd-router-advert, nd-redirect } counter drop comment "outside-router"',
        ]);
      }
      const r = fromPodRules();
      const { pod, vm } = chains(family, DUAL);
      expect([r.ip, r.arp, r.ip6]).toEqual([filters(pod.ip), filters(pod.arp), filters(pod.ip6)]);
      const v = fromVmRules(DUAL);
      expect([v.head, v.ip, v.arp, v.ip6]).toEqual([vm.main.rules.slice(0, -4), filters(vm.ip), filters(vm.arp), filters(vm.ip6)]);
    });
  });
}

describe('guard tables', () => {
  it('replace any earlier copy atomically, and are removed idempotently', () => {
    for (const family of FAMILIES) {
      const s = parseNftScript(renderTable(tableOf(family, DUAL)));
      expect(s.preamble).toEqual([`add table ${family} podtap`, `delete table ${family} podtap`]);
      expect([s.family, s.name]).toEqual([family, 'podtap']);
      expect(removalScript(family)).toBe(`add table ${family} podtap\ndelete table ${family} podtap\n`);
    }
  });

  it('bridge: each port jumps to its NIC\'s chain, and the bridge itself hears and sends nothing on any port', () => {
    const second: NicGuard = { ...V4, nic: 1, podIf: 'net1', tap: 'tap1', vmMac: '0a:58:0a:1e:00:05' };
    const s = parseNftScript(renderTable(tableOf('bridge', DUAL, second)));
    const dir = (n: string) => [n, `${n}_ip`, `${n}_arp`, `${n}_ip6`];
    expect([...s.chains.keys()]).toEqual(['prerouting', ...dir('vm0'), ...dir('pod0'), ...dir('vm1'), ...dir('pod1'), 'input', 'output']);
    // Broadcasts and multicasts the bridge would pass up to the pod's own stack.
    expect(chainOf(s, 'input')).toEqual({
      head: 'type filter hook input priority filter; policy accept;',
      rules: ['iifname { "eth0", "tap0", "net1", "tap1" } counter drop comment "bridge-input"'],
    });
    expect(chainOf(s, 'prerouting')).toEqual({
      head: 'type filter hook prerouting priority dstnat; policy accept;',
      rules: ['iifname vmap { "tap0" : jump vm0, "eth0" : jump pod0, "tap1" : jump vm1, "net1" : jump pod1 }'],
    });
    expect(chainOf(s, 'output')).toEqual({
      head: 'type filter hook output priority filter; policy accept;',
      rules: ['oifname { "eth0", "tap0", "net1", "tap1" } counter drop comment "bridge-output"'],
    });
    // The NICs' chains are regular chains, reached only through the port vmap.
    for (const c of ['vm0', 'pod0', 'vm1', 'pod1']) for (const x of dir(c)) expect(chainOf(s, x).head).toBeUndefined();
    expect(chainOf(s, 'vm1').rules[0]).toBe('ether saddr != 0a:58:0a:1e:00:05 counter drop comment "spoofed-mac"');
  });

  it('netdev: the ingress chain of each device drops by default and ends by moving the frame to the other device', () => {
    const second: NicGuard = { ...L2, nic: 1, podIf: 'net2', tap: 'tap1' };
    const s = parseNftScript(renderTable(tableOf('netdev', DUAL, second)));
    const dir = (n: string) => [n, `${n}_ip`, `${n}_arp`, `${n}_ip6`];
    expect([...s.chains.keys()]).toEqual([...dir('vm0'), ...dir('pod0'), ...dir('vm1'), ...dir('pod1')]);
    for (const [nic, podIf, tap] of [[0, 'eth0', 'tap0'], [1, 'net2', 'tap1']] as const) {
      expect(chainOf(s, `vm${nic}`).head).toBe(`type filter hook ingress device "${tap}" priority filter; policy drop;`);
      expect(chainOf(s, `pod${nic}`).head).toBe(`type filter hook ingress device "${podIf}" priority filter; policy drop;`);
      for (const p of ['ip', 'arp', 'ip6']) {
        const vm = chainOf(s, `vm${nic}_${p}`);
        const pod = chainOf(s, `pod${nic}_${p}`);
        expect(vm.head).toBeUndefined();
        expect(vm.rules.at(-1)).toBe(`fwd to "${podIf}"`);
        expect(pod.rules.at(-1)).toBe(`fwd to "${tap}"`);
        expect(vm.rules.filter((r) => r.startsWith('fwd'))).toHaveLength(1);
        expect(pod.rules.filter((r) => r.startsWith('fwd'))).toHaveLength(1);
      }
      // Nothing moves a frame of another ethertype: it meets the drop.
      expect(chainOf(s, `vm${nic}`).rules.some((r) => r.startsWith('fwd'))).toBe(false);
    }
  });
});

describe('guard: answers on forwarded ports (--forward-port)', () => {
  const FWD = { address: '169.254.75.1', tcp: [8080, 22], udp: [53] };

  it('bridge: sends the guest\'s answers from those ports to the bridge\'s own MAC, last, after every check', () => {
    for (const antispoof of [true, false]) {
      const g: NicGuard = { ...DUAL, antispoof, forward: { ...FWD, bridgeMac: '02:aa:00:00:00:03' } };
      const s = parseNftScript(renderTable(tableOf('bridge', g)));
      const vm = chainOf(s, 'vm0_ip').rules;
      expect(vm.slice(-2)).toEqual([
        'ip daddr 169.254.75.1 tcp sport { 8080, 22 } ether daddr set 02:aa:00:00:00:03 meta pkttype set host',
        'ip daddr 169.254.75.1 udp sport 53 ether daddr set 02:aa:00:00:00:03 meta pkttype set host',
      ]);
      expect(vm.slice(0, -2)).toEqual(fromVmRules({ ...g, forward: undefined }).ip);
      // The bridge's stack may speak to the guest on those ports only, before everything else it says is dropped.
      expect(chainOf(s, 'output').rules).toEqual([
        'oifname "tap0" ip saddr 169.254.75.1 tcp dport { 8080, 22 } accept',
        'oifname "tap0" ip saddr 169.254.75.1 udp dport 53 accept',
        'oifname { "eth0", "tap0" } counter drop comment "bridge-output"',
      ]);
      // And hear the guest's answers on them, and nothing else.
      expect(chainOf(s, 'input').rules).toEqual([
        'iifname "tap0" ip daddr 169.254.75.1 tcp sport { 8080, 22 } accept',
        'iifname "tap0" ip daddr 169.254.75.1 udp sport 53 accept',
        'iifname { "eth0", "tap0" } counter drop comment "bridge-input"',
      ]);
    }
  });

  it('netdev: lets those answers into the tap\'s own stack instead of moving them to the pod interface', () => {
    const s = parseNftScript(renderTable(tableOf('netdev', { ...DUAL, forward: { ...FWD, udp: [] } })));
    expect(chainOf(s, 'vm0_ip').rules.slice(-2)).toEqual(['ip daddr 169.254.75.1 tcp sport { 8080, 22 } meta pkttype set host accept', 'fwd to "eth0"']);
    expect(chainOf(s, 'pod0_ip').rules).toEqual([...fromPodRules().ip, 'fwd to "tap0"']);
  });

  it('adds nothing for a NIC without forwarded ports', () => {
    const plain = renderTable(tableOf('bridge', DUAL, { ...V4, nic: 1, podIf: 'net1', tap: 'tap1', forward: FWD }));
    const s = parseNftScript(plain);
    expect(chainOf(s, 'vm0_ip').rules.some((r) => r.includes('pkttype set host'))).toBe(false);
    expect(chainOf(s, 'vm1_ip').rules.filter((r) => r.includes('pkttype set host'))).toHaveLength(2);
    expect(chainOf(s, 'output').rules.filter((r) => r.startsWith('oifname "tap0"'))).toEqual([]);
  });
});

describe('guard: a bridge port\'s own stack (netdev egress)', () => {
  it('drops, on the pod interface\'s way out, every frame whose source is not the VM\'s MAC', () => {
    const t: NftTable = { family: 'netdev', name: TABLE, nics: [], quiet: [{ nic: 0, podIf: 'eth0', vmMac: VM_MAC }, { nic: 1, podIf: 'net1', vmMac: '0a:58:0a:1e:00:05' }] };
    const s = parseNftScript(renderTable(t));
    expect([...s.chains.keys()]).toEqual(['out0', 'out1']);
    expect(chainOf(s, 'out0')).toEqual({ head: 'type filter hook egress device "eth0" priority filter; policy accept;', rules: [`ether saddr != ${VM_MAC} counter drop comment "pod-stack"`] });
    expect(chainOf(s, 'out1').rules).toEqual(['ether saddr != 0a:58:0a:1e:00:05 counter drop comment "pod-stack"']);
    expect(() => validateNftTable(t)).not.toThrow();
  });

  it('is refused in the bridge family, or with a bad name or MAC', () => {
    const q = { nic: 0, podIf: 'eth0', vmMac: VM_MAC };
    expect(() => validateNftTable({ family: 'bridge', name: TABLE, nics: [DUAL], quiet: [q] })).toThrow(/bad quiet list/);
    expect(() => validateNftTable({ family: 'netdev', name: TABLE, nics: [], quiet: [{ ...q, podIf: 'eth0"' }] })).toThrow(/bad interface name/);
    expect(() => validateNftTable({ family: 'netdev', name: TABLE, nics: [], quiet: [{ ...q, vmMac: 'any' }] })).toThrow(/bad MAC/);
    expect(() => validateNftTable({ family: 'netdev', name: TABLE, nics: [] })).toThrow(/bad NIC list/);
  });
});

describe('validateNftTable', () => {
  it('accepts what podtap writes, for both families', () => {
    for (const family of FAMILIES) expect(() => validateNftTable(tableOf(family, DUAL, { ...L2, nic: 1, podIf: 'net3', tap: 'tap1' }))).not.toThrow();
  });

  const bad: [string, unknown, RegExp][] = [
    ['no table', null, /bad nftables table/],
    ['the inet family', { ...tableOf('bridge', DUAL), family: 'inet' }, /bad nftables family "inet"/],
    ['another table', { ...tableOf('bridge', DUAL), name: 'filter' }, /podtap loads only its own/],
    ['no NIC', { ...tableOf('bridge', DUAL), nics: [] }, /bad NIC list/],
    ['65 NICs', { ...tableOf('netdev', DUAL), nics: Array.from({ length: 65 }, (_, i) => ({ ...DUAL, nic: i % 64 })) }, /bad NIC list/],
    ['a fractional NIC index', tableOf('netdev', { ...DUAL, nic: 0.5 }), /bad NIC index/],
    ['a quote in the tap name', tableOf('netdev', { ...DUAL, tap: 'tap0"' }), /bad interface name "tap0\\""/],
    ['a wildcard in the pod interface', tableOf('netdev', { ...DUAL, podIf: 'eth*' }), /bad interface name/],
    ['a bridge name with a space', { ...tableOf('bridge', DUAL), nics: [{ ...DUAL, bridge: 'br 0' }] }, /bad interface name "br 0"/],
    ['an upper-case MAC', tableOf('netdev', { ...DUAL, vmMac: '0A:58:0A:18:00:05' }), /bad MAC/],
    ['antispoof as text', tableOf('netdev', { ...DUAL, antispoof: 'true' as unknown as boolean }), /bad antispoof flag/],
    ['an IPv4 list that is not a list', tableOf('netdev', { ...DUAL, ipv4: '10.0.0.1' as unknown as string[] }), /bad IPv4 list/],
    ['an IPv4 source with words', tableOf('netdev', { ...DUAL, ipv4: ['10.0.0.1 } accept'] }), /bad IPv4 list/],
    ['an IPv6 source that does not parse', tableOf('netdev', { ...DUAL, ipv6: ['fd00::5::1'] }), /bad IPv6 list/],
    ['a reserved address that does not parse', tableOf('netdev', { ...DUAL, reservedLinkLocal: ['fe80::1/64'] }), /bad reserved link-local list/],
    ['a router address that does not parse', tableOf('netdev', { ...DUAL, ndProxy: 'router' }), /bad router address/],
    ['a forward address with words', tableOf('netdev', { ...DUAL, forward: { address: '169.254.75.1 accept', tcp: [80], udp: [] } }), /bad forward address/],
    ['an IPv6 forward address', tableOf('netdev', { ...DUAL, forward: { address: 'fe80::1', tcp: [80], udp: [] } }), /bad forward address/],
    ['port 0', tableOf('netdev', { ...DUAL, forward: { address: '169.254.75.1', tcp: [0], udp: [] } }), /bad forwarded ports/],
    ['port 65536', tableOf('netdev', { ...DUAL, forward: { address: '169.254.75.1', tcp: [], udp: [65536] } }), /bad forwarded ports/],
    ['a port range as text', tableOf('netdev', { ...DUAL, forward: { address: '169.254.75.1', tcp: ['1-65535' as unknown as number], udp: [] } }), /bad forwarded ports/],
    ['65 ports', tableOf('netdev', { ...DUAL, forward: { address: '169.254.75.1', tcp: Array.from({ length: 65 }, (_, i) => i + 1), udp: [] } }), /bad forwarded ports/],
    ['a bad bridge MAC', tableOf('bridge', { ...DUAL, forward: { address: '169.254.75.1', tcp: [80], udp: [], bridgeMac: 'ff:ff:ff:ff:ff:ff accept' } }), /bad bridge MAC/],
  ];
  it.each(bad)('refuses %s', (_what, t, message) => {
    expect(() => validateNftTable(t as NftTable)).toThrow(message);
  });
});
