import { describe, expect, it } from 'vitest';
import { plan, routeAddOrder, chooseLinkLocal, type PlanOptions } from '../../src/plan/plan.ts';
import { PodtapError } from '../../src/errors.ts';
import { SHAPES } from '../helpers/shapes.ts';
import type { Link } from '../../src/pod/model.ts';
import type { Step } from '../../src/plan/steps.ts';

const OPTS: PlanOptions = { bridge: 'br0', tap: 'tap0', queues: 1, linkLocal: '169.254.75.1/32', linkLocalExplicit: false, antispoof: true, persistTap: false };
const GEN = { vethMac: '02:aa:bb:cc:dd:01', bridgeMac: '02:aa:bb:cc:dd:02' };
const links = (name = 'eth0'): Link[] => [{ name: 'lo', ifindex: 1, kind: 'loopback', mac: '00:00:00:00:00:00', mtu: 65536, up: true }, { name, ifindex: 2, kind: 'veth', mac: 'x', mtu: 1500, up: true }];
const ipLines = (steps: Step[], side: 'do' | 'undo') => steps.flatMap((s) => s[side]).flatMap((a) => ('ip' in a ? [a.ip] : []));

describe('plan', () => {
  for (const [name, pod] of Object.entries(SHAPES)) {
    it(`${name}: strips every movable route and address, and undo restores each of them`, () => {
      const p = plan(pod, links(), OPTS, GEN);
      const undo = ipLines(p.steps, 'undo');
      const dos = ipLines(p.steps, 'do');
      for (const r of pod.routes.filter((r) => r.table !== 'local' && r.dst !== 'fe80::/64')) {
        const dst = r.dst === 'default' && r.family === 'inet6' ? '::/0' : r.dst;
        expect(dos.some((l) => l.startsWith(`route del ${dst} `))).toBe(true);
        expect(undo.some((l) => l.startsWith(`route replace ${dst} `))).toBe(true);
      }
      for (const a of pod.addresses.filter((a) => !(a.family === 'inet6' && a.scope === 'link'))) {
        expect(dos).toContain(`addr del ${a.local}/${a.prefixlen} dev eth0`);
        expect(undo.some((l) => l.startsWith(`addr replace ${a.local}/${a.prefixlen} `))).toBe(true);
      }
      expect(p.vm.mac).toBe(pod.link.mac);
      expect(p.vm.mtu).toBe(pod.link.mtu);
      expect(dos).toContain(`link set dev eth0 address ${GEN.vethMac}`);
      expect(undo).toContain(`link set dev eth0 address ${pod.link.mac}`);
      expect(dos.some((l) => l.startsWith(`link add name br0 address ${GEN.bridgeMac} mtu ${pod.link.mtu} type bridge stp_state 0 forward_delay 0`))).toBe(true);
    });
  }

  it('restores on-link routes before the gateway routes that need them (Calico)', () => {
    const p = plan(SHAPES.calico, links(), OPTS, GEN);
    const undo = [...p.steps].reverse().flatMap((s) => s.undo).flatMap((a) => ('ip' in a ? [a.ip] : []));
    const onlink = undo.findIndex((l) => l.startsWith('route replace 169.254.1.1 dev eth0'));
    const dflt = undo.findIndex((l) => l.startsWith('route replace default via 169.254.1.1'));
    const addr = undo.findIndex((l) => l.startsWith('addr replace 10.23.5.7/32'));
    expect(addr).toBeGreaterThanOrEqual(0);
    expect(addr).toBeLessThan(onlink);
    expect(onlink).toBeLessThan(dflt);
    expect(p.vm).toMatchObject({ ip: '10.23.5.7/32', gateway: '169.254.1.1' });
  });

  it('re-adds a primary before its secondary, and removes the kernel prefix route CNI ptp had deleted', () => {
    const j = plan(SHAPES.jumbo, links(), OPTS, GEN);
    const undo = [...j.steps].reverse().flatMap((s) => s.undo).flatMap((a) => ('ip' in a ? [a.ip] : []));
    expect(undo.findIndex((l) => l.includes('10.26.0.5/24'))).toBeLessThan(undo.findIndex((l) => l.includes('10.26.0.6/24')));
    expect(undo.some((l) => l.includes('metric 300'))).toBe(true);
    expect(undo).toContain('neigh replace 10.26.0.9 lladdr 02:00:00:00:00:09 dev eth0 nud permanent');

    const p = plan(SHAPES.ptp, links(), OPTS, GEN);
    const pundo = [...p.steps].reverse().flatMap((s) => s.undo).flatMap((a) => ('ip' in a ? [a.ip] : []));
    const readd = pundo.findIndex((l) => l.startsWith('addr replace 10.22.0.5/16'));
    const stray = pundo.findIndex((l) => l === 'route del 10.22.0.0/16 dev eth0 table main proto kernel scope link');
    const via = pundo.findIndex((l) => l.startsWith('route replace 10.22.0.0/16 via 10.22.0.1'));
    expect(readd).toBeLessThan(stray);
    expect(stray).toBeLessThan(via);
    // The bridge shape keeps its kernel route, so nothing is deleted there.
    const b = plan(SHAPES.bridge, links(), OPTS, GEN);
    expect(ipLines(b.steps, 'undo').some((l) => l.includes('proto kernel scope link') && l.startsWith('route del'))).toBe(false);
  });

  it('orders routes on-link, then via gateway, then default', () => {
    const order = routeAddOrder(SHAPES.jumbo.routes).map((r) => r.dst);
    expect(order).toEqual(['10.26.0.0/24', '10.77.0.0/16', 'default']);
  });

  it('disables IPv6 on the port and re-enables it only once the MAC is back (link-local derives from it)', () => {
    const p = plan(SHAPES.dualstack, links(), OPTS, GEN);
    const ids = p.steps.map((s) => s.id);
    // After the single batch of link changes, so the sysctl splits nothing.
    expect(ids.indexOf('veth-ipv6-off')).toBeGreaterThan(ids.indexOf('bridge-up'));
    expect(p.steps.find((s) => s.id === 'veth-ipv6-off')!.undo).toEqual([
      { ip: `link set dev eth0 address ${SHAPES.dualstack.link.mac}` },
      { sysctl: 'net/ipv6/conf/eth0/disable_ipv6', value: '0' },
    ]);
    // Every ip action of setup is in one run: nothing but the tap opening comes before it.
    const kinds = p.steps.flatMap((s) => (s.background ? [] : s.do.map((a) => Object.keys(a)[0])));
    expect(kinds.join(' ').replace(/(ip )+/g, 'ip ')).toBe('tap ip sysctl');
  });

  it('uses --queues, --tap-owner and --persist-tap in the tap step', () => {
    const p = plan(SHAPES.ptp, links(), { ...OPTS, queues: 4, tapOwner: { uid: 107, gid: 108 } }, GEN);
    const tap = p.steps.find((s) => s.id === 'tap-open')!.do[0]!;
    expect(tap).toEqual({ tap: { name: 'tap0', queues: 4, persist: false, owner: { uid: 107, gid: 108 } } });
  });

  it('refuses a veth without IPv4, an enslaved veth, and taken names', () => {
    const v6only = { ...SHAPES.dualstack, addresses: SHAPES.dualstack.addresses.filter((a) => a.family === 'inet6') };
    expect(() => plan(v6only, links(), OPTS, GEN)).toThrow(/no IPv4 address/);
    expect(() => plan({ ...SHAPES.ptp, link: { ...SHAPES.ptp.link, master: 'br9' } }, links(), OPTS, GEN)).toThrow(/already a port of br9/);
    const taken = [...links(), { name: 'br0', ifindex: 3, kind: 'bridge', mac: 'x', mtu: 1500, up: true }];
    expect(() => plan(SHAPES.ptp, taken, OPTS, GEN)).toThrow(PodtapError);
    expect(() => plan(SHAPES.ptp, taken, OPTS, GEN)).toThrow(/br0 already exists/);
  });

  it('moves the default link-local address out of the way of the pod, but refuses a clashing explicit one', () => {
    const clash = { ...SHAPES.calico, routes: [...SHAPES.calico.routes, { family: 'inet' as const, table: 'main', type: 'unicast', dst: '169.254.75.0/24', dev: 'eth0', flags: [], scope: 'link' }] };
    expect(chooseLinkLocal(clash, { linkLocal: '169.254.75.1/32', linkLocalExplicit: false })).toBe('169.254.76.1/32');
    expect(() => chooseLinkLocal(clash, { linkLocal: '169.254.75.1/32', linkLocalExplicit: true })).toThrow(/overlaps/);
  });

  it('guards with antispoof for every pod IPv4 address unless disabled', () => {
    const p = plan(SHAPES.jumbo, links(), OPTS, GEN);
    const nft = p.steps.find((s) => s.id === 'guard')!.do[0] as { nft: string };
    expect(nft.nft).toContain('ip saddr != { 0.0.0.0, 10.26.0.5, 10.26.0.6 } drop');
    const open = plan(SHAPES.jumbo, links(), { ...OPTS, antispoof: false }, GEN);
    expect((open.steps.find((s) => s.id === 'guard')!.do[0] as { nft: string }).nft).not.toContain('saddr !=');
  });
});
