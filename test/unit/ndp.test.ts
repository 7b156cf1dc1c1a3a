import { describe, expect, it } from 'vitest';
import { icmp6Frame, parseFrame } from '../../src/serve/frames.ts';
import type { Ipv6Packet } from '../../src/serve/frames.ts';
import {
  ND,
  buildNeighborAdvertisement,
  buildNeighborSolicitation,
  buildRouterSolicitation,
  neighborAdvertisementFrame,
  neighborSolicitationFrame,
  parseNdOptions,
  parseNeighborAdvertisement,
  parseNeighborSolicitation,
  parseRouterSolicitation,
} from '../../src/serve/nd/ndp.ts';

// Captured with tcpdump on a veth peer in a throwaway namespace pair (Linux 6.x).
const KERNEL_RS =
  '33330000000252540012345686dd6000000000103afffe80000000000000505400fffe123456ff020000000000000000000000000002850071b5000000000101525400123456';
// The kernel's DAD probe for its link-local address: from ::, to the
// solicited-node group, no SLLA, an RFC 7527 nonce option.
const KERNEL_DAD_NS =
  '3333ff12345652540012345686dd6000000000203aff00000000000000000000000000000000ff0200000000000000000001ff12345687002dba00000000fe80000000000000505400fffe1234560e0171eefd9918b7';
// What neighborAdvertisementFrame sent a guest resolving its router; the
// guest's kernel installed fe80::1 as a REACHABLE router neighbour from it
// and tcpdump read "icmp6 sum ok ... Flags [router, solicited, override]".
const ROUTER_NA =
  '52540012345602000000000186dd6000000000203afffe800000000000000000000000000001fe80000000000000505400fffe12345688001461e0000000fe8000000000000000000000000000010201020000000001';

const VM_MAC = '52:54:00:12:34:56';
const VM_LL = 'fe80::5054:ff:fe12:3456';

function packet(frame: Buffer | string): Ipv6Packet {
  const p = parseFrame(typeof frame === 'string' ? Buffer.from(frame, 'hex') : frame);
  if (p.kind !== 'ipv6') throw new Error(`not IPv6: ${JSON.stringify(p)}`);
  return p;
}

/** An ND packet with the given fields; the checksum is right unless a test breaks it. */
function nd(o: { type: number; body: Buffer; src?: string; dst?: string; hopLimit?: number; code?: number }): Ipv6Packet {
  return packet(
    icmp6Frame({
      srcMac: VM_MAC,
      dstMac: '33:33:00:00:00:02',
      src: o.src ?? VM_LL,
      dst: o.dst ?? 'ff02::2',
      hopLimit: o.hopLimit ?? 255,
      type: o.type,
      code: o.code ?? 0,
      body: o.body,
    }),
  );
}

const slla = (mac: string) => Buffer.concat([Buffer.from([1, 1]), Buffer.from(mac.replace(/:/g, ''), 'hex')]);

describe('router solicitations (RFC 4861 §6.1.1)', () => {
  it('accepts the kernel RS and reads its source link-layer address', () => {
    const rs = parseRouterSolicitation(packet(KERNEL_RS));
    expect(rs).toMatchObject({ ok: true, sourceMac: VM_MAC });
  });

  it('accepts one from :: without an SLLA', () => {
    expect(parseRouterSolicitation(nd({ type: ND.ROUTER_SOLICITATION, body: Buffer.alloc(4), src: '::' }))).toMatchObject({ ok: true });
  });

  it('refuses each invalid form with the rule it breaks', () => {
    const body = buildRouterSolicitation(VM_MAC);
    const cases: [Ipv6Packet, string][] = [
      [nd({ type: ND.ROUTER_SOLICITATION, body, hopLimit: 254 }), 'bad-hop-limit'],
      [nd({ type: ND.ROUTER_SOLICITATION, body, code: 1 }), 'bad-code'],
      [nd({ type: ND.ROUTER_SOLICITATION, body: Buffer.alloc(3) }), 'too-short'],
      [nd({ type: ND.ROUTER_SOLICITATION, body, src: '::' }), 'slla-with-unspecified-source'],
      [nd({ type: ND.ROUTER_SOLICITATION, body: Buffer.concat([Buffer.alloc(4), Buffer.from([1, 0, 0, 0, 0, 0, 0, 0])]) }), 'bad-option'],
      [nd({ type: ND.ROUTER_SOLICITATION, body: Buffer.concat([Buffer.alloc(4), Buffer.from([1, 2, 0, 0, 0, 0, 0, 0])]) }), 'bad-option'],
      [nd({ type: ND.ROUTER_SOLICITATION, body: Buffer.concat([Buffer.alloc(4), Buffer.from([1])]) }), 'bad-option'],
      [nd({ type: ND.NEIGHBOR_SOLICITATION, body }), 'wrong-type'],
      [packet(Buffer.from(KERNEL_RS.slice(0, -2) + '57', 'hex')), 'bad-checksum'],
    ];
    for (const [p, why] of cases) expect(parseRouterSolicitation(p)).toMatchObject({ ok: false, reason: why });
    expect(parseRouterSolicitation({ src: VM_LL, dst: 'ff02::2', hopLimit: 255 })).toMatchObject({ ok: false, reason: 'not-icmp6' });
  });

  it('leaves an unfilled checksum to the caller who knows it was offloaded', () => {
    const p = packet(Buffer.from(KERNEL_RS.slice(0, -2) + '57', 'hex'));
    expect(parseRouterSolicitation(p, { checksumNotReady: true })).toMatchObject({ ok: true, sourceMac: '52:54:00:12:34:57' });
  });

  it('skips unknown options but still checks their lengths', () => {
    const body = Buffer.concat([Buffer.alloc(4), Buffer.from([200, 1, 1, 2, 3, 4, 5, 6]), slla(VM_MAC)]);
    const rs = parseRouterSolicitation(nd({ type: ND.ROUTER_SOLICITATION, body }));
    expect(rs).toMatchObject({ ok: true, sourceMac: VM_MAC });
    expect(rs.ok && rs.options.map((o) => o.type)).toEqual([200, 1]);
  });
});

describe('neighbor solicitations (RFC 4861 §7.1.1)', () => {
  it('reads the kernel DAD probe: unspecified source, no SLLA, a nonce', () => {
    const ns = parseNeighborSolicitation(packet(KERNEL_DAD_NS));
    expect(ns).toMatchObject({ ok: true, target: VM_LL, dad: true });
    expect(ns.ok && ns.sourceMac).toBeUndefined();
    expect(ns.ok && ns.nonce?.toString('hex')).toBe('71eefd9918b7');
  });

  it('builds the kernel DAD probe byte for byte', () => {
    const f = neighborSolicitationFrame({ srcMac: VM_MAC, target: VM_LL, nonce: Buffer.from('71eefd9918b7', 'hex') });
    expect(f.toString('hex')).toBe(KERNEL_DAD_NS);
  });

  it('builds a resolution probe with a source: SLLA included, to the solicited-node group', () => {
    const f = neighborSolicitationFrame({ srcMac: '02:00:00:00:00:01', target: 'fe80::abcd:1', src: 'fe80::1' });
    const p = packet(f);
    expect([p.eth.dst, p.dst, p.src, p.hopLimit]).toEqual(['33:33:ff:cd:00:01', 'ff02::1:ffcd:1', 'fe80::1', 255]);
    expect(parseNeighborSolicitation(p)).toMatchObject({ ok: true, target: 'fe80::abcd:1', dad: false, sourceMac: '02:00:00:00:00:01' });
    const u = packet(neighborSolicitationFrame({ srcMac: '02:00:00:00:00:01', target: 'fe80::abcd:1', src: 'fe80::1', unicastTo: '02:aa:bb:cc:dd:ee' }));
    expect([u.eth.dst, u.dst]).toEqual(['02:aa:bb:cc:dd:ee', 'fe80::abcd:1']);
    expect(() => neighborSolicitationFrame({ srcMac: '02:00:00:00:00:01', target: 'fe80::abcd:1', unicastTo: '02:aa:bb:cc:dd:ee' })).toThrow(/source address/);
  });

  it('builds a DAD-style probe without a source and with no SLLA', () => {
    const p = packet(neighborSolicitationFrame({ srcMac: '02:00:00:00:00:01', target: 'fe80::1' }));
    expect([p.src, p.dst, p.eth.dst]).toEqual(['::', 'ff02::1:ff00:1', '33:33:ff:00:00:01']);
    expect(p.icmp6!.body.length).toBe(20);
    expect(parseNeighborSolicitation(p)).toMatchObject({ ok: true, dad: true, target: 'fe80::1' });
  });

  it('refuses each invalid form with the rule it breaks', () => {
    const target = (t: string, mac?: string) => buildNeighborSolicitation(mac ? { target: t, sourceMac: mac } : { target: t });
    const cases: [Ipv6Packet, string][] = [
      [nd({ type: ND.NEIGHBOR_SOLICITATION, body: target('ff02::1'), dst: 'ff02::1' }), 'multicast-target'],
      [nd({ type: ND.NEIGHBOR_SOLICITATION, body: target('fe80::1'), src: '::', dst: 'ff02::1' }), 'unspecified-source-not-to-solicited-node'],
      [nd({ type: ND.NEIGHBOR_SOLICITATION, body: target('fe80::1'), src: '::', dst: 'fe80::1' }), 'unspecified-source-not-to-solicited-node'],
      [nd({ type: ND.NEIGHBOR_SOLICITATION, body: target('fe80::1', VM_MAC), src: '::', dst: 'ff02::1:ff00:1' }), 'slla-with-unspecified-source'],
      [nd({ type: ND.NEIGHBOR_SOLICITATION, body: target('fe80::1'), hopLimit: 64 }), 'bad-hop-limit'],
      [nd({ type: ND.NEIGHBOR_SOLICITATION, body: target('fe80::1'), code: 9 }), 'bad-code'],
      [nd({ type: ND.NEIGHBOR_SOLICITATION, body: Buffer.alloc(19) }), 'too-short'],
      [nd({ type: ND.NEIGHBOR_SOLICITATION, body: Buffer.concat([target('fe80::1'), Buffer.from([1, 0])]) }), 'bad-option'],
    ];
    for (const [p, why] of cases) expect(parseNeighborSolicitation(p)).toMatchObject({ ok: false, reason: why });
    // Unicast from a real address, with SLLA: fine. From :: to any solicited-node group: fine.
    expect(parseNeighborSolicitation(nd({ type: ND.NEIGHBOR_SOLICITATION, body: target('fe80::1', VM_MAC), dst: 'fe80::1' }))).toMatchObject({ ok: true, sourceMac: VM_MAC });
    expect(parseNeighborSolicitation(nd({ type: ND.NEIGHBOR_SOLICITATION, body: target('fe80::1'), src: '::', dst: 'ff02::1:ff00:1' }))).toMatchObject({ ok: true, dad: true });
  });
});

describe('neighbor advertisements (RFC 4861 §4.4, §7.1.2)', () => {
  it('answers a guest resolving its router exactly as the guest accepted it', () => {
    const f = neighborAdvertisementFrame({ srcMac: '02:00:00:00:00:01', src: 'fe80::1', target: 'fe80::1', router: true, to: { ip: VM_LL, mac: VM_MAC } });
    expect(f.toString('hex')).toBe(ROUTER_NA);
    expect(parseNeighborAdvertisement(packet(f))).toMatchObject({ ok: true, target: 'fe80::1', router: true, solicited: true, override: true, targetMac: '02:00:00:00:00:01' });
  });

  it('answers a DAD probe to all-nodes with S=0', () => {
    const p = packet(neighborAdvertisementFrame({ srcMac: '02:00:00:00:00:01', src: 'fe80::1', target: 'fe80::1', router: false, override: false, to: 'all-nodes' }));
    expect([p.dst, p.eth.dst]).toEqual(['ff02::1', '33:33:00:00:00:01']);
    expect(parseNeighborAdvertisement(p)).toMatchObject({ ok: true, router: false, solicited: false, override: false });
  });

  it('lays out the flags and option as RFC 4861 §4.4 draws them', () => {
    const b = buildNeighborAdvertisement({ target: '2001:db8::1', router: false, solicited: true, override: false, targetMac: '02:00:00:00:00:01' });
    expect(b.toString('hex')).toBe('40000000' + '20010db8000000000000000000000001' + '0201020000000001');
    expect(buildNeighborAdvertisement({ target: '::1', router: true, solicited: false, override: true }).toString('hex')).toBe('a0000000' + '00000000000000000000000000000001');
  });

  it('refuses a solicited advertisement to a multicast address, and multicast targets', () => {
    const solicited = buildNeighborAdvertisement({ target: 'fe80::1', router: true, solicited: true, override: true });
    expect(parseNeighborAdvertisement(nd({ type: ND.NEIGHBOR_ADVERTISEMENT, body: solicited, dst: 'ff02::1' }))).toMatchObject({ ok: false, reason: 'solicited-flag-to-multicast' });
    const mcast = buildNeighborAdvertisement({ target: 'ff02::1', router: false, solicited: false, override: false });
    expect(parseNeighborAdvertisement(nd({ type: ND.NEIGHBOR_ADVERTISEMENT, body: mcast, dst: 'ff02::1' }))).toMatchObject({ ok: false, reason: 'multicast-target' });
    expect(parseNeighborAdvertisement(nd({ type: ND.NEIGHBOR_ADVERTISEMENT, body: solicited, dst: VM_LL, hopLimit: 1 }))).toMatchObject({ ok: false, reason: 'bad-hop-limit' });
    expect(parseNeighborAdvertisement(nd({ type: ND.NEIGHBOR_ADVERTISEMENT, body: solicited.subarray(0, 16), dst: VM_LL }))).toMatchObject({ ok: false, reason: 'too-short' });
  });
});

describe('option walking (RFC 4861 §4.6)', () => {
  it('splits options and never reads past the buffer', () => {
    const r = parseNdOptions(Buffer.from('0101525400123456' + '0e01' + '71eefd9918b7', 'hex'));
    expect(r.ok && r.options.map((o) => [o.type, o.data.toString('hex')])).toEqual([
      [1, '525400123456'],
      [14, '71eefd9918b7'],
    ]);
    expect(parseNdOptions(Buffer.alloc(0))).toEqual({ ok: true, options: [] });
    for (let n = 1; n < 16; n++) {
      const r2 = parseNdOptions(Buffer.from('0102525400123456aaaaaaaaaaaaaaaa', 'hex').subarray(0, n));
      expect(r2.ok).toBe(false);
    }
  });
});
