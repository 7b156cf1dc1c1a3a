// Journal actions: every argument a journal could carry is checked before
// podtap acts on it, and checked actions render to exactly the ip lines
// podtap means.

import { describe, expect, it } from 'vitest';
import { addrRestore, checkAction, checkStep, describeAction, ipLines, routeSpec, type Action, type Step } from '../../src/journal/actions.ts';
import { plan, type PlanOptions } from '../../src/plan/plan.ts';
import type { NftTable } from '../../src/plan/guard.ts';
import type { Address, Neighbour, Route } from '../../src/pod/model.ts';
import { parseRoutes } from '../../src/pod/discover.ts';
import { ALL_SHAPES, MULTUS, linksOf } from '../helpers/shapes.ts';

const route = (x: Partial<Route> = {}): Route => ({ family: 'inet', table: 'main', type: 'unicast', dst: '10.0.0.0/24', dev: 'eth0', flags: [], ...x });
const addr = (x: Partial<Address> = {}): Address => ({ family: 'inet', local: '10.0.0.5', prefixlen: 24, scope: 'global', flags: [], ...x });
const neigh = (x: Partial<Neighbour> = {}): Neighbour => ({ family: 'inet', dst: '10.0.0.9', lladdr: '02:00:00:00:00:09', dev: 'eth0', router: false, proxy: false, permanent: true, ...x });
const table = (x: Partial<NftTable> = {}, nic: Partial<NftTable['nics'][number]> = {}): NftTable => ({
  family: 'bridge',
  name: 'podtap',
  nics: [{ nic: 0, podIf: 'eth0', tap: 'tap0', bridge: 'br0', vmMac: '0a:58:0a:16:00:05', antispoof: true, ipv4: ['10.22.0.5'], ipv6: ['fd00::5'], guestLinkLocal: ['fe80::858:aff:fe16:5'], reservedLinkLocal: ['fe80::1'], ndProxy: 'fe80::1', ...nic }],
  ...x,
});

/** Forged journal content: anything JSON can hold. */
const forged = (x: unknown) => x as Action;

describe('checkAction refuses what a forged journal could use', () => {
  const refused: [string, unknown, RegExp][] = [
    // Kinds podtap no longer has, or never had: command lines and sysctl writes.
    ['an ip command line', { ip: 'link del dev eth0' }, /unknown action/],
    ['a sysctl write', { sysctl: 'net/ipv6/conf/eth0/disable_ipv6', value: '1' }, /unknown action/],
    ['an "ip" op', { op: 'ip', line: 'route flush table main' }, /unknown action "ip"/],
    ['a "sysctl" op', { op: 'sysctl', key: 'net/ipv4/ip_forward', value: '1' }, /unknown action "sysctl"/],
    ['an "nft" op with a script', { op: 'nft', script: 'flush ruleset' }, /unknown action "nft"/],
    ['null', null, /not an action/],
    ['a string', 'link-del', /not an action/],
    // Names that would escape a path or an ip/nft word.
    ['../ in a tap name', { op: 'tap-open', tap: { name: '../etc', queues: 1, persist: false } }, /bad tap name "..\/etc"/],
    ['.. as a name', { op: 'link-del', name: '..' }, /bad interface name/],
    ['a slash in a name', { op: 'link-set', name: 'eth0/x', up: true }, /bad interface name/],
    ['# in a name (an ip comment)', { op: 'link-set', name: 'eth0#x', up: true }, /bad interface name "eth0#x"/],
    ['" in a name (ends an nft string)', { op: 'port-set', name: 'eth0"x', learning: false }, /bad interface name/],
    ['a space in a name', { op: 'addr-del', dev: 'eth0 x', addr: addr() }, /bad interface name "eth0 x"/],
    ['a space in a route device', { op: 'route-add', route: route({ dev: 'eth0 table 5' }) }, /bad interface name/],
    ['# in a next hop device', { op: 'route-del', route: route({ nexthops: [{ gateway: '10.0.0.1', dev: 'eth0#' }] }) }, /bad next hop device/],
    ['a space in a neighbour device', { op: 'neigh-add', neigh: neigh({ dev: 'eth0 nud' }) }, /bad interface name/],
    ['a space in a master', { op: 'link-set', name: 'eth0', master: 'br0 up' }, /bad master/],
    ['a 16-character bridge name', { op: 'bridge-add', name: 'b234567890123456', mac: '02:00:00:00:00:01', mtu: 1500 }, /bad bridge name/],
    ['"all" as a name', { op: 'link-set', name: 'all', up: false }, /bad interface name/],
    // Addresses and prefixes that don't parse.
    ['an IPv4 address out of range', { op: 'addr-add', dev: 'eth0', addr: addr({ local: '10.0.0.300' }) }, /bad address "10.0.0.300"/],
    ['an IPv4 prefix length of 33', { op: 'addr-add', dev: 'eth0', addr: addr({ prefixlen: 33 }) }, /bad prefix length 33/],
    ['an IPv6 prefix length of 129', { op: 'addr-del', dev: 'eth0', addr: addr({ family: 'inet6', local: 'fd00::5', prefixlen: 129 }) }, /bad prefix length 129/],
    ['a prefix length as text', { op: 'addr-add', dev: 'eth0', addr: addr({ prefixlen: '24 dev lo' as unknown as number }) }, /bad prefix length/],
    ['an IPv6 address in an IPv4 address', { op: 'addr-add', dev: 'eth0', addr: addr({ local: 'fd00::5' }) }, /bad address/],
    ['a bad broadcast', { op: 'addr-add', dev: 'eth0', addr: addr({ broadcast: '10.0.0.255 dev lo' }) }, /bad broadcast address/],
    ['a peer of the other family', { op: 'addr-add', dev: 'eth0', addr: addr({ peer: 'fd00::1' }) }, /bad peer address/],
    ['an unknown address flag', { op: 'addr-add', dev: 'eth0', addr: addr({ flags: ['nodad', 'home dev lo'] }) }, /bad address flag/],
    ['a label with a space', { op: 'addr-add', dev: 'eth0', addr: addr({ label: 'eth0 x' }) }, /bad address label/],
    ['an unknown scope', { op: 'addr-add', dev: 'eth0', addr: addr({ scope: 'galaxy' }) }, /bad scope/],
    ['a route destination that does not parse', { op: 'route-add', route: route({ dst: '10.0.0/24' }) }, /bad route destination/],
    ['a route prefix length of 33', { op: 'route-del', route: route({ dst: '10.0.0.0/33' }) }, /bad route destination prefix length/],
    ['a route prefix length with words', { op: 'route-del', route: route({ dst: '10.0.0.0/24 via 1.2.3.4' }) }, /bad route destination prefix length/],
    ['an IPv6 destination in an IPv4 route', { op: 'route-add', route: route({ dst: 'fd00::/64' }) }, /bad route destination/],
    ['a gateway that is not an address', { op: 'route-add', route: route({ gateway: '10.0.0.1 dev lo' }) }, /bad gateway/],
    ['a source of the other family', { op: 'route-add', route: route({ prefsrc: 'fd00::5' }) }, /bad route source/],
    ['a neighbour address that does not parse', { op: 'neigh-del', neigh: neigh({ dst: '10.0.0.9/24' }) }, /bad neighbour address/],
    ['a link-layer address with words', { op: 'neigh-add', neigh: neigh({ lladdr: '02:00:00:00:00:09 router' }) }, /bad link-layer address/],
    ['an upper-case or short MAC', { op: 'link-set', name: 'eth0', mac: '02:00:00:00:00' }, /bad MAC/],
    ['a bridge MAC with words', { op: 'bridge-add', name: 'br0', mac: '02:00:00:00:00:01 type veth', mtu: 1500 }, /bad MAC/],
    // Route words iproute2 would read as more arguments.
    ['an unknown route type', { op: 'route-add', route: route({ type: 'nat' }) }, /bad route type "nat"/],
    ['a route type with spaces', { op: 'route-add', route: route({ type: 'unicast 0.0.0.0/0' }) }, /bad route type/],
    ['a protocol with spaces', { op: 'route-add', route: route({ protocol: 'boot table 7' }) }, /bad route protocol "boot table 7"/],
    ['a protocol in capitals', { op: 'route-add', route: route({ protocol: 'Boot' }) }, /bad route protocol/],
    ['a table with words', { op: 'route-del', route: route({ table: 'main dev lo' }) }, /bad route table/],
    ['a route scope with words', { op: 'route-add', route: route({ scope: 'link onlink' }) }, /bad scope/],
    ['a route flag with spaces', { op: 'route-add', route: route({ flags: ['onlink src 1.2.3.4'] }) }, /bad route flags/],
    ['an unknown preference', { op: 'route-add', route: route({ family: 'inet6', dst: 'fd00::/64', pref: 'highest' }) }, /bad route preference/],
    ['a tos with words', { op: 'route-add', route: route({ tos: '0x10 dev lo' }) }, /bad route tos/],
    ['a route mtu below 68', { op: 'route-add', route: route({ mtu: 10 }) }, /bad route mtu/],
    ['a next hop weight of 0', { op: 'route-add', route: route({ nexthops: [{ gateway: '10.0.0.1', dev: 'eth0', weight: 0 }] }) }, /bad next hop weight/],
    // Other arguments out of range.
    ['an MTU of 70000', { op: 'link-set', name: 'eth0', mtu: 70000 }, /bad MTU/],
    ['an unknown addrgenmode', { op: 'link-set', name: 'eth0', addrGenMode: 'eui64 up' }, /bad addrgenmode/],
    ['an up flag as text', { op: 'link-set', name: 'eth0', up: 'yes' }, /bad up flag/],
    ['a learning flag as text', { op: 'port-set', name: 'eth0', learning: 'off' }, /bad learning flag/],
    ['no tap queues', { op: 'tap-open', tap: { name: 'tap0', queues: 0, persist: false } }, /bad queue count/],
    ['a negative tap owner', { op: 'tap-open', tap: { name: 'tap0', queues: 1, persist: false, owner: { uid: -1 } } }, /bad tap owner/],
    ['a tap persistence as text', { op: 'tap-open', tap: { name: 'tap0', queues: 1, persist: 'yes' } }, /bad tap persistence/],
    // nftables: only podtap's own table, only rendered from checked fields.
    ['an nft-delete of another table', { op: 'nft-delete', family: 'bridge', name: 'filter' }, /bad nftables table \(podtap deletes only its own\) "filter"/],
    ['an nft-delete of another family', { op: 'nft-delete', family: 'inet', name: 'podtap' }, /bad nftables family "inet"/],
    ['an nft-load of another table', { op: 'nft-load', table: table({ name: 'filter' as 'podtap' }) }, /bad nftables table name/],
    ['an nft-load of another family', { op: 'nft-load', table: table({ family: 'inet' as 'bridge' }) }, /bad nftables family/],
    ['an nft-load naming a tap with a quote', { op: 'nft-load', table: table({}, { tap: 'tap0" drop' }) }, /bad interface name/],
    ['an nft-load naming a pod interface with *', { op: 'nft-load', table: table({}, { podIf: 'eth*' }) }, /bad interface name "eth\*"/],
    ['an nft-load naming a bad bridge', { op: 'nft-load', table: table({}, { bridge: 'br 0' }) }, /bad interface name/],
    ['an nft-load with a MAC set', { op: 'nft-load', table: table({}, { vmMac: '{ 02:00:00:00:00:01, 02:00:00:00:00:02 }' }) }, /bad MAC/],
    ['an nft-load with an IPv4 range', { op: 'nft-load', table: table({}, { ipv4: ['0.0.0.0/0'] }) }, /bad IPv4 list/],
    ['an nft-load with a bad IPv6 source', { op: 'nft-load', table: table({}, { ipv6: ['::/0'] }) }, /bad IPv6 list/],
    ['an nft-load with a bad router address', { op: 'nft-load', table: table({}, { ndProxy: 'fe80::1 drop' }) }, /bad router address/],
    ['an nft-load with a bad reserved address', { op: 'nft-load', table: table({}, { reservedLinkLocal: ['fe80::1, ::'] }) }, /bad reserved link-local list/],
    ['an nft-load with a NIC index out of range', { op: 'nft-load', table: table({}, { nic: 64 }) }, /bad NIC index/],
    ['an nft-load with antispoof as text', { op: 'nft-load', table: table({}, { antispoof: 'no' as unknown as boolean }) }, /bad antispoof flag/],
    ['an nft-load with no NIC', { op: 'nft-load', table: table({ nics: [] }) }, /bad NIC list/],
  ];
  it.each(refused)('refuses %s', (_what, action, message) => {
    let err: unknown;
    try {
      checkAction(forged(action));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(message);
  });

  it('names the kind of action in the refusal', () => {
    expect(() => checkAction(forged({ op: 'route-add', route: route({ type: 'nat' }) }))).toThrow(/^route-add: bad route type "nat"$/);
  });

  it('accepts every action the planner writes, for every shape and both data paths', () => {
    const opts: PlanOptions = { bridge: 'br0', tap: 'tap0', queues: 2, linkLocal: '169.254.75.1/32', linkLocalExplicit: false, antispoof: true, persistTap: false, support: { redirect: true }, tapOwner: { uid: 107 } };
    const gen = (n: number) => ({ serverMac: `02:aa:00:00:0${n}:01`, portMac: `02:aa:00:00:0${n}:02`, bridgeMac: `02:aa:00:00:0${n}:03` });
    let checked = 0;
    for (const [name, pod] of Object.entries(ALL_SHAPES)) {
      for (const datapath of ['bridge', 'redirect'] as const) {
        if (datapath === 'bridge' && pod === MULTUS) continue;
        for (const s of plan(pod, linksOf(pod), { ...opts, datapath }, gen).steps) {
          expect(() => checkStep(s), `${name}/${datapath} ${s.id}`).not.toThrow();
          checked++;
        }
      }
    }
    expect(checked).toBeGreaterThan(100);
  });
});

describe('checkStep', () => {
  const step = (x: Partial<Step>): Step => ({ id: 'nic0/x', do: [], undo: [], ...x });

  it('lets a step delete only the links it created', () => {
    expect(() => checkStep(step({ do: [{ op: 'tap-open', tap: { name: 'tap0', queues: 1, persist: false } }], undo: [{ op: 'link-del', name: 'tap0' }] }))).not.toThrow();
    expect(() => checkStep(step({ do: [{ op: 'bridge-add', name: 'br0', mac: '02:00:00:00:00:01', mtu: 1500 }], undo: [{ op: 'link-del', name: 'br0' }] }))).not.toThrow();
    // A pod interface is never podtap's to delete.
    expect(() => checkStep(step({ id: 'nic0/addr-del/0', do: [{ op: 'addr-del', dev: 'eth0', addr: addr() }], undo: [{ op: 'link-del', name: 'eth0' }] }))).toThrow(
      /step nic0\/addr-del\/0: deletes eth0, which the step did not create/,
    );
    // Not even next to a tap it did create.
    expect(() => checkStep(step({ do: [{ op: 'tap-open', tap: { name: 'tap0', queues: 1, persist: false } }], undo: [{ op: 'link-del', name: 'tap0' }, { op: 'link-del', name: 'eth0' }] }))).toThrow(/deletes eth0/);
  });

  it('refuses a link deletion among the do-actions too (adoption replays journaled do-actions of the tap steps)', () => {
    // podtap never writes one; a forged "nic0/tap-up" would delete the pod
    // interface when a restarted podtap re-creates the VMM's tap.
    expect(() => checkStep(step({ id: 'nic0/tap-up', do: [{ op: 'link-del', name: 'eth0' }], undo: [] }))).toThrow(/eth0/);
  });

  it('names the step of a bad action, and refuses bad ids, missing lists and a bad background flag', () => {
    expect(() => checkStep(step({ id: 'nic1/route-del/3', undo: [forged({ op: 'route-add', route: route({ protocol: 'boot table 7' }) })] }))).toThrow(/^step nic1\/route-del\/3: route-add: bad route protocol/);
    expect(() => checkStep(step({ id: 'nic0 x' }))).toThrow(/bad step id/);
    expect(() => checkStep(step({ id: 'x'.repeat(65) }))).toThrow(/bad step id/);
    expect(() => checkStep(forged({ id: 'a', do: [] }) as unknown as Step)).toThrow(/no action lists/);
    expect(() => checkStep(step({ background: 'yes' as unknown as boolean }))).toThrow(/bad background flag/);
    expect(() => checkStep(null as unknown as Step)).toThrow(/bad step id/);
  });
});

describe('rendering to ip -batch lines', () => {
  it('bridge-add: a bridge that forwards at once, floods multicast and never speaks', () => {
    expect(ipLines({ op: 'bridge-add', name: 'br1', mac: '02:aa:00:00:01:03', mtu: 9000 })).toEqual([
      'link add name br1 address 02:aa:00:00:01:03 mtu 9000 type bridge stp_state 0 forward_delay 0 mcast_snooping 0',
      'link set dev br1 addrgenmode none',
    ]);
  });

  it('link-del, link-set (each field and together) and port-set', () => {
    expect(ipLines({ op: 'link-del', name: 'tap1' })).toEqual(['link del dev tap1']);
    expect(ipLines({ op: 'link-set', name: 'eth0', mac: '02:aa:00:00:00:02' })).toEqual(['link set dev eth0 address 02:aa:00:00:00:02']);
    expect(ipLines({ op: 'link-set', name: 'eth0', master: 'br0' })).toEqual(['link set dev eth0 master br0']);
    expect(ipLines({ op: 'link-set', name: 'eth0', master: null })).toEqual(['link set dev eth0 nomaster']);
    expect(ipLines({ op: 'link-set', name: 'eth0', addrGenMode: 'stable_secret' })).toEqual(['link set dev eth0 addrgenmode stable_secret']);
    expect(ipLines({ op: 'link-set', name: 'eth0', up: false })).toEqual(['link set dev eth0 down']);
    expect(ipLines({ op: 'link-set', name: 'tap0', mtu: 1480, master: 'br0', up: true })).toEqual(['link set dev tap0 mtu 1480 master br0 up']);
    expect(ipLines({ op: 'port-set', name: 'eth0', learning: false })).toEqual(['link set dev eth0 type bridge_slave learning off']);
    expect(ipLines({ op: 'port-set', name: 'eth0', learning: true })).toEqual(['link set dev eth0 type bridge_slave learning on']);
  });

  it('addr-add replaces (idempotent) with every attribute it can set; addr-del names the address only', () => {
    const a = addr({ broadcast: '10.0.0.255', label: 'eth0:1', metric: 50, flags: ['secondary', 'noprefixroute', 'nodad', 'permanent'], validLft: 300, preferredLft: 100 });
    expect(ipLines({ op: 'addr-add', dev: 'eth0', addr: a })).toEqual(['addr replace 10.0.0.5/24 broadcast 10.0.0.255 scope global label eth0:1 metric 50 nodad noprefixroute valid_lft 300 preferred_lft 100 dev eth0']);
    expect(addrRestore(addr({ validLft: 300 }), 'eth0')).toBe('addr replace 10.0.0.5/24 scope global valid_lft 300 preferred_lft 300 dev eth0');
    // IPv6 has no labels; a point-to-point address names its peer.
    expect(ipLines({ op: 'addr-add', dev: 'net1', addr: addr({ family: 'inet6', local: 'fd00::5', prefixlen: 64, label: 'net1', flags: ['nodad'] }) })).toEqual(['addr replace fd00::5/64 scope global nodad dev net1']);
    expect(ipLines({ op: 'addr-add', dev: 'eth0', addr: addr({ peer: '10.0.0.1', prefixlen: 32 }) })).toEqual(['addr replace 10.0.0.5 peer 10.0.0.1/32 scope global dev eth0']);
    expect(ipLines({ op: 'addr-del', dev: 'eth0', addr: addr({ broadcast: '10.0.0.255', label: 'eth0' }) })).toEqual(['addr del 10.0.0.5/24 dev eth0']);
    expect(ipLines({ op: 'addr-del', dev: 'eth0', addr: addr({ peer: '10.0.0.1', prefixlen: 32 }) })).toEqual(['addr del 10.0.0.5 peer 10.0.0.1/32 dev eth0']);
    expect(ipLines({ op: 'addr-del', dev: 'eth0', addr: addr({ family: 'inet6', local: 'fe80::858:aff:fe16:5', prefixlen: 64, scope: 'link' }) })).toEqual(['addr del fe80::858:aff:fe16:5/64 dev eth0']);
  });

  it('route-add replaces, route-del deletes, both with the words that identify the route', () => {
    const r = route({ dst: 'default', gateway: '10.0.0.1', protocol: 'boot', scope: 'global', metric: 100, prefsrc: '10.0.0.5', mtu: 1400, flags: ['onlink'] });
    expect(ipLines({ op: 'route-add', route: r })).toEqual(['route replace default via 10.0.0.1 dev eth0 table main proto boot scope global metric 100 src 10.0.0.5 mtu 1400 onlink']);
    expect(ipLines({ op: 'route-del', route: r })).toEqual(['route del default via 10.0.0.1 dev eth0 table main proto boot scope global metric 100 src 10.0.0.5 mtu 1400 onlink']);
    // IPv6: "default" is ::/0, no scope, a preference.
    expect(routeSpec(route({ family: 'inet6', dst: 'default', gateway: 'fe80::1', dev: 'net2', protocol: 'ra', scope: 'global', metric: 1024, pref: 'high' }))).toBe('::/0 via fe80::1 dev net2 table main proto ra metric 1024 pref high');
    // Types other than unicast lead; tos and numbered tables are kept.
    expect(routeSpec(route({ type: 'blackhole', dst: '10.9.0.0/16', table: '100', tos: '0x10' }))).toBe('blackhole 10.9.0.0/16 tos 0x10 dev eth0 table 100');
    expect(routeSpec(route({ dst: '169.254.1.1', protocol: 'boot', scope: 'link' }))).toBe('169.254.1.1 dev eth0 table main proto boot scope link');
  });

  it('a multipath route keeps its next hops, and they end the line as ip requires', () => {
    const r = route({ dst: '10.9.0.0/16', protocol: 'boot', metric: 10, nexthops: [{ gateway: '10.0.0.1', dev: 'eth0', weight: 1 }, { gateway: '10.1.0.1', dev: 'net1', weight: 2, flags: ['onlink'] }] });
    const [line] = ipLines({ op: 'route-del', route: r })!;
    expect(line).toMatch(/^route del 10\.9\.0\.0\/16 /);
    for (const w of ['table main', 'proto boot', 'metric 10', 'nexthop via 10.0.0.1 dev eth0 weight 1', 'nexthop via 10.1.0.1 dev net1 weight 2 onlink']) expect(line).toContain(w);
    // `ip route` reads nothing but further next hops after the first one:
    // "table main" after them is refused ("nexthop" or end of line is expected).
    const tail = line!.slice(line!.indexOf(' nexthop ') + 1);
    expect(tail).toMatch(/^(nexthop( via \S+)? dev \S+( weight \d+)?( onlink)? ?)+$/);
  });

  it('neighbours: replaced as permanent (router flag kept), deleted by address and device', () => {
    expect(ipLines({ op: 'neigh-add', neigh: neigh() })).toEqual(['neigh replace 10.0.0.9 lladdr 02:00:00:00:00:09 dev eth0 nud permanent']);
    expect(ipLines({ op: 'neigh-add', neigh: neigh({ family: 'inet6', dst: 'fd00::1', router: true }) })).toEqual(['neigh replace fd00::1 lladdr 02:00:00:00:00:09 dev eth0 nud permanent router']);
    expect(ipLines({ op: 'neigh-del', neigh: neigh() })).toEqual(['neigh del 10.0.0.9 lladdr 02:00:00:00:00:09 dev eth0']);
  });

  it('taps and nftables are not ip lines; every kind has a description for logs', () => {
    const others: Action[] = [
      { op: 'tap-open', tap: { name: 'tap0', queues: 4, persist: false } },
      { op: 'nft-load', table: table() },
      { op: 'nft-delete', family: 'netdev', name: 'podtap' },
    ];
    for (const a of others) expect(ipLines(a)).toBeUndefined();
    expect(others.map(describeAction)).toEqual(['open tap tap0 (4 queues)', 'nft load table bridge podtap', 'nft delete table netdev podtap']);
    expect(describeAction({ op: 'tap-open', tap: { name: 'tap1', queues: 1, persist: true } })).toBe('open tap tap1 (1 queue)');
    expect(describeAction({ op: 'link-del', name: 'br0' })).toBe('ip link del dev br0');
  });
});

describe('what discovery reports is accepted', () => {
  it('a multipath route as `ip -j` prints it (no device of its own, one per next hop)', () => {
    const [r] = parseRoutes([{ dst: '10.9.0.0/16', flags: [], nexthops: [{ gateway: '10.22.0.1', dev: 'eth0', weight: 1, flags: [] }, { gateway: '10.30.0.1', dev: 'net1', weight: 2, flags: [] }] }]);
    expect(r!.dev).toBeUndefined();
    expect(() => checkAction({ op: 'route-add', route: r! })).not.toThrow();
  });
});
