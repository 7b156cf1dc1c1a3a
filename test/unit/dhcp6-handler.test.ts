import { describe, expect, it } from 'vitest';
import { MSG6, STATUS, decodeMessage, duidLinkLayer, encodeMessage, firstOption, optionsOf } from '../../src/serve/dhcp6/codec.ts';
import type { Dhcp6Message, Dhcp6Option } from '../../src/serve/dhcp6/codec.ts';
import { dhcp6ConfigFrom } from '../../src/serve/dhcp6/config.ts';
import { MAX_REPLY, handle } from '../../src/serve/dhcp6/handler.ts';
import type { Dhcp6Context, Dhcp6Outcome } from '../../src/serve/dhcp6/handler.ts';
import { Lease6 } from '../../src/serve/dhcp6/lease.ts';
import type { Ipv6Identity } from '../../src/serve/nd/ra.ts';
import { podIdentity } from '../helpers/ipv6-identity.ts';

const T0 = 1_700_000_000_000;
const VM_LL = 'fe80::5054:ff:fe12:3456';
const SERVER_DUID = duidLinkLayer('02:00:00:00:00:01');
const CLIENT_DUID = Buffer.from('00010001329f7066525400123456', 'hex');

function setup(identity: Ipv6Identity = podIdentity(), opts: { leaseSeconds?: number; rapidCommit?: boolean } = {}) {
  const { config, warnings } = dhcp6ConfigFrom(identity, { serverDuid: SERVER_DUID, leaseSeconds: opts.leaseSeconds ?? 3600, ...(opts.rapidCommit === undefined ? {} : { rapidCommit: opts.rapidCommit }) });
  const lease = new Lease6();
  const send = (m: Dhcp6Message | Buffer, ctx: Partial<Dhcp6Context> = {}): Dhcp6Outcome =>
    handle(Buffer.isBuffer(m) ? m : encodeMessage(m), { now: T0, src: VM_LL, multicast: true, ...ctx }, config, lease);
  return { config, warnings, lease, send };
}

type Reply = Extract<Dhcp6Outcome, { kind: 'reply' }> & { msg: Dhcp6Message };

function replyOf(o: Dhcp6Outcome): Reply {
  if (o.kind !== 'reply') throw new Error(`expected a reply, got ${JSON.stringify(o)}`);
  const d = decodeMessage(o.data);
  if (!d.ok) throw new Error(`reply does not decode: ${JSON.stringify(d.error)}`);
  return { ...o, msg: d.message };
}

const serverId: Dhcp6Option = { kind: 'server-id', duid: SERVER_DUID };
const clientId = (duid = CLIENT_DUID): Dhcp6Option => ({ kind: 'client-id', duid });
const iaaddr = (address: string): Dhcp6Option => ({ kind: 'iaaddr', address, preferred: 0, valid: 0, options: [] });
const iaNa = (iaid: number, ...addrs: string[]): Dhcp6Option => ({ kind: 'ia-na', iaid, t1: 0, t2: 0, options: addrs.map(iaaddr) });
const iaTa = (iaid: number, ...addrs: string[]): Dhcp6Option => ({ kind: 'ia-ta', iaid, options: addrs.map(iaaddr) });
const iaPd = (iaid: number, ...prefixes: string[]): Dhcp6Option => ({
  kind: 'ia-pd',
  iaid,
  t1: 0,
  t2: 0,
  options: prefixes.map((p): Dhcp6Option => ({ kind: 'iaprefix', prefix: p, prefixlen: 64, preferred: 0, valid: 0, options: [] })),
});
const message = (type: number, ...options: Dhcp6Option[]): Dhcp6Message => ({ type, xid: 0xc0ffee, options });

function topStatus(m: Dhcp6Message): number | undefined {
  return firstOption(m.options, 'status')?.status;
}

function ias(m: Dhcp6Message) {
  return m.options.filter((o) => o.kind === 'ia-na' || o.kind === 'ia-ta' || o.kind === 'ia-pd') as Extract<Dhcp6Option, { kind: 'ia-na' | 'ia-ta' | 'ia-pd' }>[];
}

function iaStatus(ia: { options: Dhcp6Option[] }): number | undefined {
  return firstOption(ia.options, 'status')?.status;
}

function addrs(ia: { options: Dhcp6Option[] }): [string, number, number][] {
  return optionsOf(ia.options, 'iaaddr').map((a) => [a.address, a.preferred, a.valid]);
}

describe('a conversation real clients had with this handler', () => {
  // Client payloads and the handler's answers, captured on the wire while
  // ISC dhclient 4.4.3 and then dhcpcd 9.4.1 (with rapid commit) ran against
  // it in a throwaway namespace pair, with podIdentity() and a 20 s lease. Both
  // clients configured 2001:db8:1::5 and the DNS options and renewed;
  // dhclient -r released. The answers must stay byte for byte what they
  // accepted.
  const conversation: [string, string][] = [
    [
      '012ef10f0001000e00010001329f706652540012345600060008001700180027001f0008000200000003000c0012345600000e1000001518',
      '022ef10f0001000e00010001329f70665254001234560002000a0003000102000000000100070001ff00030028001234560000000a000000100005001820010db800010000000000000000000500000014000000140017001020010db80000000000000000000000530018003d0764656661756c740373766307636c7573746572056c6f63616c000373766307636c7573746572056c6f63616c0007636c7573746572056c6f63616c00',
    ],
    [
      '03b3d8c20001000e00010001329f70665254001234560002000a0003000102000000000100060008001700180027001f000800020000000300280012345600000e10000015180005001820010db800010000000000000000000500001c2000001d4c',
      '07b3d8c20001000e00010001329f70665254001234560002000a0003000102000000000100030028001234560000000a000000100005001820010db800010000000000000000000500000014000000140017001020010db80000000000000000000000530018003d0764656661756c740373766307636c7573746572056c6f63616c000373766307636c7573746572056c6f63616c0007636c7573746572056c6f63616c00',
    ],
    [
      '05d154590001000e00010001329f70665254001234560002000a0003000102000000000100060008001700180027001f000800020000000300280012345600000e10000015180005001820010db800010000000000000000000500001c2000001d4c',
      '07d154590001000e00010001329f70665254001234560002000a0003000102000000000100030028001234560000000a000000100005001820010db800010000000000000000000500000014000000140017001020010db80000000000000000000000530018003d0764656661756c740373766307636c7573746572056c6f63616c000373766307636c7573746572056c6f63616c0007636c7573746572056c6f63616c00',
    ],
    [
      '081a7be70001000e00010001329f70665254001234560002000a0003000102000000000100060008001700180027001f000800020000000300280012345600000000000000000005001820010db80001000000000000000000050000000000000000',
      '071a7be70001000e00010001329f70665254001234560002000a00030001020000000001000d000c0000706f647461703a206f6b',
    ],
    [
      '01f1f91d0001000e00010001329f70805254001234560003000c0012345600000000000000000006000a00170018002700520053000800020000000e0000',
      '07f1f91d0001000e00010001329f70805254001234560002000a00030001020000000001000e000000030028001234560000000a000000100005001820010db800010000000000000000000500000014000000140017001020010db80000000000000000000000530018003d0764656661756c740373766307636c7573746572056c6f63616c000373766307636c7573746572056c6f63616c0007636c7573746572056c6f63616c00',
    ],
    [
      '057f202e0001000e00010001329f70805254001234560002000a00030001020000000001000300280012345600000000000000000005001820010db800010000000000000000000500000014000000140006000a00170018002700520053000800020000',
      '077f202e0001000e00010001329f70805254001234560002000a0003000102000000000100030028001234560000000a000000100005001820010db800010000000000000000000500000014000000140017001020010db80000000000000000000000530018003d0764656661756c740373766307636c7573746572056c6f63616c000373766307636c7573746572056c6f63616c0007636c7573746572056c6f63616c00',
    ],
  ];

  it('answers every message as the clients saw it', () => {
    const { send, lease } = setup(podIdentity(), { leaseSeconds: 20 });
    const states: string[] = [];
    for (const [ask, answer] of conversation) {
      const r = replyOf(send(Buffer.from(ask, 'hex')));
      expect(r.data.toString('hex')).toBe(answer);
      expect(r.to).toBe(VM_LL);
      states.push(lease.state);
    }
    expect(states).toEqual(['advertised', 'bound', 'bound', 'released', 'bound', 'bound']);
    // The second client had another DUID and still got the pod's address.
    expect(lease.snapshot(T0)).toMatchObject({ binds: 4, renewals: 2, clientDuid: '00010001329f7080525400123456', iaid: 0x123456, addresses: ['2001:db8:1::5'] });
  });
});

describe('dhcp6ConfigFrom', () => {
  it('hands out every global address, IPv6 nameservers only, and T1/T2 at 0.5/0.8', () => {
    const { config, warnings } = dhcp6ConfigFrom(
      podIdentity({
        addresses: [
          { address: '2001:db8:1::5', prefixlen: 64 },
          { address: 'fd00:10::5', prefixlen: 128 },
          { address: 'FE80::1', prefixlen: 64 },
          { address: '2001:DB8:1:0::5', prefixlen: 64 },
        ],
        dns: { servers: ['10.96.0.10', 'fd00::a', '2001:db8::53'], search: ['cluster.local.', 'bad domain'] },
      }),
      { serverDuid: SERVER_DUID, leaseSeconds: 3600 },
    );
    expect(config.addresses).toEqual(['2001:db8:1::5', 'fd00:10::5']);
    expect(config.linkPrefixes).toEqual([
      { prefix: '2001:db8:1::', prefixlen: 64 },
      { prefix: 'fd00:10::5', prefixlen: 128 },
    ]);
    expect(config.dnsServers).toEqual(['fd00::a', '2001:db8::53']);
    expect(config.search).toEqual(['cluster.local']);
    expect([config.t1, config.t2, config.leaseSeconds, config.preference, config.rapidCommit]).toEqual([1800, 2880, 3600, 255, true]);
    expect(config.informationRefreshSeconds).toBe(3600);
    expect(warnings.join('\n')).toMatch(/FE80::1 is not a global unicast address/);
    expect(warnings.join('\n')).toMatch(/"bad domain" cannot be encoded/);
  });

  it('says so when there is nothing to hand out, and keeps the refresh time above IRT_MINIMUM', () => {
    const { config, warnings } = dhcp6ConfigFrom(podIdentity({ addresses: [], dns: undefined }), { serverDuid: SERVER_DUID, leaseSeconds: 60 });
    expect(config.addresses).toEqual([]);
    expect(config.dnsServers).toEqual([]);
    expect(config.informationRefreshSeconds).toBe(600);
    expect(warnings.join()).toMatch(/no global IPv6 address/);
  });

  it('refuses what cannot be served', () => {
    expect(() => dhcp6ConfigFrom(podIdentity(), { serverDuid: Buffer.alloc(2), leaseSeconds: 3600 })).toThrow(/DUID/);
    expect(() => dhcp6ConfigFrom(podIdentity(), { serverDuid: SERVER_DUID, leaseSeconds: 0 })).toThrow(/lease/);
    expect(() => dhcp6ConfigFrom(podIdentity(), { serverDuid: SERVER_DUID, leaseSeconds: 0xffffffff })).toThrow(/lease/);
    expect(() => dhcp6ConfigFrom(podIdentity({ addresses: [{ address: 'x', prefixlen: 64 }] }), { serverDuid: SERVER_DUID, leaseSeconds: 1 })).toThrow(/bad IPv6/);
  });
});

describe('Solicit (RFC 8415 §18.3.1)', () => {
  it('advertises every pod address in the first IA_NA with preference 255', () => {
    const { send, lease } = setup(podIdentity({ addresses: [{ address: '2001:db8:1::5', prefixlen: 64 }, { address: 'fd00::5', prefixlen: 128 }] }));
    const r = replyOf(send(message(MSG6.SOLICIT, clientId(), iaNa(7))));
    expect(r.type).toBe('ADVERTISE');
    expect(r.msg.type).toBe(MSG6.ADVERTISE);
    expect(r.msg.xid).toBe(0xc0ffee);
    expect(firstOption(r.msg.options, 'preference')!.value).toBe(255);
    expect(firstOption(r.msg.options, 'server-id')!.duid).toEqual(SERVER_DUID);
    expect(firstOption(r.msg.options, 'client-id')!.duid).toEqual(CLIENT_DUID);
    const [ia] = ias(r.msg);
    expect(ia).toMatchObject({ kind: 'ia-na', iaid: 7, t1: 1800, t2: 2880 });
    expect(addrs(ia!)).toEqual([
      ['2001:db8:1::5', 3600, 3600],
      ['fd00::5', 3600, 3600],
    ]);
    expect(firstOption(r.msg.options, 'dns-servers')!.servers).toEqual(['2001:db8::53']);
    expect(firstOption(r.msg.options, 'domain-list')!.domains).toEqual(['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local']);
    expect(firstOption(r.msg.options, 'information-refresh-time')).toBeUndefined();
    expect(lease.state).toBe('advertised');
    expect(r.statuses).toEqual([]);
  });

  it('ignores the client\'s hints: ours go out whatever it asked for', () => {
    const r = replyOf(setup().send(message(MSG6.SOLICIT, clientId(), iaNa(1, '2001:db8:ffff::1'))));
    expect(addrs(ias(r.msg)[0]!)).toEqual([['2001:db8:1::5', 3600, 3600]]);
  });

  it('commits at once to a Rapid Commit, unless configured not to', () => {
    const { send, lease } = setup();
    const r = replyOf(send(message(MSG6.SOLICIT, clientId(), iaNa(7), { kind: 'rapid-commit' })));
    expect(r.type).toBe('REPLY');
    expect(firstOption(r.msg.options, 'rapid-commit')).toBeDefined();
    expect(firstOption(r.msg.options, 'preference')).toBeUndefined();
    expect(lease.snapshot(T0)).toMatchObject({ state: 'bound', binds: 1, iaid: 7, expiresAt: T0 + 3600_000 });
    const no = setup(podIdentity(), { rapidCommit: false });
    expect(replyOf(no.send(message(MSG6.SOLICIT, clientId(), iaNa(7), { kind: 'rapid-commit' }))).type).toBe('ADVERTISE');
  });

  it('gives honest statuses to every other IA', () => {
    const r = replyOf(setup().send(message(MSG6.SOLICIT, clientId(), iaPd(1), iaNa(2), iaNa(3), iaTa(4))));
    const [pd, na, na2, ta] = ias(r.msg);
    expect(pd).toMatchObject({ kind: 'ia-pd', iaid: 1, t1: 0, t2: 0 });
    expect(iaStatus(pd!)).toBe(STATUS.NoPrefixAvail);
    expect(addrs(na!)).toEqual([['2001:db8:1::5', 3600, 3600]]);
    expect([iaStatus(na2!), addrs(na2!)]).toEqual([STATUS.NoAddrsAvail, []]);
    expect([ta!.kind, iaStatus(ta!)]).toEqual(['ia-ta', STATUS.NoAddrsAvail]);
    expect(r.statuses).toEqual(['NoPrefixAvail', 'NoAddrsAvail', 'NoAddrsAvail']);
  });

  it('says NoAddrsAvail when there are no IAs, or no addresses', () => {
    expect(topStatus(replyOf(setup().send(message(MSG6.SOLICIT, clientId()))).msg)).toBe(STATUS.NoAddrsAvail);
    const { send, lease } = setup(podIdentity({ addresses: [] }));
    const r = replyOf(send(message(MSG6.SOLICIT, clientId(), iaNa(1), { kind: 'rapid-commit' })));
    expect(iaStatus(ias(r.msg)[0]!)).toBe(STATUS.NoAddrsAvail);
    expect(lease.state).toBe('never');
  });

  it('gives a guest that rebooted with a new DUID and IAID the same addresses', () => {
    const { send, lease } = setup();
    replyOf(send(message(MSG6.SOLICIT, clientId(), iaNa(1), { kind: 'rapid-commit' })));
    const fresh = Buffer.from('0004' + 'aa'.repeat(16), 'hex');
    const r = replyOf(send(message(MSG6.SOLICIT, clientId(fresh), iaNa(99), { kind: 'rapid-commit' })));
    expect(addrs(ias(r.msg)[0]!)).toEqual([['2001:db8:1::5', 3600, 3600]]);
    expect(firstOption(r.msg.options, 'client-id')!.duid).toEqual(fresh);
    expect(lease.snapshot(T0)).toMatchObject({ clientDuid: fresh.toString('hex'), iaid: 99, binds: 2 });
  });

  it('drops a Solicit that names a server, lacks a client id or came by unicast', () => {
    const { send } = setup();
    expect(send(message(MSG6.SOLICIT, clientId(), serverId, iaNa(1)))).toMatchObject({ kind: 'drop', reason: 'unexpected-server-id' });
    expect(send(message(MSG6.SOLICIT, iaNa(1)))).toMatchObject({ kind: 'drop', reason: 'no-client-id' });
    expect(send(message(MSG6.SOLICIT, clientId(), iaNa(1)), { multicast: false })).toMatchObject({ kind: 'drop', reason: 'unicast' });
  });
});

describe('Request (RFC 8415 §18.3.2)', () => {
  it('binds the pod addresses', () => {
    const { send, lease } = setup();
    const r = replyOf(send(message(MSG6.REQUEST, clientId(), serverId, iaNa(5, '2001:db8:1::5')), { now: T0 + 5 }));
    expect(r.type).toBe('REPLY');
    expect(addrs(ias(r.msg)[0]!)).toEqual([['2001:db8:1::5', 3600, 3600]]);
    expect(lease.snapshot(T0 + 5)).toMatchObject({ state: 'bound', since: T0 + 5, boundAt: T0 + 5, expiresAt: T0 + 5 + 3600_000, binds: 1, renewals: 0 });
  });

  it('is not ours to answer when it names another server', () => {
    const o = setup().send(message(MSG6.REQUEST, clientId(), { kind: 'server-id', duid: duidLinkLayer('02:00:00:00:00:99') }, iaNa(1)));
    expect(o).toMatchObject({ kind: 'event', event: 'ignored', request: 'request' });
  });

  it('needs a server id and a client id', () => {
    const { send } = setup();
    expect(send(message(MSG6.REQUEST, clientId(), iaNa(1)))).toMatchObject({ kind: 'drop', reason: 'no-server-id' });
    expect(send(message(MSG6.REQUEST, serverId, iaNa(1)))).toMatchObject({ kind: 'drop', reason: 'no-client-id' });
  });

  it('sends a unicast Request back with UseMulticast and nothing else', () => {
    const { send, lease } = setup();
    const r = replyOf(send(message(MSG6.REQUEST, clientId(), serverId, iaNa(1)), { multicast: false }));
    expect(r.msg.options.map((o) => o.kind)).toEqual(['client-id', 'server-id', 'status']);
    expect(topStatus(r.msg)).toBe(STATUS.UseMulticast);
    expect(lease.state).toBe('never');
  });

  it('says NotOnLink to an address off this link, and ignores one merely not ours', () => {
    const { send, lease } = setup();
    const off = replyOf(send(message(MSG6.REQUEST, clientId(), serverId, iaNa(1, '2001:db8:77::5'))));
    expect([iaStatus(ias(off.msg)[0]!), addrs(ias(off.msg)[0]!)]).toEqual([STATUS.NotOnLink, []]);
    expect(lease.state).toBe('never');
    const on = replyOf(send(message(MSG6.REQUEST, clientId(), serverId, iaNa(1, '2001:db8:1::99'))));
    expect(addrs(ias(on.msg)[0]!)).toEqual([['2001:db8:1::5', 3600, 3600]]);
    // A /128 pod's link is its address: anything else is off it.
    const s128 = setup(podIdentity({ addresses: [{ address: '2001:db8:7::1234', prefixlen: 128 }], onLink: [] }));
    const r = replyOf(s128.send(message(MSG6.REQUEST, clientId(), serverId, iaNa(1, '2001:db8:7::1235'))));
    expect(iaStatus(ias(r.msg)[0]!)).toBe(STATUS.NotOnLink);
  });

  it('puts the addresses in the IA that already holds them, refusing the rest', () => {
    const r = replyOf(setup().send(message(MSG6.REQUEST, clientId(), serverId, iaNa(1), iaNa(2, '2001:db8:1::5'), iaPd(3))));
    const [a, b, c] = ias(r.msg);
    expect([a!.iaid, iaStatus(a!)]).toEqual([1, STATUS.NoAddrsAvail]);
    expect([b!.iaid, addrs(b!)]).toEqual([2, [['2001:db8:1::5', 3600, 3600]]]);
    expect([c!.kind, iaStatus(c!)]).toEqual(['ia-pd', STATUS.NoPrefixAvail]);
  });
});

describe('Renew and Rebind (RFC 8415 §18.3.4-18.3.5)', () => {
  it('renews, counting it, and returns what is not ours with lifetimes 0', () => {
    const { send, lease } = setup();
    replyOf(send(message(MSG6.REQUEST, clientId(), serverId, iaNa(1))));
    const r = replyOf(send(message(MSG6.RENEW, clientId(), serverId, iaNa(1, '2001:db8:1::5', '2001:db8:1::6')), { now: T0 + 1800_000 }));
    expect(addrs(ias(r.msg)[0]!)).toEqual([
      ['2001:db8:1::5', 3600, 3600],
      ['2001:db8:1::6', 0, 0],
    ]);
    expect(lease.snapshot(T0 + 1800_000)).toMatchObject({ state: 'bound', renewals: 1, binds: 2, expiresAt: T0 + 5400_000 });
    const rb = replyOf(send(message(MSG6.REBIND, clientId(), iaNa(1, '2001:db8:1::5')), { now: T0 + 3000_000 }));
    expect(addrs(ias(rb.msg)[0]!)).toEqual([['2001:db8:1::5', 3600, 3600]]);
    expect(lease.renewals).toBe(2);
  });

  it('renews a binding it never made, for a guest that forgot (or rebooted)', () => {
    const { send, lease } = setup();
    const r = replyOf(send(message(MSG6.RENEW, clientId(), serverId, iaNa(42, '2001:db8:1::5'))));
    expect(ias(r.msg)[0]).toMatchObject({ iaid: 42, t1: 1800, t2: 2880 });
    expect(lease.state).toBe('bound');
  });

  it('answers other IAs: NoBinding on Renew, lifetimes 0 on Rebind', () => {
    const { send } = setup();
    const renew = replyOf(send(message(MSG6.RENEW, clientId(), serverId, iaNa(1, '2001:db8:1::5'), iaNa(2, '2001:db8:1::8'), iaPd(3, '2001:db8:5::'))));
    const [, r2, r3] = ias(renew.msg);
    expect([iaStatus(r2!), addrs(r2!)]).toEqual([STATUS.NoBinding, []]);
    expect(iaStatus(r3!)).toBe(STATUS.NoBinding);
    const rebind = replyOf(send(message(MSG6.REBIND, clientId(), iaNa(1, '2001:db8:1::5'), iaNa(2, '2001:db8:1::8'), iaPd(3, '2001:db8:5::'), iaNa(4))));
    const [, b2, b3, b4] = ias(rebind.msg);
    expect([iaStatus(b2!), addrs(b2!)]).toEqual([undefined, [['2001:db8:1::8', 0, 0]]]);
    expect(optionsOf(b3!.options, 'iaprefix')).toMatchObject([{ prefix: '2001:db8:5::', preferred: 0, valid: 0 }]);
    expect(iaStatus(b4!)).toBe(STATUS.NoBinding);
  });

  it('checks identifiers and unicast the RFC way', () => {
    const { send } = setup();
    expect(send(message(MSG6.RENEW, clientId(), iaNa(1)))).toMatchObject({ kind: 'drop', reason: 'no-server-id' });
    expect(send(message(MSG6.REBIND, clientId(), serverId, iaNa(1)))).toMatchObject({ kind: 'drop', reason: 'unexpected-server-id' });
    expect(send(message(MSG6.REBIND, clientId(), iaNa(1)), { multicast: false })).toMatchObject({ kind: 'drop', reason: 'unicast' });
    expect(topStatus(replyOf(send(message(MSG6.RENEW, clientId(), serverId, iaNa(1)), { multicast: false })).msg)).toBe(STATUS.UseMulticast);
  });
});

describe('Confirm (RFC 8415 §18.3.3)', () => {
  it('confirms the pod\'s own addresses and nothing else', () => {
    const { send, lease } = setup();
    const yes = replyOf(send(message(MSG6.CONFIRM, clientId(), iaNa(1, '2001:db8:1::5'))));
    expect(yes.msg.options.map((o) => o.kind)).toEqual(['client-id', 'server-id', 'status']);
    expect(topStatus(yes.msg)).toBe(STATUS.Success);
    // Same subnet, another pod's address: the guest moved; make it start over.
    const moved = replyOf(send(message(MSG6.CONFIRM, clientId(), iaNa(1, '2001:db8:1::5', '2001:db8:1::6'))));
    expect(topStatus(moved.msg)).toBe(STATUS.NotOnLink);
    expect(topStatus(replyOf(send(message(MSG6.CONFIRM, clientId(), iaTa(1, '2001:db8:9::1')))).msg)).toBe(STATUS.NotOnLink);
    expect(lease.state).toBe('never');
  });

  it('stays silent without addresses, and drops what RFC 8415 §16.5 says to', () => {
    const { send } = setup();
    expect(send(message(MSG6.CONFIRM, clientId(), iaNa(1), iaPd(2, '2001:db8:5::')))).toMatchObject({ kind: 'drop', reason: 'confirm-without-addresses' });
    expect(send(message(MSG6.CONFIRM, clientId(), serverId, iaNa(1, '2001:db8:1::5')))).toMatchObject({ kind: 'drop', reason: 'unexpected-server-id' });
    expect(send(message(MSG6.CONFIRM, clientId(), iaNa(1, '2001:db8:1::5')), { multicast: false })).toMatchObject({ kind: 'drop', reason: 'unicast' });
  });
});

describe('Release and Decline (RFC 8415 §18.3.7-18.3.8)', () => {
  it('acknowledges a release and reports it', () => {
    const { send, lease } = setup();
    replyOf(send(message(MSG6.REQUEST, clientId(), serverId, iaNa(1))));
    const r = replyOf(send(message(MSG6.RELEASE, clientId(), serverId, iaNa(1, '2001:db8:1::5'), iaNa(2, '2001:db8:1::7')), { now: T0 + 60_000 }));
    expect(r).toMatchObject({ type: 'REPLY', request: 'release', event: 'release', detail: '2001:db8:1::5' });
    expect(topStatus(r.msg)).toBe(STATUS.Success);
    const [only] = ias(r.msg);
    expect([only!.iaid, iaStatus(only!)]).toEqual([2, STATUS.NoBinding]);
    expect(lease.snapshot(T0 + 60_000)).toMatchObject({ state: 'released', since: T0 + 60_000, addresses: ['2001:db8:1::5'] });
    expect(lease.snapshot(T0 + 60_000).expiresAt).toBeUndefined();
  });

  it('acknowledges a decline and reports the address in conflict', () => {
    const { send, lease } = setup();
    const r = replyOf(send(message(MSG6.DECLINE, clientId(), serverId, iaNa(1, '2001:db8:1::5'))));
    expect(r).toMatchObject({ event: 'decline', detail: '2001:db8:1::5' });
    expect(topStatus(r.msg)).toBe(STATUS.Success);
    expect(lease.state).toBe('declined');
  });

  it('says NoBinding for what was never ours, leaving the lease alone', () => {
    const { send, lease } = setup();
    const r = replyOf(send(message(MSG6.RELEASE, clientId(), serverId, iaTa(1, '2001:db8:1::5'), iaPd(2))));
    expect(ias(r.msg).map(iaStatus)).toEqual([STATUS.NoBinding, STATUS.NoBinding]);
    expect(r.detail).toBe('no address of ours');
    expect(lease.state).toBe('never');
  });

  it('needs our server id and multicast', () => {
    const { send } = setup();
    expect(send(message(MSG6.DECLINE, clientId(), iaNa(1, '2001:db8:1::5')))).toMatchObject({ kind: 'drop', reason: 'no-server-id' });
    expect(send(message(MSG6.RELEASE, clientId(), { kind: 'server-id', duid: Buffer.from('000300010200000000ff', 'hex') }, iaNa(1)))).toMatchObject({ kind: 'event', event: 'ignored' });
    expect(topStatus(replyOf(send(message(MSG6.RELEASE, clientId(), serverId, iaNa(1, '2001:db8:1::5')), { multicast: false })).msg)).toBe(STATUS.UseMulticast);
  });
});

describe('Information-request (RFC 8415 §18.3.6)', () => {
  it('answers DNS and a refresh time, with or without identifiers', () => {
    const { send, lease } = setup();
    const r = replyOf(send(message(MSG6.INFORMATION_REQUEST, clientId(), { kind: 'oro', codes: [23, 24] })));
    expect(r.msg.options.map((o) => o.kind)).toEqual(['client-id', 'server-id', 'dns-servers', 'domain-list', 'information-refresh-time']);
    expect(firstOption(r.msg.options, 'information-refresh-time')!.seconds).toBe(3600);
    const anonymous = replyOf(send(message(MSG6.INFORMATION_REQUEST)));
    expect(anonymous.msg.options.map((o) => o.kind)).toEqual(['server-id', 'dns-servers', 'domain-list', 'information-refresh-time']);
    expect(replyOf(send(message(MSG6.INFORMATION_REQUEST, serverId))).type).toBe('REPLY');
    expect(lease.state).toBe('never');
  });

  it('drops it with an IA, by unicast, or for another server', () => {
    const { send } = setup();
    expect(send(message(MSG6.INFORMATION_REQUEST, clientId(), iaNa(1)))).toMatchObject({ kind: 'drop', reason: 'ia-in-information-request' });
    expect(send(message(MSG6.INFORMATION_REQUEST, clientId()), { multicast: false })).toMatchObject({ kind: 'drop', reason: 'unicast' });
    expect(send(message(MSG6.INFORMATION_REQUEST, { kind: 'server-id', duid: Buffer.from('0003000102000000ffff', 'hex') }))).toMatchObject({ kind: 'event', event: 'ignored' });
  });

  it('leaves DNS out where the NIC carries none', () => {
    const r = replyOf(setup(podIdentity({ dns: undefined })).send(message(MSG6.INFORMATION_REQUEST, clientId())));
    expect(r.msg.options.map((o) => o.kind)).toEqual(['client-id', 'server-id', 'information-refresh-time']);
  });
});

describe('what is dropped before any of that', () => {
  it('drops relays, server messages, unknown types and garbage with a reason', () => {
    const { send } = setup();
    expect(send(Buffer.from('0c00' + '00'.repeat(32), 'hex'))).toMatchObject({ kind: 'drop', reason: 'relayed' });
    expect(send(message(MSG6.ADVERTISE, clientId(), serverId))).toMatchObject({ kind: 'drop', reason: 'not-client-message', detail: 'ADVERTISE' });
    expect(send(message(MSG6.RECONFIGURE, clientId(), serverId))).toMatchObject({ kind: 'drop', reason: 'not-client-message' });
    expect(send(message(200, clientId()))).toMatchObject({ kind: 'drop', reason: 'unsupported-type' });
    expect(send(Buffer.from('01', 'hex'))).toMatchObject({ kind: 'drop', reason: 'malformed:truncated' });
    expect(send(Buffer.from('0100000100010009', 'hex'))).toMatchObject({ kind: 'drop', reason: 'malformed:option-past-end' });
  });

  it('drops messages it could not answer or that identify a client twice', () => {
    const { send } = setup();
    const m = message(MSG6.SOLICIT, clientId(), iaNa(1));
    expect(send(m, { src: '::' })).toMatchObject({ kind: 'drop', reason: 'bad-source' });
    expect(send(m, { src: 'ff02::1' })).toMatchObject({ kind: 'drop', reason: 'bad-source' });
    expect(send(message(MSG6.SOLICIT, clientId(), clientId(), iaNa(1)))).toMatchObject({ kind: 'drop', reason: 'duplicate-option' });
    expect(send(message(MSG6.REQUEST, clientId(), serverId, serverId, iaNa(1)))).toMatchObject({ kind: 'drop', reason: 'duplicate-option' });
    expect(send(message(MSG6.SOLICIT, clientId(Buffer.alloc(131, 1)), iaNa(1)))).toMatchObject({ kind: 'drop', reason: 'bad-client-id' });
    expect(send(message(MSG6.SOLICIT, clientId(Buffer.from([0, 1])), iaNa(1)))).toMatchObject({ kind: 'drop', reason: 'bad-client-id' });
  });
});

describe('reply size', () => {
  it('leaves the search list out rather than exceed one minimum-MTU packet', () => {
    const search = Array.from({ length: 40 }, (_, i) => `namespace-${i}.svc.cluster.local`);
    const { send, warnings } = setup(podIdentity({ dns: { servers: ['2001:db8::53'], search } }));
    expect(warnings).toEqual([]);
    const r = replyOf(send(message(MSG6.SOLICIT, clientId(), iaNa(1))));
    expect(r.trimmed).toEqual([24]);
    expect(r.data.length).toBeLessThanOrEqual(MAX_REPLY);
    expect(firstOption(r.msg.options, 'dns-servers')).toBeDefined();
    expect(addrs(ias(r.msg)[0]!)).toHaveLength(1);
  });

  it('answers at most eight IAs', () => {
    const many = Array.from({ length: 30 }, (_, i) => iaPd(i));
    const r = replyOf(setup().send(message(MSG6.SOLICIT, clientId(), iaNa(100), ...many)));
    expect(ias(r.msg)).toHaveLength(8);
    expect(r.data.length).toBeLessThanOrEqual(MAX_REPLY);
  });
});
