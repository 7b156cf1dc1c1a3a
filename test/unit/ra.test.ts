import { describe, expect, it } from 'vitest';
import { icmp6Frame, parseFrame } from '../../src/serve/frames.ts';
import type { Ipv6Packet } from '../../src/serve/frames.ts';
import { ND } from '../../src/serve/nd/ndp.ts';
import {
  IPV6_MIN_MTU,
  buildRouterAdvertisement,
  parseRouterAdvertisement,
  raConfigFrom,
  routerAdvertisementFrame,
  withdrawal,
} from '../../src/serve/nd/ra.ts';
import type { Ipv6Identity, RaConfig } from '../../src/serve/nd/ra.ts';
import {
  MAX_INITIAL_RTR_ADVERT_INTERVAL,
  MAX_RA_DELAY_TIME,
  MIN_DELAY_BETWEEN_RAS,
  RaScheduler,
} from '../../src/serve/nd/schedule.ts';
import { rng } from '../helpers/dhcp-mutate.ts';
import { podIdentity } from '../helpers/ipv6-identity.ts';

/** A Calico-style pod: a /128, nothing on-link, no default route on this NIC. */
function slash128(over: Partial<Ipv6Identity> = {}): Ipv6Identity {
  return {
    addresses: [{ address: '2001:db8:7::1234', prefixlen: 128 }],
    onLink: [],
    routes: [],
    router: { linkLocal: 'fe80::1' },
    mtu: 1500,
    ...over,
  };
}

// routerAdvertisementFrame(raConfigFrom(podIdentity())) as sent to a Linux
// 6.x guest in a throwaway namespace pair. The guest's kernel took from it:
// "2001:db8:1::/64 dev vg proto kernel", "2001:db8:99::/48 via fe80::1 proto
// ra" (accept_ra_rt_info_max_plen=128), "default via fe80::1 proto ra", an
// IPv6 MTU of 1400, fe80::1 as a router neighbour at 02:00:00:00:00:01, and
// no SLAAC address. tcpdump decoded every option and "icmp6 sum ok".
const KERNEL_ACCEPTED_RA =
  '33330000000102000000000186dd6000000000b03afffe800000000000000000000000000001ff0200000000000000000000000000018600295b00c007080000000000000000010102000000000105010000000005780304408000000708000007080000000020010db8000100000000000000000000180230000000070820010db800990000190300000000070820010db80000000000000000000000531f090000000007080764656661756c740373766307636c7573746572056c6f63616c000373766307636c7573746572056c6f63616c0007636c7573746572056c6f63616c00000000';

function packet(f: Buffer): Ipv6Packet {
  const p = parseFrame(f);
  if (p.kind !== 'ipv6') throw new Error('not IPv6');
  return p;
}

function parsed(c: RaConfig) {
  const r = parseRouterAdvertisement(packet(routerAdvertisementFrame(c, { srcMac: '02:00:00:00:00:01' })));
  if (!r.ok) throw new Error(`RA did not parse: ${JSON.stringify(r)}`);
  return r.ra;
}

describe('raConfigFrom and the RA on the wire', () => {
  it('builds, byte for byte, the RA a Linux guest accepted', () => {
    const { config, warnings } = raConfigFrom(podIdentity());
    expect(warnings).toEqual([]);
    expect(routerAdvertisementFrame(config, { srcMac: '02:00:00:00:00:01' }).toString('hex')).toBe(KERNEL_ACCEPTED_RA);
  });

  it('says M=1, O=1, on-link without autoconfiguration, routes, MTU and DNS', () => {
    const ra = parsed(raConfigFrom(podIdentity()).config);
    expect(ra).toMatchObject({ managed: true, other: true, preference: 'medium', routerLifetime: 1800, curHopLimit: 0, reachableTime: 0, retransTimer: 0 });
    expect(ra.sourceMac).toBe('02:00:00:00:00:01');
    expect(ra.prefixes).toEqual([{ prefix: '2001:db8:1::', prefixlen: 64, onLink: true, autonomous: false, validLifetime: 1800, preferredLifetime: 1800 }]);
    expect(ra.routes).toEqual([{ prefix: '2001:db8:99::', prefixlen: 48, lifetime: 1800, preference: 'medium' }]);
    expect(ra.mtu).toBe(1400);
    expect(ra.rdnss).toEqual([{ servers: ['2001:db8::53'], lifetime: 1800 }]);
    expect(ra.dnssl).toEqual([{ domains: ['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local'], lifetime: 1800 }]);
    expect(ra.unknown).toEqual([]);
  });

  it('gives a /128 pod without a default route nothing but M, O and the MTU', () => {
    const { config, warnings } = raConfigFrom(slash128());
    expect(warnings).toEqual([]);
    // RFC 4861 §4.2 by hand: hop limit 0, M|O, lifetime 0, reachable 0,
    // retrans 0; then the MTU option (type 5, one unit, reserved, 1500).
    expect(buildRouterAdvertisement(config).toString('hex')).toBe('00c00000' + '00000000' + '00000000' + '0501' + '0000' + '000005dc');
    const ra = parsed(config);
    expect(ra.prefixes).toEqual([]);
    expect(ra.routes).toEqual([]);
    expect(ra.routerLifetime).toBe(0);
    expect(ra.sourceMac).toBeUndefined();
  });

  it('has a router lifetime only on the NIC with the default route', () => {
    expect(raConfigFrom(podIdentity({ defaultRoute: undefined })).config.routerLifetime).toBe(0);
    expect(raConfigFrom(slash128({ defaultRoute: {} })).config.routerLifetime).toBe(1800);
    // RFC 4191 §2.2: preference bits are 00 whenever the lifetime is 0.
    const c = raConfigFrom(podIdentity({ defaultRoute: undefined })).config;
    c.preference = 'high';
    expect(buildRouterAdvertisement(c)[1]).toBe(0xc0);
    c.routerLifetime = 600;
    expect(buildRouterAdvertisement(c)[1]).toBe(0xc8);
  });

  it('keeps lifetimes a few intervals long, whatever the interval', () => {
    const { config } = raConfigFrom(podIdentity(), { maxInterval: 30 });
    expect([config.maxInterval, config.minInterval, config.routerLifetime]).toEqual([30, 10, 90]);
    expect(config.prefixes[0]!.validLifetime).toBe(90);
    expect(config.routes[0]!.lifetime).toBe(90);
    expect(config.rdnss!.lifetime).toBe(90);
    // AdvDefaultLifetime caps at 9000 s (RFC 4861 §6.2.1).
    expect(raConfigFrom(podIdentity(), { maxInterval: 1800 }).config.routerLifetime).toBe(5400);
    for (const bad of [{ maxInterval: 3 }, { maxInterval: 1801 }, { maxInterval: 600, minInterval: 451 }, { maxInterval: 600, minInterval: 2 }]) {
      expect(() => raConfigFrom(podIdentity(), bad)).toThrow(/RtrAdvInterval/);
    }
  });

  it('lowers the MTU to the smallest route MTU there is', () => {
    const id = podIdentity({ mtu: 9000, routes: [{ prefix: '2001:db8:99::', prefixlen: 48, mtu: 1450 }, { prefix: '2001:db8:98::', prefixlen: 48 }], defaultRoute: { mtu: 8000 } });
    expect(raConfigFrom(id).config.mtu).toBe(1450);
    expect(raConfigFrom({ ...id, defaultRoute: { mtu: 1300 } }).config.mtu).toBe(1300);
    expect(raConfigFrom({ ...id, routes: [] }).config.mtu).toBe(8000);
    expect(raConfigFrom({ ...id, routes: [], defaultRoute: {} }).config.mtu).toBe(9000);
    const low = raConfigFrom({ ...id, routes: [{ prefix: '2001:db8:99::', prefixlen: 48, mtu: 1200 }] });
    expect(low.config.mtu).toBeUndefined();
    expect(low.warnings.join()).toMatch(/MTU 1200 is below/);
    expect(parsed(low.config).mtu).toBeUndefined();
  });

  it('sends only IPv6 nameservers, and DNS only where the NIC carries it', () => {
    const v4only = raConfigFrom(podIdentity({ dns: { servers: ['10.96.0.10'], search: ['cluster.local'] } })).config;
    expect(v4only.rdnss).toBeUndefined();
    expect(parsed(v4only).rdnss).toEqual([]);
    // A search list with no IPv6 resolver to use it is not sent either.
    expect(parsed(v4only).dnssl).toEqual([]);
    const mixed = raConfigFrom(podIdentity({ dns: { servers: ['10.96.0.10', 'FD00:0::A', '2001:db8::53'], search: [] } })).config;
    expect(mixed.rdnss!.servers).toEqual(['fd00::a', '2001:db8::53']);
    expect(mixed.dnssl).toBeUndefined();
    const none = parsed(raConfigFrom(podIdentity({ dns: undefined })).config);
    expect([none.rdnss, none.dnssl]).toEqual([[], []]);
    const bad = raConfigFrom(podIdentity({ dns: { servers: ['2001:db8::53'], search: ['ok.example', 'not ok', 'also.ok.'] } }));
    expect(bad.config.dnssl!.domains).toEqual(['ok.example', 'also.ok']);
    expect(bad.warnings.join()).toMatch(/"not ok" cannot be encoded/);
  });

  it('lays out route information at the length each prefix needs (RFC 4191 §2.3)', () => {
    const { config, warnings } = raConfigFrom(
      podIdentity({
        onLink: [],
        dns: undefined,
        router: { linkLocal: 'fe80::1' },
        routes: [
          { prefix: '2001:db8:99::1', prefixlen: 48 },
          { prefix: '2001:db8:1:2:3:4::', prefixlen: 96 },
          { prefix: '2001:db8:5::', prefixlen: 64 },
          { prefix: '::', prefixlen: 0 },
          { prefix: 'fe80::', prefixlen: 64 },
        ],
      }),
    );
    expect(warnings.join('\n')).toMatch(/::\/0 is a default route/);
    expect(warnings.join('\n')).toMatch(/fe80::\/64 is not advertised/);
    const body = buildRouterAdvertisement(config).subarray(12 + 8); // fixed part and MTU option
    expect(body.toString('hex')).toBe(
      // /48, host bits cleared: 2 units, 8 prefix bytes
      '1802' + '30' + '00' + '00000708' + '20010db800990000' +
        // /96: 3 units, 16 prefix bytes
        '1803' + '60' + '00' + '00000708' + '20010db800010002' + '0003000400000000' +
        // /64: 2 units
        '1802' + '40' + '00' + '00000708' + '20010db800050000',
    );
    expect(parsed(config).routes.map((r) => `${r.prefix}/${r.prefixlen}`)).toEqual(['2001:db8:99::/48', '2001:db8:1:2:3:4::/96', '2001:db8:5::/64']);
  });

  it('keeps the best of duplicate routes and leaves out what is already on-link', () => {
    const { config } = raConfigFrom(
      podIdentity({
        routes: [
          { prefix: '2001:db8:99::', prefixlen: 48, metric: 300, mtu: 1300 },
          { prefix: '2001:db8:99::', prefixlen: 48, metric: 100 },
          { prefix: '2001:db8:1::', prefixlen: 64 },
        ],
      }),
    );
    expect(config.routes.map((r) => r.prefix)).toEqual(['2001:db8:99::']);
    expect(config.prefixes.map((p) => p.prefix)).toEqual(['2001:db8:1::']);
  });

  it('advertises no link-local or multicast prefix as on-link', () => {
    const { config, warnings } = raConfigFrom(podIdentity({ onLink: [{ prefix: 'fe80::', prefixlen: 64 }, { prefix: '2001:db8:1::9', prefixlen: 64 }, { prefix: '2001:db8:1::', prefixlen: 64 }] }));
    expect(config.prefixes.map((p) => `${p.prefix}/${p.prefixlen}`)).toEqual(['2001:db8:1::/64']);
    expect(warnings).toHaveLength(1);
  });

  it('fits one RA in the link, dropping the routes that do not fit', () => {
    const routes = Array.from({ length: 100 }, (_, i) => ({ prefix: `2001:db8:${(i + 0x100).toString(16)}::`, prefixlen: 48 }));
    const { config, warnings } = raConfigFrom(podIdentity({ routes }));
    const frame = routerAdvertisementFrame(config, { srcMac: '02:00:00:00:00:01' });
    expect(frame.length - 14).toBeLessThanOrEqual(IPV6_MIN_MTU);
    expect(config.routes.length).toBeGreaterThan(30);
    expect(config.routes.length).toBeLessThan(100);
    expect(warnings.filter((w) => /does not fit/.test(w))).toHaveLength(100 - config.routes.length);
  });

  it('refuses an identity it cannot advertise from', () => {
    expect(() => raConfigFrom(podIdentity({ router: { linkLocal: '2001:db8::1' } }))).toThrow(/not link-local/);
    expect(() => raConfigFrom(podIdentity({ onLink: [{ prefix: 'nope', prefixlen: 64 }] }))).toThrow(/on-link prefix/);
    expect(() => raConfigFrom(podIdentity({ routes: [{ prefix: '2001:db8::', prefixlen: 129 }] }))).toThrow(/route/);
  });

  it('withdraws everything with lifetimes 0', () => {
    const ra = parsed(withdrawal(raConfigFrom(podIdentity()).config));
    expect(ra.routerLifetime).toBe(0);
    expect(ra.prefixes.every((p) => p.validLifetime === 0 && p.preferredLifetime === 0)).toBe(true);
    expect(ra.routes.every((r) => r.lifetime === 0)).toBe(true);
    expect([ra.rdnss[0]!.lifetime, ra.dnssl[0]!.lifetime]).toEqual([0, 0]);
  });

  it('can answer a solicitation by unicast', () => {
    const p = packet(routerAdvertisementFrame(raConfigFrom(slash128()).config, { srcMac: '02:00:00:00:00:01', to: { ip: 'fe80::5054:ff:fe12:3456', mac: '52:54:00:12:34:56' } }));
    expect([p.dst, p.eth.dst, p.src, p.hopLimit]).toEqual(['fe80::5054:ff:fe12:3456', '52:54:00:12:34:56', 'fe80::1', 255]);
  });
});

describe('parseRouterAdvertisement validity (RFC 4861 §6.1.2)', () => {
  const body = buildRouterAdvertisement(raConfigFrom(podIdentity()).config);
  const ra = (o: { src?: string; hopLimit?: number; code?: number; body?: Buffer }) =>
    packet(icmp6Frame({ srcMac: '02:00:00:00:00:01', dstMac: '33:33:00:00:00:01', src: o.src ?? 'fe80::1', dst: 'ff02::1', hopLimit: o.hopLimit ?? 255, type: ND.ROUTER_ADVERTISEMENT, code: o.code ?? 0, body: o.body ?? body }));

  it('refuses each invalid form', () => {
    expect(parseRouterAdvertisement(ra({}))).toMatchObject({ ok: true });
    expect(parseRouterAdvertisement(ra({ src: '2001:db8::1' }))).toMatchObject({ ok: false, reason: 'source-not-link-local' });
    expect(parseRouterAdvertisement(ra({ hopLimit: 64 }))).toMatchObject({ ok: false, reason: 'bad-hop-limit' });
    expect(parseRouterAdvertisement(ra({ code: 1 }))).toMatchObject({ ok: false, reason: 'bad-code' });
    expect(parseRouterAdvertisement(ra({ body: body.subarray(0, 11) }))).toMatchObject({ ok: false, reason: 'too-short' });
    expect(parseRouterAdvertisement(ra({ body: Buffer.concat([body, Buffer.from([3, 0])]) }))).toMatchObject({ ok: false, reason: 'bad-option' });
    // A prefix option of the wrong size, an MTU option too long, a route option too short for /96.
    const shortPrefix = Buffer.alloc(24);
    shortPrefix[0] = 3; // prefix information in 3 units instead of 4
    shortPrefix[1] = 3;
    expect(parseRouterAdvertisement(ra({ body: Buffer.concat([body.subarray(0, 12), shortPrefix]) }))).toMatchObject({ ok: false, reason: 'bad-option' });
    expect(parseRouterAdvertisement(ra({ body: Buffer.concat([body.subarray(0, 12), Buffer.from('05020000000005dc0000000000000000', 'hex')]) }))).toMatchObject({ ok: false, reason: 'bad-option' });
    expect(parseRouterAdvertisement(ra({ body: Buffer.concat([body.subarray(0, 12), Buffer.from('180260000000070820010db800010002', 'hex')]) }))).toMatchObject({ ok: false, reason: 'bad-option' });
    const badSum = routerAdvertisementFrame(raConfigFrom(podIdentity()).config, { srcMac: '02:00:00:00:00:01' });
    badSum[badSum.length - 1] = badSum[badSum.length - 1]! ^ 1;
    expect(parseRouterAdvertisement(packet(badSum))).toMatchObject({ ok: false, reason: 'bad-checksum' });
  });

  it('ignores unknown options and route options with the reserved preference', () => {
    const extra = Buffer.concat([body.subarray(0, 12), Buffer.from('fe01000000000000', 'hex'), Buffer.from('180230100000070820010db800990000', 'hex')]);
    const r = parseRouterAdvertisement(ra({ body: extra }));
    expect(r.ok && r.ra.unknown).toEqual([254]);
    expect(r.ok && r.ra.routes).toEqual([]);
  });
});

describe('RaScheduler (RFC 4861 §6.2.4-6.2.6)', () => {
  const T0 = 1_000_000;
  const fixed = (x: number) => () => x;

  it('sends at once, then the first three at most 16 s apart, then every 200-600 s', () => {
    const s = new RaScheduler({ maxInterval: 600, minInterval: 200, random: fixed(0.999) });
    expect(s.nextAt()).toBe(Infinity);
    expect(s.poll(T0)).toBe(false);
    s.start(T0);
    expect(s.poll(T0)).toBe(true);
    expect(s.nextAt() - T0).toBe(MAX_INITIAL_RTR_ADVERT_INTERVAL);
    expect(s.poll(T0 + 15_999)).toBe(false);
    expect(s.poll(T0 + 16_000)).toBe(true);
    expect(s.nextAt() - (T0 + 16_000)).toBe(MAX_INITIAL_RTR_ADVERT_INTERVAL);
    expect(s.poll(T0 + 32_000)).toBe(true);
    expect(s.sent).toBe(3);
    const gap = s.nextAt() - (T0 + 32_000);
    expect(gap).toBeGreaterThan(599_000);
    expect(gap).toBeLessThanOrEqual(600_000);
    const low = new RaScheduler({ maxInterval: 600, minInterval: 200, random: fixed(0) });
    low.start(T0);
    low.poll(T0);
    low.poll(low.nextAt());
    const at = low.nextAt();
    low.poll(at);
    expect(low.nextAt() - at).toBe(200_000);
  });

  it('answers a solicitation within MAX_RA_DELAY_TIME when nothing went out lately', () => {
    const s = new RaScheduler({ maxInterval: 600, minInterval: 200, random: fixed(0.5) });
    s.start(T0);
    s.poll(T0);
    s.poll(s.nextAt());
    s.poll(s.nextAt());
    const now = s.nextAt() - 100_000;
    expect(s.solicited(now)).toBe(now + 0.5 * MAX_RA_DELAY_TIME);
    expect(s.delay(now)).toBe(250);
    // A second solicitation before the answer goes is covered by it.
    expect(s.solicited(now + 10)).toBe(now + 250);
    expect(s.poll(now + 250)).toBe(true);
  });

  it('never sends multicast RAs closer than MIN_DELAY_BETWEEN_RAS', () => {
    const s = new RaScheduler({ maxInterval: 600, minInterval: 200, random: fixed(0.2) });
    s.start(T0);
    s.poll(T0);
    expect(s.solicited(T0 + 1000)).toBe(T0 + MIN_DELAY_BETWEEN_RAS + 0.2 * MAX_RA_DELAY_TIME);
  });

  it('does not postpone an RA that is due sooner than the answer', () => {
    const s = new RaScheduler({ maxInterval: 600, minInterval: 200, random: fixed(0.9) });
    s.start(T0);
    expect(s.solicited(T0 - 100)).toBe(T0);
    s.poll(T0);
    const next = s.nextAt(); // 16 s later
    expect(s.solicited(next - 100)).toBe(next);
  });

  it('stops', () => {
    const s = new RaScheduler({ maxInterval: 600, minInterval: 200 });
    s.start(T0);
    s.stop();
    expect(s.nextAt()).toBe(Infinity);
    expect(s.solicited(T0)).toBe(Infinity);
    expect(s.poll(T0 + 1e9)).toBe(false);
  });

  it('keeps every rule through a long, seeded run with solicitation storms', () => {
    const r = rng(0x5eed6);
    const s = new RaScheduler({ maxInterval: 600, minInterval: 200, random: r.next });
    s.start(T0);
    const sent: number[] = [];
    let now = T0;
    const end = T0 + 6 * 3600_000;
    while (now < end) {
      // The server's loop: wake at the due time or at the next solicitation.
      const rsAt = now + (r.next() < 0.5 ? r.int(2000) : r.int(900_000));
      while (s.nextAt() <= rsAt) {
        const at = s.nextAt();
        expect(s.poll(at)).toBe(true);
        sent.push(at);
      }
      now = rsAt;
      const answerAt = s.solicited(now);
      expect(answerAt).toBeLessThanOrEqual(Math.max(now, sent[sent.length - 1]! + MIN_DELAY_BETWEEN_RAS) + MAX_RA_DELAY_TIME);
    }
    for (let i = 1; i < sent.length; i++) {
      const gap = sent[i]! - sent[i - 1]!;
      expect(gap).toBeGreaterThanOrEqual(MIN_DELAY_BETWEEN_RAS);
      expect(gap).toBeLessThanOrEqual(i < 3 ? MAX_INITIAL_RTR_ADVERT_INTERVAL : 600_000);
    }
    expect(sent.length).toBeGreaterThan(100);
  });

  it('refuses intervals RFC 4861 does not allow', () => {
    expect(() => new RaScheduler({ maxInterval: 3, minInterval: 3 })).toThrow();
    expect(() => new RaScheduler({ maxInterval: 600, minInterval: 500 })).toThrow();
  });
});
