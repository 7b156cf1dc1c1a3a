// The router's MAC. Where the pod's IPv6 gateway is a global address (CNI
// ptp here), podtap advertises fe80::1 and answers the guest's neighbour
// solicitations for it with the gateway's MAC, so the guest's off-link
// traffic goes to the pod's own next hop. That MAC comes from the pod's
// neighbour table when it knows the gateway (podtap then asks nobody), else
// from one neighbour solicitation podtap sends out of the pod interface,
// exactly as the pod would have; `podtap status` shows what it learned. A
// gateway that never answers gets a warning and no router advertisement at
// all: the guest (its kernel handles RAs here) gets no default route rather
// than one through a router that answers for nobody, and gets it as soon as
// the gateway answers. Each case also checks podtap's neighbour
// advertisement on the wire and that the guest's solicitations for fe80::1
// never reach the node.

import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { Cleanup, run } from '../helpers/netns.ts';
import { pktSend, startGuestNs, startRecv, type GuestNs } from '../helpers/guest-ns.ts';
import { diffSnapshots, snapshot, waitSettled } from '../helpers/snapshot.ts';
import {
  PODTAP_ROUTER,
  gatewaySolicitation,
  icmp6Match,
  makePod6,
  nodeSideViolations,
  parseHexFrames,
  podtapStatus,
  routerAdvertisements,
  waitStatus,
  type Nic6,
  type Pod6,
} from '../helpers/pods6.ts';
import { eui64LinkLocal } from '../../src/serve/frames.ts';
import { ND, neighborSolicitationFrame, parseNeighborAdvertisement } from '../../src/serve/nd/ndp.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

type Json = Record<string, any>;

async function guestJson(g: GuestNs, args: string[]): Promise<Json[]> {
  const r = await run('ip', ['-n', g.ns, '-j', ...args]);
  return r.stdout.trim() ? (JSON.parse(r.stdout) as Json[]) : [];
}

const defaults = async (g: GuestNs) => (await guestJson(g, ['-6', 'route', 'show', 'default'])).map((r) => `${r.gateway} ${r.dev}`);

/** The pod's solicitations for the gateway among frames from the pod side: podtap's, with the pod's source address. */
function gatewayQuestions(frames: string[], nic: Nic6): string[] {
  return frames.filter((h) => {
    const [f] = parseHexFrames([h]);
    return f!.kind === 'ipv6' && f!.icmp6?.type === ND.NEIGHBOR_SOLICITATION && f!.src === nic.ip6;
  });
}

/**
 * The guest asks for fe80::1 the way its kernel does (multicast to the
 * solicited-node group, with its link-layer address); podtap must answer
 * from the gateway's MAC, as a router, solicited, overriding; and the
 * question must not leave the pod.
 */
async function checkRouterAnswer(g: GuestNs, nic: Nic6, c: Cleanup): Promise<void> {
  const recv = await startRecv(g.ns, c, { ifname: 'eth0', match: icmp6Match(ND.NEIGHBOR_ADVERTISEMENT), count: 1, timeoutMs: 5000 });
  const ns = neighborSolicitationFrame({ srcMac: nic.mac, target: PODTAP_ROUTER, src: eui64LinkLocal(nic.mac) });
  await g.run(pktSend('eth0', ns.toString('hex')));
  const [frame] = parseHexFrames(await recv.done);
  expect(frame, 'an answer to the solicitation for fe80::1').toBeDefined();
  if (frame!.kind !== 'ipv6') throw new Error(`not IPv6: ${frame!.kind}`);
  expect(frame!.eth).toMatchObject({ src: nic.routerMac, dst: nic.mac });
  expect({ src: frame!.src, dst: frame!.dst, hopLimit: frame!.hopLimit }).toEqual({ src: PODTAP_ROUTER, dst: eui64LinkLocal(nic.mac), hopLimit: 255 });
  const na = parseNeighborAdvertisement(frame!);
  expect(na).toMatchObject({ ok: true, target: PODTAP_ROUTER, router: true, solicited: true, override: true, targetMac: nic.routerMac });
}

interface Rig {
  pod: Pod6;
  nic: Nic6;
  g: GuestNs;
  before: Awaited<ReturnType<typeof snapshot>>;
  nodeFrames(): string[];
  stopNode(): Promise<string[]>;
  guestRas(): string[];
}

/** A ptp pod with podtap and a guest; the node side and the guest's RAs captured from before podtap starts (the guest's from its link-up). */
async function rig(c: Cleanup, prepare: (pod: Pod6) => Promise<void>): Promise<Rig> {
  const pod = await makePod6('dualstack', { cleanup: c });
  const nic = pod.nics[0]!;
  await prepare(pod);
  const before = await snapshot(pod.pod);
  const node = await startRecv(pod.node, c, { ifname: pod.hostIfname, timeoutMs: 120_000 });
  const g = await startGuestNs(pod.asPod, { cleanup: c, podtapArgs: ['--datapath', 'redirect', '--log-level', 'debug'] });
  const ras = await startRecv(g.ns, c, { ifname: 'eth0', match: icmp6Match(ND.ROUTER_ADVERTISEMENT), timeoutMs: 120_000 });
  return { pod, nic, g, before, nodeFrames: () => node.frames(), stopNode: () => node.stop(), guestRas: () => ras.frames() };
}

async function finish(r: Rig): Promise<string> {
  const stopped = await r.g.stop();
  expect(stopped.exitCode, stopped.stderr).toBe(0);
  expect(diffSnapshots(r.before, await snapshot(r.pod.pod))).toEqual([]);
  const frames = await r.stopNode();
  expect(nodeSideViolations(parseHexFrames(frames), r.nic)).toEqual([]);
  // The guest's questions for fe80::1 are podtap's to answer.
  const asked = parseHexFrames(frames).filter((f) => f.kind === 'ipv6' && f.icmp6?.type === ND.NEIGHBOR_SOLICITATION && f.icmp6.body.subarray(4, 20).equals(Buffer.from('fe800000000000000000000000000001', 'hex')));
  expect(asked, 'solicitations for fe80::1 reached the node').toEqual([]);
  return stopped.stderr;
}

describe.concurrent('the router podtap answers for has the gateway\'s MAC', () => {
  it('the pod\'s neighbour table knows the gateway: podtap uses that MAC and asks nobody', () =>
    cleanup.scope('case', async (c) => {
      const r = await rig(c, async (pod) => {
        // The pod talks to its gateway, as a pod does: the kernel learns its MAC.
        await pod.run(['ping', '-c', '1', '-W', '2', pod.nics[0]!.gateway6]);
        const [n] = JSON.parse((await run('ip', ['-n', pod.pod, '-6', '-j', 'neigh', 'show', 'to', pod.nics[0]!.gateway6])).stdout) as Json[];
        expect(n?.lladdr).toBe(pod.nics[0]!.routerMac);
      });
      const st = await waitStatus(r.pod, r.g.podtap.stateDir, (d) => d.nics[0].ra.sent >= 1, 10_000, 'a router advertisement');
      expect(st.nics[0].ra).toMatchObject({ gatewayMac: r.nic.routerMac, needsGatewayMac: false });
      await waitSettled(r.g.ns);
      await checkRouterAnswer(r.g, r.nic, c);
      expect(gatewayQuestions(r.nodeFrames(), r.nic), 'podtap asked the gateway all the same').toEqual([]);
      const log = await finish(r);
      expect(log).not.toMatch(/learned the gateway's MAC/);
      expect(log).toMatch(new RegExp(`ipv6: serving .*gatewayMac=${r.nic.routerMac}`));
    }));

  it('it does not: podtap asks the gateway once, from the pod interface, and `podtap status` shows the MAC', () =>
    cleanup.scope('case', async (c) => {
      const r = await rig(c, async (pod) => {
        await run('ip', ['-n', pod.pod, 'neigh', 'flush', 'dev', 'eth0']);
        expect(JSON.parse((await run('ip', ['-n', pod.pod, '-6', '-j', 'neigh', 'show', 'to', pod.nics[0]!.gateway6])).stdout)).toEqual([]);
      });
      const st = await waitStatus(r.pod, r.g.podtap.stateDir, (d) => d.nics[0].ra.sent >= 1, 10_000, 'a router advertisement');
      expect(st.nics[0].ra).toMatchObject({ gatewayMac: r.nic.routerMac, needsGatewayMac: false });
      const asked = gatewayQuestions(r.nodeFrames(), r.nic);
      expect(asked).toEqual([gatewaySolicitation(r.nic)]);
      await waitSettled(r.g.ns);
      await checkRouterAnswer(r.g, r.nic, c);
      // The guest's kernel takes the RA: its default route goes through fe80::1, at the gateway's MAC.
      await until(async () => (await defaults(r.g)).length > 0, 10_000);
      expect(await defaults(r.g)).toEqual([`${PODTAP_ROUTER} eth0`]);
      expect((await r.g.run(['ping', '-c', '1', '-W', '2', r.nic.nodeAddr6], { reject: false })).exitCode).toBe(0);
      const [rn] = await guestJson(r.g, ['-6', 'neigh', 'show', 'dev', 'eth0', 'to', PODTAP_ROUTER]);
      expect(rn?.lladdr).toBe(r.nic.routerMac);
      const log = await finish(r);
      expect(log).toMatch(new RegExp(`learned the gateway's MAC nic=0 gateway=${r.nic.gateway6} mac=${r.nic.routerMac}`));
    }));

  it('the gateway never answers: a warning, no router advertisement, no default route in the guest; then it answers', () =>
    cleanup.scope('case', async (c) => {
      let hostIf = '';
      const r = await rig(c, async (pod) => {
        hostIf = pod.hostIfname;
        await run('ip', ['-n', pod.pod, 'neigh', 'flush', 'dev', 'eth0']);
        // The node side drops every solicitation from the pod: the gateway is deaf.
        await run('ip', ['netns', 'exec', pod.node, 'nft', '-f', '-'], {
          input: `table netdev deaf {\n  chain in {\n    type filter hook ingress device "${hostIf}" priority filter; policy accept;\n    icmpv6 type nd-neighbor-solicit drop\n  }\n}\n`,
        });
      });
      const warned = () => /does not answer neighbour solicitations on eth0; the guest gets no IPv6 router until it does/.test(r.g.podtap.stderr());
      await until(async () => warned(), 15_000);
      const st = await podtapStatus(r.pod, r.g.podtap.stateDir);
      expect(st.nics[0].ra).toMatchObject({ sent: 0, needsGatewayMac: true });
      expect(st.nics[0].ra.gatewayMac).toBeUndefined();
      // It kept asking, always the same question.
      const asked = gatewayQuestions(r.nodeFrames(), r.nic);
      expect(asked.length).toBeGreaterThanOrEqual(5);
      for (const h of asked) expect(h).toBe(gatewaySolicitation(r.nic));
      // The guest's kernel has been soliciting since its link came up: no answer.
      expect(routerAdvertisements(parseHexFrames(r.guestRas()))).toEqual([]);
      expect(await defaults(r.g)).toEqual([]);
      // Nor does the guest resolve fe80::1 to anything meanwhile.
      const recv = await startRecv(r.g.ns, c, { ifname: 'eth0', match: icmp6Match(ND.NEIGHBOR_ADVERTISEMENT), timeoutMs: 2000 });
      await r.g.run(pktSend('eth0', neighborSolicitationFrame({ srcMac: r.nic.mac, target: PODTAP_ROUTER, src: eui64LinkLocal(r.nic.mac) }).toString('hex')));
      expect(await recv.done).toEqual([]);

      // The gateway answers again: podtap learns its MAC and advertises.
      await run('ip', ['netns', 'exec', r.pod.node, 'nft', 'delete', 'table', 'netdev', 'deaf']);
      const st2 = await waitStatus(r.pod, r.g.podtap.stateDir, (d) => d.nics[0].ra.sent >= 1, 5000, 'a router advertisement once the gateway answers');
      expect(st2.nics[0].ra).toMatchObject({ gatewayMac: r.nic.routerMac, needsGatewayMac: false });
      // The guest stopped soliciting long ago; the next RA is the first of podtap's, sent at once.
      await until(async () => (await defaults(r.g)).length > 0, 5000);
      expect(await defaults(r.g)).toEqual([`${PODTAP_ROUTER} eth0`]);
      expect((await r.g.run(['ping', '-c', '1', '-W', '2', r.nic.nodeAddr6], { reject: false })).exitCode).toBe(0);
      await finish(r);
    }));
});

async function until(test: () => Promise<boolean>, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!(await test())) {
    if (Date.now() > end) throw new Error(`not within ${ms} ms`);
    await sleep(200);
  }
}
