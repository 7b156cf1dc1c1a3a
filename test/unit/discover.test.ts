import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseObserved, chooseLink, assemble, routesVia } from '../../src/pod/discover.ts';
import { parseResolvConf } from '../../src/pod/resolv.ts';
import { parseBatchErrors } from '../../src/sys/ip.ts';

// Captured from a real namespace: `ip -j -d -batch` over a Calico-style veth
// (a /32, `169.254.1.1 scope link`, default via it, an extra route in table
// 100, a permanent neighbour, an IPv6 /128) plus its peer.
const raw = readFileSync(join(import.meta.dirname, 'fixtures/calico-batch.txt'), 'utf8');
const outputs = raw.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));

describe('discovery parsing', () => {
  const obs = parseObserved(outputs);

  it('finds links with kind, MAC, MTU and state', () => {
    const eth0 = obs.links.find((l) => l.name === 'eth0')!;
    expect(eth0).toMatchObject({ kind: 'veth', mtu: 1480, up: true });
    expect(eth0.mac).toMatch(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
    expect(obs.links.map((l) => l.name).sort()).toEqual(['cali0', 'eth0', 'lo']);
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

  it('reads permanent neighbours', () => {
    expect(obs.neighbours).toEqual([{ family: 'inet', dst: '10.23.5.9', lladdr: '02:00:00:00:00:09', dev: 'eth0', router: false, proxy: false }]);
  });

  it('refuses several veths with the candidates listed, and honours --interface', () => {
    expect(() => chooseLink(obs.links, obs.addresses)).toThrow(/2 veths in this network namespace: (?=.*cali0 \(veth\))(?=.*eth0 \(veth, 10\.23\.5\.7\/32\))/s);
    expect(chooseLink(obs.links, obs.addresses, 'eth0').name).toBe('eth0');
    expect(() => chooseLink(obs.links, obs.addresses, 'eth9')).toThrow(/eth9 does not exist/);
    expect(() => chooseLink(obs.links.filter((l) => l.kind !== 'veth'), obs.addresses)).toThrow(/no veth/);
  });

  it('assembles the pod network from the chosen link', () => {
    const pod = assemble(obs, chooseLink(obs.links, obs.addresses, 'eth0'), {}, 'nameserver 10.96.0.10\nsearch a.svc b\n', 'pod-1');
    expect(pod.routes.length).toBeGreaterThan(3);
    expect(pod.dns.search).toEqual(['a.svc', 'b']);
    expect(pod.hostname).toBe('pod-1');
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
