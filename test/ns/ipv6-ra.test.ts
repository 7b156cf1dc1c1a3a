// Router advertisements as the guest receives them, taken off the wire in
// the guest namespace and parsed as a host would (src/serve/nd/ra.ts
// parseRouterAdvertisement: RFC 4861 §6.1.2 validity, then every option):
//
// - M=1 and O=1 (addresses and DNS come from DHCPv6), and no prefix with
//   A=1 (SLAAC would invent addresses the pod does not own). The prefixes
//   are exactly the pod's on-link ones, L=1: none for a ptp or Calico pod,
//   never a /128 (an on-link /128 to a ptp gateway, advertised, made dhcpcd
//   take the gateway's own address).
// - A router lifetime on the NIC that carries the pod's default route and 0
//   on another (a two-NIC pod, pods6.ts dualnic), whose RA still carries
//   its on-link prefix and its routes (RFC 4191).
// - The MTU option: the pod interface's MTU, lowered to a route's MTU when
//   the pod's route has one.
// - RDNSS with the pod's IPv6 nameservers and DNSSL with its search list,
//   on the primary NIC only, and only when the pod has an IPv6 nameserver;
//   the same rule for DHCPv6 options 23 and 24.
// - The source: podtap's fe80::1 with the gateway's MAC as its link-layer
//   address, or Calico's link-local gateway.
// - A router solicitation is answered within about a second.
// - On SIGTERM podtap sends a last RA with every lifetime 0, which a guest
//   whose VMM outlives podtap (`up --fd-socket` + `exec`) receives.

import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { Cleanup, createNetns, killPid, processStartTime, setNetnsEtcFile, startInPod } from '../helpers/netns.ts';
import { TAP_GUEST, buildTools, pktSend, startGuestNs, startRecv, type GuestNs } from '../helpers/guest-ns.ts';
import { startCapture } from '../helpers/capture.ts';
import { PODTAP, startPodtap } from '../helpers/podtap.ts';
import { diffSnapshots, snapshot, waitSettled } from '../helpers/snapshot.ts';
import { type Datapath } from '../helpers/pods.ts';
import {
  CALICO_MAC,
  PODTAP_ROUTER,
  icmp6Match,
  makePod6,
  parseHexFrames,
  podtapStatus,
  routerAdvertisements,
  waitStatus,
  type Nic6,
  type Pod6,
  type Shape6,
} from '../helpers/pods6.ts';
import { eui64LinkLocal, icmp6Frame, ipv6MulticastMac, udp6Frame } from '../../src/serve/frames.ts';
import { ALL_ROUTERS, ND, ND_HOP_LIMIT, buildRouterSolicitation } from '../../src/serve/nd/ndp.ts';
import type { ParsedRouterAdvertisement } from '../../src/serve/nd/ra.ts';
import { ALL_DHCP_RELAY_AGENTS_AND_SERVERS, CLIENT_PORT, MSG6, SERVER_PORT, decodeMessage, encodeMessage } from '../../src/serve/dhcp6/codec.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

/** The guest's router solicitation, as a kernel sends it: from its link-local address, with its MAC. */
function routerSolicitation(mac: string): string {
  return icmp6Frame({
    srcMac: mac,
    dstMac: ipv6MulticastMac(ALL_ROUTERS),
    src: eui64LinkLocal(mac),
    dst: ALL_ROUTERS,
    hopLimit: ND_HOP_LIMIT,
    type: ND.ROUTER_SOLICITATION,
    code: 0,
    body: buildRouterSolicitation(mac),
  }).toString('hex');
}

/** hh:mm:ss.micro of a tcpdump line, in ms since midnight. */
function stamp(line: string): number {
  const m = /^(\d\d):(\d\d):(\d\d\.\d+) /.exec(line);
  if (!m) throw new Error(`no time stamp: ${line}`);
  return (Number(m[1]) * 3600 + Number(m[2]) * 60 + Number(m[3])) * 1000;
}

/**
 * RAs arriving on one guest link (pkt recv, for their bytes), and a tcpdump
 * there for the time between a router solicitation and the RA after it.
 */
async function watchRas(g: GuestNs, ifname: string, c: Cleanup) {
  const recv = await startRecv(g.ns, c, { ifname, match: icmp6Match(ND.ROUTER_ADVERTISEMENT), timeoutMs: 120_000 });
  // ip6[40]: the ICMPv6 type, for RS and RA carry no extension header.
  const cap = await startCapture(g.ns, ifname, c, ['icmp6', 'and', '(ip6[40] == 133 or ip6[40] == 134)']);
  const seen: { at: number; ra: ParsedRouterAdvertisement; src: string; dst: string; ethSrc: string }[] = [];
  const poll = () => {
    const frames = recv.frames();
    for (const { frame, ra } of routerAdvertisements(parseHexFrames(frames.slice(seen.length)))) seen.push({ at: Date.now(), ra, src: frame.src, dst: frame.dst, ethSrc: frame.eth.src });
  };
  return {
    seen: () => (poll(), seen),
    /**
     * Waits until no RA has come for `quietMs` (podtap may send a multicast
     * RA no more often than every 3 s, RFC 4861 §6.2.6), then sends an RS;
     * resolves with the RA that follows and the time from the RS to it on
     * the guest's link.
     */
    async solicit(mac: string, quietMs = 3500): Promise<{ ms: number; ra: ParsedRouterAdvertisement }> {
      // The guest's kernel solicited at link-up: its answer comes first.
      for (const end = Date.now() + 10_000; !seen.length; await sleep(50)) {
        if (Date.now() > end) throw new Error('no router advertisement within 10 s of the guest coming up');
        poll();
      }
      while (Date.now() - seen.at(-1)!.at < quietMs) {
        await sleep(100);
        poll();
      }
      const n = seen.length;
      const t0 = Date.now();
      await g.run(pktSend(ifname, routerSolicitation(mac)));
      while (seen.length === n) {
        if (Date.now() - t0 > 5000) throw new Error('no answer to a router solicitation within 5 s');
        await sleep(10);
        poll();
      }
      const lines = await cap.stop();
      const rs = lines.findLast((l) => / router solicitation/.test(l) && l.includes(eui64LinkLocal(mac)));
      const after = rs ? lines.slice(lines.indexOf(rs)).find((l) => / router advertisement/.test(l)) : undefined;
      if (!rs || !after) throw new Error(`the capture missed the RS or the RA after it:\n${lines.join('\n')}`);
      return { ms: stamp(after) - stamp(rs), ra: seen[n]!.ra };
    },
    stop: () => recv.stop(),
  };
}

/** What the RA on this NIC must say. */
function checkRa(ra: ParsedRouterAdvertisement, nic: Nic6, pod: Pod6, label: string): void {
  const v6Dns = pod.resolvConf.nameservers.filter((n) => n.includes(':'));
  expect({ managed: ra.managed, other: ra.other }, label).toEqual({ managed: true, other: true });
  expect(ra.prefixes.filter((p) => p.autonomous), `${label}: prefixes for SLAAC`).toEqual([]);
  expect(ra.prefixes.map((p) => `${p.prefix}/${p.prefixlen} L=${p.onLink}`), `${label}: prefixes`).toEqual(nic.onLink.map((p) => `${p} L=true`));
  expect(ra.prefixes.filter((p) => p.prefixlen === 128), `${label}: a /128 prefix`).toEqual([]);
  if (nic.defaultRoute) expect(ra.routerLifetime, `${label}: router lifetime`).toBeGreaterThan(0);
  else expect(ra.routerLifetime, `${label}: router lifetime on a NIC without the default route`).toBe(0);
  expect(ra.routes.map((r) => `${r.prefix}/${r.prefixlen}`).sort(), `${label}: route information`).toEqual(nic.routes.map((r) => r.dst).sort());
  expect(ra.routes.every((r) => r.lifetime > 0)).toBe(true);
  expect(ra.mtu, `${label}: MTU`).toBe(Math.min(nic.mtu, ...nic.routes.map((r) => r.mtu ?? Infinity)));
  const dns = nic.defaultRoute && v6Dns.length > 0;
  expect(ra.rdnss.map((x) => x.servers), `${label}: RDNSS`).toEqual(dns ? [v6Dns] : []);
  expect(ra.dnssl.map((x) => x.domains), `${label}: DNSSL`).toEqual(dns ? [pod.resolvConf.search] : []);
  if (nic.router === PODTAP_ROUTER) expect(ra.sourceMac, `${label}: the router's link-layer address`).toBe(nic.routerMac);
  else if (ra.sourceMac !== undefined) expect(ra.sourceMac).toBe(CALICO_MAC);
}

const CASES: [Shape6, Datapath][] = [
  ['dualstack', 'redirect'],
  ['bridge6', 'bridge'],
  ['calico6', 'bridge'],
  ['ptp6only', 'redirect'],
];

describe.concurrent('router advertisements on the wire', () => {
  for (const [shape, datapath] of CASES) {
    it(`${shape} pod, ${datapath} data path: flags, prefixes, lifetime, MTU, DNS; an RS is answered within a second`, () =>
      cleanup.scope('case', async (c) => {
        const pod = await makePod6(shape, { cleanup: c });
        const nic = pod.nics[0]!;
        const g = await startGuestNs(pod.asPod, { cleanup: c, podtapArgs: ['--datapath', datapath] });
        const ras = await watchRas(g, 'eth0', c);
        await waitSettled(g.ns);
        const { ms, ra } = await ras.solicit(nic.mac);
        expect(ms, 'RS to RA').toBeLessThan(1000);
        checkRa(ra, nic, pod, shape);
        for (const s of ras.seen()) {
          expect({ src: s.src, dst: s.dst }).toEqual({ src: nic.router, dst: 'ff02::1' });
          checkRa(s.ra, nic, pod, `${shape}, every RA`);
        }
        const st = await podtapStatus(pod, g.podtap.stateDir);
        expect(st.nics[0].ra.solicited).toBeGreaterThanOrEqual(1);
        expect((await g.stop()).exitCode).toBe(0);
      }));
  }

  it('two NICs (dualnic): router lifetime 0 where the pod has no default route, its prefix and routes, the route\'s lower MTU, no DNS there', () =>
    cleanup.scope('case', async (c) => {
      const pod = await makePod6('dualnic', { cleanup: c });
      const before = await snapshot(pod.pod);
      const g = await startGuestNs(pod.asPod, {
        cleanup: c,
        podtapArgs: ['--interface', 'eth0', '--interface', 'net1'],
        nics: [
          { fds: '{fds:0}', ifname: 'eth0', mac: '{mac:0}', mtu: '{mtu:0}' },
          { fds: '{fds:1}', ifname: 'net1', mac: '{mac:1}', mtu: '{mtu:1}' },
        ],
      });
      const watch = await Promise.all(pod.nics.map((n) => watchRas(g, n.ifname, c)));
      await waitSettled(g.ns);
      for (const [i, n] of pod.nics.entries()) {
        const { ms, ra } = await watch[i]!.solicit(n.mac);
        expect(ms).toBeLessThan(1000);
        checkRa(ra, n, pod, n.ifname);
      }
      const st = await waitStatus(pod, g.podtap.stateDir, (d) => d.nics.every((n: Record<string, any>) => n.ra?.sent >= 1), 5000, 'RAs on both NICs');
      expect(st.nics.map((n: Record<string, any>) => n.ra.gatewayMac)).toEqual(pod.nics.map((n) => n.routerMac));
      // The guest's kernel, which takes these RAs: one default route, through eth0.
      const dflt = JSON.parse((await g.run(['ip', '-6', '-j', 'route', 'show', 'default'])).stdout) as Record<string, any>[];
      expect(dflt.map((r) => `${r.gateway} ${r.dev}`)).toEqual([`${PODTAP_ROUTER} eth0`]);
      expect((await g.stop()).exitCode).toBe(0);
      expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
    }));

  it('no IPv6 nameserver in the pod: no RDNSS, no DNSSL, and no DHCPv6 options 23 and 24', () =>
    cleanup.scope('case', async (c) => {
      const resolv = { nameservers: ['10.96.0.10'], search: ['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local'], options: ['ndots:5'] };
      const pod = await makePod6('dualstack', { cleanup: c, resolv });
      const nic = pod.nics[0]!;
      const g = await startGuestNs(pod.asPod, { cleanup: c });
      const ras = await watchRas(g, 'eth0', c);
      await waitSettled(g.ns);
      const { ra } = await ras.solicit(nic.mac);
      checkRa(ra, nic, pod, 'v4 nameservers only');
      expect(ra.rdnss).toEqual([]);
      expect(ra.dnssl).toEqual([]);
      // A DHCPv6 Information-request asks for both options; the Reply has neither.
      const recv = await startRecv(g.ns, c, { ifname: 'eth0', match: ['86dd@12', '11@20', `${CLIENT_PORT.toString(16).padStart(4, '0')}@56`], count: 1, timeoutMs: 5000 });
      const req = encodeMessage({ type: MSG6.INFORMATION_REQUEST, xid: 0x123456, options: [{ kind: 'oro', codes: [23, 24] }] });
      const frame = udp6Frame({ srcMac: nic.mac, dstMac: ipv6MulticastMac(ALL_DHCP_RELAY_AGENTS_AND_SERVERS), src: eui64LinkLocal(nic.mac), dst: ALL_DHCP_RELAY_AGENTS_AND_SERVERS, srcPort: CLIENT_PORT, dstPort: SERVER_PORT, payload: req, hopLimit: 1 });
      await g.run(pktSend('eth0', frame.toString('hex')));
      const [reply] = parseHexFrames(await recv.done);
      if (reply?.kind !== 'ipv6' || !reply.udp) throw new Error('no DHCPv6 reply');
      const m = decodeMessage(reply.udp.payload);
      if (!m.ok) throw new Error(`undecodable reply: ${m.error.reason}`);
      expect(m.message.type).toBe(MSG6.REPLY);
      expect(m.message.options.map((o) => o.kind)).not.toContain('dns-servers');
      expect(m.message.options.map((o) => o.kind)).not.toContain('domain-list');
      expect((await g.stop()).exitCode).toBe(0);
    }));

  it('SIGTERM: a last RA with every lifetime 0 reaches a guest whose VMM outlives podtap', () =>
    cleanup.scope('case', async (c) => {
      await buildTools();
      const pod = await makePod6('bridge6', { cleanup: c });
      const nic = pod.nics[0]!;
      const before = await snapshot(pod.pod);
      const dir = await mkdtemp('/run/podtap-test-ra-');
      c.path(dir);
      const sock = join(dir, 'fds.sock');
      const up = startPodtap(pod.asPod, ['up', '--fd-socket', sock], c);
      await up.ready;
      const ns = await createNetns({ prefix: 'ptg-', cleanup: c });
      await setNetnsEtcFile(ns, 'resolv.conf', '');
      const vmm = startInPod(pod.pod, pod.hostname, [PODTAP, 'exec', '--fd-socket', sock, '--', TAP_GUEST, '--netns', ns, '--nic', 'fds={fds},ifname=eth0,mac={mac},mtu={mtu}'], c);
      const vmmStart = processStartTime(vmm.pid!);
      let vmmOut = '';
      vmm.stdout?.on('data', (d: Buffer) => (vmmOut += d.toString()));
      for (let i = 0; !/^ready$/m.test(vmmOut); i++) {
        if (i > 200) throw new Error(`tap-guest not ready: ${vmmOut}`);
        await sleep(50);
      }
      const recv = await startRecv(ns, c, { ifname: 'eth0', match: icmp6Match(ND.ROUTER_ADVERTISEMENT), timeoutMs: 60_000 });
      await waitStatus(pod, up.stateDir, (d) => d.nics[0].ra.sent >= 1, 5000, 'a router advertisement');
      up.proc.kill('SIGTERM');
      expect((await up.proc).exitCode, up.stderr()).toBe(0);
      // podtap deleted the tap on its way out: tap-guest has ended, and the
      // guest's link with it (which ends pkt recv too).
      expect((await vmm).exitCode).toBe(0);
      await killPid(vmm.pid!, vmmStart);
      const all = routerAdvertisements(parseHexFrames(recv.frames()));
      await recv.stop().catch(() => {});
      const last = all.at(-1)?.ra;
      expect(last, 'no RA at all').toBeDefined();
      expect(last!.routerLifetime).toBe(0);
      expect(last!.prefixes.map((p) => [`${p.prefix}/${p.prefixlen}`, p.validLifetime, p.preferredLifetime])).toEqual(nic.onLink.map((p) => [p, 0, 0]));
      expect(last!.rdnss.map((x) => x.lifetime)).toEqual([0]);
      expect(last!.dnssl.map((x) => x.lifetime)).toEqual([0]);
      expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
    }));
});
