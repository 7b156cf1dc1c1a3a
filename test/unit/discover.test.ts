import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { assemble, checkNames, chooseInterfaces, parseLinks, parseNeighbours, parseObserved, parseRoutes, routesVia } from '../../src/pod/discover.ts';
import { parseResolvConf } from '../../src/pod/resolv.ts';
import { parseBatchErrors } from '../../src/sys/ip.ts';
import { PodtapError } from '../../src/errors.ts';
import type { Address, Link, PodInterface } from '../../src/pod/model.ts';
import { ALL_SHAPES, MULTUS } from '../helpers/shapes.ts';

// Captured from a real namespace: `ip -j -d -batch` over a Calico-style veth
// (a /32, `169.254.1.1 scope link`, default via it, an extra route in table
// 100, a permanent neighbour, an IPv6 /128) plus its peer.
const raw = readFileSync(join(import.meta.dirname, 'fixtures/calico-batch.txt'), 'utf8');
const outputs = raw.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));

const link = (name: string, kind: string, more: Partial<Link> = {}): Link => ({ name, ifindex: 2, kind, mac: '0a:58:0a:00:00:01', mtu: 1500, up: true, ...more });
const NO_ADDRESSES = new Map<string, Address[]>();

function refusal(fn: () => unknown): PodtapError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(PodtapError);
    return e as PodtapError;
  }
  throw new Error('not refused');
}

describe('discovery parsing', () => {
  const obs = parseObserved(outputs);

  it('finds links with kind, MAC, MTU and state', () => {
    const eth0 = obs.links.find((l) => l.name === 'eth0')!;
    expect(eth0).toMatchObject({ kind: 'veth', mtu: 1480, up: true, parent: 'cali0' });
    expect(eth0.mac).toMatch(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
    expect(obs.links.map((l) => l.name).sort()).toEqual(['cali0', 'eth0', 'lo']);
    expect(obs.links.find((l) => l.name === 'lo')!.kind).toBe('loopback');
  });

  it('reads the kinds ip describes: macvlan with its mode, tun with its queues, a physical NIC, address generation', () => {
    const links = parseLinks([
      { ifname: 'net2', ifindex: 5, address: '5e:10:c0:a8:32:0a', mtu: 1500, flags: ['UP'], link: 'if2', inet6_addr_gen_mode: 'eui64', linkinfo: { info_kind: 'macvlan', info_data: { mode: 'bridge' } } },
      { ifname: 'tap0', ifindex: 6, address: '02:00:00:00:00:01', mtu: 1500, flags: [], master: 'br0', linkinfo: { info_kind: 'tun', info_data: { type: 'tap', numqueues: 2, persist: true, multi_queue: true } } },
      { ifname: 'ens3', ifindex: 7, address: '52:54:00:00:00:01', mtu: 1500, flags: ['BROADCAST', 'UP'], link_type: 'ether', inet6_addr_gen_mode: 'none' },
    ]);
    expect(links[0]).toEqual({ name: 'net2', ifindex: 5, kind: 'macvlan', mac: '5e:10:c0:a8:32:0a', mtu: 1500, up: true, addrGenMode: 'eui64', parent: 'if2', macvlanMode: 'bridge' });
    expect(links[1]).toMatchObject({ kind: 'tun', up: false, master: 'br0', tun: { attachedQueues: 2, persist: true, multiQueue: true } });
    expect(links[2]).toMatchObject({ kind: 'device', addrGenMode: 'none' });
  });

  it('reads addresses of both families with their attributes', () => {
    const a = obs.addresses.get('eth0')!;
    expect(a.find((x) => x.family === 'inet')).toMatchObject({ local: '10.23.5.7', prefixlen: 32, scope: 'global', label: 'eth0' });
    expect(a.find((x) => x.local === 'fd00:23::7')).toMatchObject({ family: 'inet6', prefixlen: 128, flags: ['nodad'] });
  });

  it('reads routes of every table and both families through the veth', () => {
    const r = routesVia(obs.routes, 'eth0');
    expect(r.find((x) => x.dst === 'default' && x.family === 'inet')).toMatchObject({ gateway: '169.254.1.1', table: 'main' });
    expect(r.find((x) => x.dst === '169.254.1.1')).toMatchObject({ scope: 'link', table: 'main' });
    expect(r.find((x) => x.dst === '10.99.0.0/16')).toMatchObject({ table: '100', metric: 300, gateway: '169.254.1.1' });
    expect(r.some((x) => x.family === 'inet6' && x.table === 'local')).toBe(true);
    expect(r.every((x) => x.dev === 'eth0')).toBe(true);
  });

  it('counts a multipath route as going through every device of its next hops', () => {
    const routes = parseRoutes([
      { dst: '10.9.0.0/16', flags: [], nexthops: [{ gateway: '10.22.0.1', dev: 'eth0', weight: 1, flags: [] }, { gateway: '10.30.0.1', dev: 'net1', weight: 1, flags: [] }] },
      { dst: '10.8.0.0/16', gateway: '10.30.0.1', dev: 'net1', flags: [], metrics: [{ mtu: 1400 }] },
    ]);
    expect(routesVia(routes, 'eth0').map((r) => r.dst)).toEqual(['10.9.0.0/16']);
    expect(routesVia(routes, 'net1').map((r) => r.dst)).toEqual(['10.9.0.0/16', '10.8.0.0/16']);
    expect(routes[1]).toMatchObject({ family: 'inet', table: 'main', type: 'unicast', mtu: 1400 });
  });

  it('reads permanent neighbours, and learned ones with a MAC (for the gateway\'s), but no proxies or incomplete entries', () => {
    expect(obs.neighbours).toEqual([{ family: 'inet', dst: '10.23.5.9', lladdr: '02:00:00:00:00:09', dev: 'eth0', router: false, proxy: false, permanent: true }]);
    expect(
      parseNeighbours([
        { dst: 'fd00:24::1', dev: 'eth0', lladdr: '0a:58:0a:18:00:01', router: true, state: ['REACHABLE'] },
        { dst: '10.0.0.7', dev: 'eth0', state: ['FAILED'] },
        { dst: '10.0.0.8', dev: 'eth0', lladdr: '02:00:00:00:00:08', proxy: true, state: ['STALE'] },
        { dev: 'eth0', lladdr: '02:00:00:00:00:08' },
      ]),
    ).toEqual([{ family: 'inet6', dst: 'fd00:24::1', lladdr: '0a:58:0a:18:00:01', dev: 'eth0', router: true, proxy: false, permanent: false }]);
  });

  it('assembles one pod interface per chosen link, in NIC order, with only that link\'s routes and neighbours', () => {
    const links = chooseInterfaces(obs.links, obs.addresses, { wanted: ['eth0', 'cali0'] });
    const pod = assemble(obs, links, (n) => ({ [`net/ipv6/conf/${n}/disable_ipv6`]: '0' }), 'nameserver 10.96.0.10\nsearch a.svc b\n', 'pod-1');
    expect(pod.interfaces.map((i) => i.link.name)).toEqual(['eth0', 'cali0']);
    const [eth0, cali0] = pod.interfaces as [PodInterface, PodInterface];
    expect(eth0.routes.length).toBeGreaterThan(3);
    expect(eth0.routes.every((r) => r.dev === 'eth0')).toBe(true);
    expect(cali0.routes.every((r) => r.dev === 'cali0')).toBe(true);
    expect(eth0.neighbours).toHaveLength(1);
    expect(cali0.neighbours).toEqual([]);
    expect(eth0.sysctls).toEqual({ 'net/ipv6/conf/eth0/disable_ipv6': '0' });
    expect(cali0.addresses.map((a) => a.scope)).toEqual(['link']);
    expect(pod.dns.search).toEqual(['a.svc', 'b']);
    expect(pod.hostname).toBe('pod-1');
  });
});

describe('choosing the pod interfaces', () => {
  const obs = parseObserved(outputs);

  it('refuses several candidates with each listed and how to choose them all', () => {
    const e = refusal(() => chooseInterfaces(obs.links, obs.addresses));
    expect(e.code).toBe('discovery');
    expect(e.message).toMatch(/2 pod interfaces in this network namespace: (?=.*cali0 \(veth\))(?=.*eth0 \(veth, 10\.23\.5\.7\/32 fd00:23::7\/128\))/s);
    expect(e.hint).toMatch(/repeat it \(or PODTAP_INTERFACE=cali0,eth0\)/);
  });

  it('takes the only veth or macvlan without being told, and the named ones in the order given', () => {
    expect(chooseInterfaces([link('lo', 'loopback'), link('eth0', 'veth')], NO_ADDRESSES).map((l) => l.name)).toEqual(['eth0']);
    expect(chooseInterfaces([link('lo', 'loopback'), link('net1', 'macvlan')], NO_ADDRESSES).map((l) => l.name)).toEqual(['net1']);
    // podtap's own devices are never candidates.
    expect(chooseInterfaces([link('br0', 'bridge'), link('tap0', 'tun'), link('eth0', 'veth')], NO_ADDRESSES).map((l) => l.name)).toEqual(['eth0']);
    expect(chooseInterfaces(obs.links, obs.addresses, { wanted: ['eth0'] }).map((l) => l.name)).toEqual(['eth0']);
    const multus = MULTUS.interfaces.map((i) => i.link);
    expect(chooseInterfaces(multus, NO_ADDRESSES, { wanted: ['net2', 'eth0', 'net3'] }).map((l) => l.name)).toEqual(['net2', 'eth0', 'net3']);
    expect(() => chooseInterfaces(multus, NO_ADDRESSES)).toThrow(/4 pod interfaces/);
  });

  it('refuses a missing interface, one named twice, and no candidate at all', () => {
    expect(refusal(() => chooseInterfaces(obs.links, obs.addresses, { wanted: ['eth9'] })).message).toMatch(/eth9 does not exist in this network namespace \(links: .*eth0 \(veth, 10\.23\.5\.7\/32 fd00:23::7\/128\)\)$/);
    const twice = refusal(() => chooseInterfaces(obs.links, obs.addresses, { wanted: ['eth0', 'cali0', 'eth0'] }));
    expect(twice.code).toBe('usage');
    expect(twice.message).toMatch(/eth0 is named twice/);
    expect(refusal(() => chooseInterfaces(obs.links.filter((l) => l.kind !== 'veth'), obs.addresses)).message).toMatch(/no pod interface \(veth or macvlan\)/);
  });

  it('never takes loopback, a bridge or a tap, and a physical NIC only with --force', () => {
    const links = [link('lo', 'loopback'), link('br0', 'bridge'), link('tap0', 'tun'), link('ens3', 'device'), link('vx0', 'vxlan'), link('eth0', 'veth')];
    for (const [name, kind] of [['lo', 'loopback'], ['br0', 'bridge'], ['tap0', 'tun']]) {
      expect(refusal(() => chooseInterfaces(links, NO_ADDRESSES, { wanted: [name!], force: true })).message).toBe(`interface ${name} is a ${kind}, not a pod interface`);
    }
    const nic = refusal(() => chooseInterfaces(links, NO_ADDRESSES, { wanted: ['ens3'] }));
    expect(nic.message).toMatch(/ens3 is a physical NIC \("device"\), which no CNI plugin puts in a pod/);
    expect(nic.hint).toMatch(/--force/);
    expect(refusal(() => chooseInterfaces(links, NO_ADDRESSES, { wanted: ['vx0'] })).message).toMatch(/vx0 is a vxlan/);
    expect(chooseInterfaces(links, NO_ADDRESSES, { wanted: ['eth0', 'ens3'], force: true }).map((l) => l.name)).toEqual(['eth0', 'ens3']);
  });
});

describe('checkNames', () => {
  it('accepts every shape', () => {
    for (const pod of Object.values(ALL_SHAPES)) expect(() => checkNames(pod.interfaces)).not.toThrow();
  });

  it('refuses interface names podtap would not pass to ip or nft, wherever they appear', () => {
    const base = ALL_SHAPES.ptp.interfaces[0]!;
    const named = (name: string): PodInterface => ({ ...base, link: { ...base.link, name }, routes: base.routes.map((r) => ({ ...r, dev: name })) });
    for (const name of ['eth#0', 'eth"0', 'eth 0', 'eth*', 'a/b', 'all', 'abcdefghijklmnop']) {
      const e = refusal(() => checkNames([named(name)]));
      expect(e.message).toBe(`the interface name ${JSON.stringify(name)} has characters podtap does not pass to ip or nft`);
      expect(e.hint).toMatch(/CNI config "ifName"/);
    }
    // A route's next hop through a device with such a name is as bad.
    const hop: PodInterface = { ...base, routes: [...base.routes, { ...base.routes[0]!, dst: '10.9.0.0/16', nexthops: [{ gateway: '10.22.0.1', dev: 'eth0' }, { gateway: '10.22.0.2', dev: 'we ird' }] }] };
    expect(() => checkNames([hop])).toThrow(/"we ird"/);
    // Checked for every interface, not only the first.
    expect(() => checkNames([base, named('net#1')])).toThrow(/"net#1"/);
  });
});

describe('resolv.conf', () => {
  it('reads nameservers, the last search line and options, ignoring comments', () => {
    expect(parseResolvConf('# generated\nnameserver 10.96.0.10\nsearch x y\nsearch default.svc.cluster.local svc.cluster.local cluster.local\nnameserver fd00::a ; v6\noptions ndots:5 edns0\n')).toEqual({
      nameservers: ['10.96.0.10', 'fd00::a'],
      search: ['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local'],
      options: ['ndots:5', 'edns0'],
    });
    expect(parseResolvConf('')).toEqual({ nameservers: [], search: [], options: [] });
  });
});

describe('ip -batch errors', () => {
  it('maps each failure to its line', () => {
    const lines = ['link add br0 type bridge', 'addr add 1.2.3.4/32 dev br0', 'route add 5.6.7.8 dev nope'];
    expect(parseBatchErrors('RTNETLINK answers: File exists\nCommand failed -:1\nCannot find device "nope"\nCommand failed -:3\n', lines)).toEqual([
      { line: 0, command: lines[0], message: 'RTNETLINK answers: File exists' },
      { line: 2, command: lines[2], message: 'Cannot find device "nope"' },
    ]);
  });
});
