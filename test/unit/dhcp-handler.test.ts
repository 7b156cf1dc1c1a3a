import { describe, expect, it } from 'vitest';
import { BOOTREPLY, hardwareAddress, parsePacket } from '../../src/serve/dhcp4/codec.ts';
import type { DhcpPacket } from '../../src/serve/dhcp4/codec.ts';
import { buildPlan, handleDatagram } from '../../src/serve/dhcp4/handler.ts';
import type { Outcome, ReplyPlan } from '../../src/serve/dhcp4/handler.ts';
import { formatIpv4 } from '../../src/net/ipv4.ts';
import { Lease } from '../../src/serve/dhcp4/lease.ts';
import { decodeClasslessRoutes, decodeIps, decodeSearchList } from '../../src/serve/dhcp4/options.ts';
import { MSG, OPT, OTHER_MAC, SERVER_ID, VM_MAC, calicoConfig, clientPacket, ptpConfig } from '../helpers/dhcp-packets.ts';
import type { ClientPacket } from '../helpers/dhcp-packets.ts';

const T0 = 1_700_000_000_000;

function setup(config = calicoConfig()) {
  const { plan, warnings } = buildPlan(config);
  expect(warnings).toEqual([]);
  const lease = new Lease();
  const send = (p: ClientPacket, opts: { unicast?: boolean; now?: number } = {}): Outcome =>
    handleDatagram(clientPacket(p), plan, lease, { now: opts.now ?? T0, unicast: opts.unicast ?? false });
  return { plan, lease, send };
}

type Reply = Extract<Outcome, { kind: 'reply' }>;

function replyOf(o: Outcome): Reply & { pkt: DhcpPacket } {
  if (o.kind !== 'reply') throw new Error(`expected a reply, got ${JSON.stringify(o)}`);
  return { ...o, pkt: parsePacket(o.data) };
}

const u32 = (b: Buffer | undefined) => b?.readUInt32BE(0);
const codes = (p: DhcpPacket) => [...p.options.keys()];

describe('DISCOVER', () => {
  it('gets an OFFER of the pod address, unicast to yiaddr at chaddr', () => {
    const { send, lease } = setup();
    const r = replyOf(send({ type: MSG.DISCOVER, xid: 0xabcdef01 }));
    expect(r.type).toBe('OFFER');
    expect(r.to).toBe('10.23.5.7');
    expect(r.data.length).toBeGreaterThanOrEqual(300);
    const p = r.pkt;
    expect(p.op).toBe(BOOTREPLY);
    expect(p.xid).toBe(0xabcdef01);
    expect(formatIpv4(p.yiaddr)).toBe('10.23.5.7');
    expect(p.ciaddr).toBe(0);
    expect(p.siaddr).toBe(0);
    expect(hardwareAddress(p)).toBe(VM_MAC);
    expect(p.options.get(OPT.MESSAGE_TYPE)).toEqual(Buffer.from([MSG.OFFER]));
    expect(lease.state).toBe('offered');
  });

  it('carries every option, 53 first, in our order when the client states no preference', () => {
    const { send } = setup();
    const p = replyOf(send({ type: MSG.DISCOVER })).pkt;
    expect(codes(p)).toEqual([53, 54, 51, 58, 59, 1, 3, 121, 6, 15, 119, 12, 26, 249]);
    expect(decodeIps(p.options.get(54)!)).toEqual([SERVER_ID]);
    expect(u32(p.options.get(51))).toBe(3600);
    expect(u32(p.options.get(58))).toBe(1800);
    expect(u32(p.options.get(59))).toBe(3150);
    expect(u32(p.options.get(1))).toBe(0xffffffff);
    expect(decodeIps(p.options.get(3)!)).toEqual(['169.254.1.1']);
    const routes = [
      { dst: '169.254.1.1/32', gateway: '0.0.0.0' },
      { dst: '0.0.0.0/0', gateway: '169.254.1.1' },
    ];
    expect(decodeClasslessRoutes(p.options.get(121)!)).toEqual(routes);
    expect(decodeClasslessRoutes(p.options.get(249)!)).toEqual(routes);
    expect(decodeIps(p.options.get(6)!)).toEqual(['10.96.0.10']);
    expect(p.options.get(15)!.toString()).toBe('default.svc.cluster.local');
    expect(decodeSearchList(p.options.get(119)!)).toEqual(['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local']);
    expect(p.options.get(12)!.toString()).toBe('web-7d4b9c');
    expect(p.options.get(26)!.readUInt16BE(0)).toBe(1450);
    expect(p.options.has(28)).toBe(false); // a /32 has no broadcast address
  });

  it('sends the broadcast address where the subnet has one', () => {
    const { send } = setup(ptpConfig());
    const p = replyOf(send({ type: MSG.DISCOVER })).pkt;
    expect(decodeIps(p.options.get(28)!)).toEqual(['10.22.255.255']);
    expect(u32(p.options.get(1))).toBe(0xffff0000);
    expect(decodeClasslessRoutes(p.options.get(121)!)).toEqual([
      { dst: '10.22.0.1/32', gateway: '0.0.0.0' },
      { dst: '10.22.0.0/16', gateway: '10.22.0.1' },
      { dst: '0.0.0.0/0', gateway: '10.22.0.1' },
    ]);
  });

  it('follows the parameter request list order, keeps 53 first, and still sends what was not asked for', () => {
    const { send } = setup();
    const p = replyOf(send({ type: MSG.DISCOVER, prl: [121, 53, 42, 6, 1, 3, 119, 15, 12, 26, 28, 51, 54] })).pkt;
    // 42 (NTP) is not ours, 28 does not apply to a /32; the rest of ours follow.
    expect(codes(p)).toEqual([53, 121, 6, 1, 3, 119, 15, 12, 26, 51, 54, 58, 59, 249]);
  });

  it('answers with the broadcast flag set to the limited broadcast address', () => {
    const { send } = setup();
    expect(replyOf(send({ type: MSG.DISCOVER, flags: 0x8000 })).to).toBe('255.255.255.255');
  });

  it('echoes the client identifier (RFC 6842)', () => {
    const { send } = setup();
    const id = Buffer.from([0xff, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]);
    const p = replyOf(send({ type: MSG.DISCOVER, clientId: id })).pkt;
    expect(p.options.get(OPT.CLIENT_ID)).toEqual(id);
    expect(codes(p).slice(0, 3)).toEqual([53, 54, 61]);
    // An identifier longer than one option could hold is not echoed.
    const huge = replyOf(send({ type: MSG.DISCOVER, clientId: Buffer.alloc(600, 1) })).pkt;
    expect(huge.options.has(OPT.CLIENT_ID)).toBe(false);
  });

  it('fits the client\'s maximum message size by leaving out unrequested options first', () => {
    const long = Array.from({ length: 8 }, (_, i) => `team${i}-${'x'.repeat(20)}.example.internal`);
    const { plan, warnings } = buildPlan(calicoConfig({ search: long, domain: long[0]! }));
    expect(warnings[0]).toMatch(/576/);
    const lease = new Lease();
    const ask = (p: ClientPacket) => replyOf(handleDatagram(clientPacket(p), plan, lease, { now: T0, unicast: false }));
    const small = ask({ type: MSG.DISCOVER, prl: [1, 3, 6, 15, 119, 12] });
    expect(small.data.length).toBeLessThanOrEqual(576 - 28);
    expect(small.trimmed).toBeDefined();
    expect(small.trimmed![0]).toBe(249); // unrequested and last
    for (const required of [53, 54, 51, 58, 59, 1, 3, 121]) expect(small.pkt.options.has(required)).toBe(true);
    // A client that accepts more gets everything.
    const big = ask({ type: MSG.DISCOVER, prl: [1, 3, 6, 15, 119, 12], maxSize: 1500 });
    expect(big.trimmed).toBeUndefined();
    expect(decodeSearchList(big.pkt.options.get(119)!)).toEqual(long);
  });
});

describe('REQUEST (RFC 2131 §4.3.2)', () => {
  it('SELECTING with our server identifier and address: ACK, unicast to yiaddr', () => {
    const { send, lease } = setup();
    const r = replyOf(send({ type: MSG.REQUEST, serverId: SERVER_ID, requested: '10.23.5.7' }));
    expect(r.type).toBe('ACK');
    expect(r.request).toBe('selecting');
    expect(r.to).toBe('10.23.5.7');
    expect(formatIpv4(r.pkt.yiaddr)).toBe('10.23.5.7');
    expect(r.pkt.ciaddr).toBe(0);
    expect(r.pkt.options.get(53)![0]).toBe(MSG.ACK);
    expect(lease.state).toBe('bound');
    expect(lease.expiresAt).toBe(T0 + 3600_000);
  });

  it('SELECTING another server: silently ignored', () => {
    const { send, lease } = setup();
    send({ type: MSG.DISCOVER });
    const o = send({ type: MSG.REQUEST, serverId: '10.0.0.53', requested: '10.23.5.7' });
    expect(o).toMatchObject({ kind: 'event', event: 'ignored' });
    expect(lease.state).toBe('free');
  });

  it('SELECTING us with a wrong address: NAK, broadcast, with no configuration', () => {
    const { send, lease } = setup();
    const r = replyOf(send({ type: MSG.REQUEST, serverId: SERVER_ID, requested: '10.23.5.8', clientId: Buffer.from([1, 2]) }));
    expect(r.type).toBe('NAK');
    expect(r.to).toBe('255.255.255.255');
    expect(r.pkt.yiaddr).toBe(0);
    expect(codes(r.pkt)).toEqual([53, 54, 61, 56]);
    expect(r.pkt.options.get(53)![0]).toBe(MSG.NAK);
    expect(lease.state).toBe('free');
  });

  it('SELECTING without option 50 is dropped', () => {
    const { send } = setup();
    expect(send({ type: MSG.REQUEST, serverId: SERVER_ID })).toMatchObject({ kind: 'drop', reason: 'no-requested-address' });
    expect(send({ type: MSG.REQUEST })).toMatchObject({ kind: 'drop', reason: 'no-requested-address' });
  });

  it('INIT-REBOOT: ACK for our address, NAK for any other', () => {
    const { send } = setup();
    const ok = replyOf(send({ type: MSG.REQUEST, requested: '10.23.5.7' }));
    expect([ok.type, ok.request, ok.to]).toEqual(['ACK', 'init-reboot', '10.23.5.7']);
    const bad = replyOf(send({ type: MSG.REQUEST, requested: '192.168.1.50' }));
    expect([bad.type, bad.request, bad.to]).toEqual(['NAK', 'init-reboot', '255.255.255.255']);
    expect(bad.why).toMatch(/192\.168\.1\.50/);
  });

  it('RENEWING (unicast to us): ACK unicast to ciaddr, and the lease survives its renewal time', () => {
    const { send, lease } = setup();
    replyOf(send({ type: MSG.REQUEST, serverId: SERVER_ID, requested: '10.23.5.7' }));
    const t1 = T0 + 1800_000;
    expect(lease.snapshot(t1).expired).toBe(false);
    const r = replyOf(send({ type: MSG.REQUEST, ciaddr: '10.23.5.7' }, { unicast: true, now: t1 }));
    expect([r.type, r.request, r.to]).toEqual(['ACK', 'renewing', '10.23.5.7']);
    expect(formatIpv4(r.pkt.ciaddr)).toBe('10.23.5.7');
    expect(formatIpv4(r.pkt.yiaddr)).toBe('10.23.5.7');
    expect(u32(r.pkt.options.get(51))).toBe(3600);
    expect(lease.expiresAt).toBe(t1 + 3600_000);
    expect(lease.renewals).toBe(1);
    expect(lease.snapshot(T0 + 3600_000 + 1).expired).toBe(false);
  });

  it('RENEWING with someone else\'s ciaddr: NAK, broadcast', () => {
    const { send } = setup();
    const r = replyOf(send({ type: MSG.REQUEST, ciaddr: '10.23.5.99' }, { unicast: true }));
    expect([r.type, r.request, r.to]).toEqual(['NAK', 'renewing', '255.255.255.255']);
  });

  it('REBINDING (broadcast): ACK to ciaddr; NAK for a foreign ciaddr', () => {
    const { send, lease } = setup();
    const r = replyOf(send({ type: MSG.REQUEST, ciaddr: '10.23.5.7' }));
    expect([r.type, r.request, r.to]).toEqual(['ACK', 'rebinding', '10.23.5.7']);
    expect(lease.renewals).toBe(1);
    const bad = replyOf(send({ type: MSG.REQUEST, ciaddr: '10.1.1.1' }));
    expect([bad.type, bad.request]).toEqual(['NAK', 'rebinding']);
  });

  it('a renewal naming another server identifier is NAKed', () => {
    const { send } = setup();
    const r = replyOf(send({ type: MSG.REQUEST, ciaddr: '10.23.5.7', serverId: '10.0.0.53' }, { unicast: true }));
    expect([r.type, r.request]).toEqual(['NAK', 'renewing']);
    const ours = replyOf(send({ type: MSG.REQUEST, ciaddr: '10.23.5.7', serverId: SERVER_ID }, { unicast: true }));
    expect(ours.type).toBe('ACK');
    const wrongReq = replyOf(send({ type: MSG.REQUEST, ciaddr: '10.23.5.7', requested: '10.23.5.8' }, { unicast: true }));
    expect(wrongReq.type).toBe('NAK');
  });

  it('an ACK with the broadcast flag set but ciaddr known still goes to ciaddr', () => {
    const { send } = setup();
    expect(replyOf(send({ type: MSG.REQUEST, ciaddr: '10.23.5.7', flags: 0x8000 })).to).toBe('10.23.5.7');
  });
});

describe('INFORM, RELEASE, DECLINE', () => {
  it('INFORM: ACK with configuration but no lease, yiaddr 0, sent to ciaddr', () => {
    const { send, lease } = setup();
    const r = replyOf(send({ type: MSG.INFORM, ciaddr: '10.23.5.7', prl: [1, 3, 6, 51] }, { unicast: true }));
    expect([r.type, r.request, r.to]).toEqual(['ACK', 'inform', '10.23.5.7']);
    expect(r.pkt.yiaddr).toBe(0);
    expect(formatIpv4(r.pkt.ciaddr)).toBe('10.23.5.7');
    for (const c of [51, 58, 59]) expect(r.pkt.options.has(c)).toBe(false);
    expect(codes(r.pkt).slice(0, 4)).toEqual([53, 1, 3, 6]);
    expect(r.pkt.options.has(121)).toBe(true);
    expect(lease.state).toBe('free');
  });

  it('INFORM from an address we cannot reach is dropped', () => {
    const { send } = setup();
    expect(send({ type: MSG.INFORM, ciaddr: '192.168.0.2' })).toMatchObject({ kind: 'drop', reason: 'inform-foreign-ciaddr' });
  });

  it('RELEASE frees the lease, without a reply', () => {
    const { send, lease } = setup();
    send({ type: MSG.REQUEST, serverId: SERVER_ID, requested: '10.23.5.7' });
    expect(send({ type: MSG.RELEASE, ciaddr: '10.23.5.7', serverId: SERVER_ID }, { unicast: true })).toMatchObject({ kind: 'event', event: 'release' });
    expect(lease.state).toBe('released');
    expect(send({ type: MSG.RELEASE, ciaddr: '10.9.9.9', serverId: SERVER_ID })).toMatchObject({ kind: 'drop', reason: 'release-mismatch' });
    expect(send({ type: MSG.RELEASE, ciaddr: '10.23.5.7', serverId: '10.0.0.53' })).toMatchObject({ kind: 'event', event: 'ignored' });
  });

  it('DECLINE is recorded, without a reply', () => {
    const { send, lease } = setup();
    expect(send({ type: MSG.DECLINE, requested: '10.23.5.7', serverId: SERVER_ID })).toMatchObject({ kind: 'event', event: 'decline', detail: '10.23.5.7' });
    expect(lease.state).toBe('declined');
    expect(send({ type: MSG.DECLINE, requested: '10.23.5.9', serverId: SERVER_ID })).toMatchObject({ kind: 'drop', reason: 'decline-mismatch' });
    expect(send({ type: MSG.DECLINE, serverId: SERVER_ID })).toMatchObject({ kind: 'drop', reason: 'decline-mismatch' });
    // The address is still the only one there is: the next DISCOVER gets it.
    expect(replyOf(send({ type: MSG.DISCOVER })).type).toBe('OFFER');
  });
});

describe('requests that get no answer', () => {
  const cases: [string, ClientPacket, string][] = [
    ['another MAC', { type: MSG.DISCOVER, mac: OTHER_MAC }, 'foreign-mac'],
    ['a reply sent to the server port', { type: MSG.DISCOVER, op: 2 }, 'not-request'],
    ['not Ethernet', { type: MSG.DISCOVER, htype: 6 }, 'not-ethernet'],
    ['hlen 16', { type: MSG.DISCOVER, hlen: 16 }, 'not-ethernet'],
    ['relayed', { type: MSG.DISCOVER, giaddr: '10.0.0.1' }, 'relayed'],
    ['BOOTP (no option 53)', {}, 'no-message-type'],
    ['an OFFER from a client', { type: MSG.OFFER }, 'unsupported-type'],
    ['message type 200', { type: 200 }, 'unsupported-type'],
    ['option 53 of 2 bytes', { extra: [[53, Buffer.from([1, 1])]] }, 'bad-option'],
    ['option 50 of 3 bytes', { type: MSG.REQUEST, extra: [[50, Buffer.from([1, 2, 3])]] }, 'bad-option'],
    ['option 54 of 5 bytes', { type: MSG.REQUEST, extra: [[54, Buffer.from([1, 2, 3, 4, 5])]] }, 'bad-option'],
  ];
  for (const [name, p, reason] of cases) {
    it(name, () => {
      const { send } = setup();
      expect(send(p)).toMatchObject({ kind: 'drop', reason });
    });
  }

  it('reports the foreign MAC so the server can log it once', () => {
    const { send } = setup();
    expect(send({ type: MSG.REQUEST, mac: OTHER_MAC, requested: '10.23.5.7' })).toEqual({ kind: 'drop', reason: 'foreign-mac', mac: OTHER_MAC });
  });

  it('malformed datagrams come back as drop reasons, not exceptions', () => {
    const { plan } = setup();
    const lease = new Lease();
    const o = handleDatagram(Buffer.alloc(100), plan, lease, { now: T0, unicast: false });
    expect(o).toMatchObject({ kind: 'drop', reason: 'malformed:truncated' });
  });
});

describe('buildPlan', () => {
  it('reports and skips a search domain that cannot be encoded', () => {
    const { plan, warnings } = buildPlan(calicoConfig({ search: ['good.example', 'bad domain', 'also.good'] }));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/"bad domain" cannot be encoded/);
    expect(decodeSearchList(plan.payload.get(119)!)).toEqual(['good.example', 'also.good']);
  });

  it('rejects a config that is a programming error', () => {
    expect(() => buildPlan(calicoConfig({ vmMac: 'nope' }))).toThrow(/MAC/);
    expect(() => buildPlan(calicoConfig({ ip: '10.0.0' }))).toThrow(/IPv4/);
    expect(() => buildPlan(calicoConfig({ leaseSeconds: 0 }))).toThrow(/lease/);
  });

  it('omits options with nothing to say', () => {
    const { plan }: { plan: ReplyPlan } = buildPlan(calicoConfig({ router: undefined, routes: [], dns: [], search: [], domain: undefined, hostname: undefined }));
    expect([...plan.payload.keys()].sort((a, b) => a - b)).toEqual([1, 26]);
  });
});
