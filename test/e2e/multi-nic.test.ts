// A Multus-style pod (pods.ts "multi": eth0 from CNI ptp with the default
// route, net1 from CNI bridge with isGateway false, net2 a macvlan, net3 an
// L2-only veth) and a real QEMU guest with one virtio-net NIC per pod
// interface, started by `podtap run` with `{fd:i}`, `{mac:i}` and `{mtu:i}`
// for NIC i. Each NIC must carry its pod interface's MAC and MTU and get
// that interface's address by DHCP (net3, which has none, gets no answer);
// the guest must end up with exactly one default route (eth0's gateway),
// DNS and hostname from eth0 only, and the routes of each interface on its
// NIC; it must reach an address in the node namespace through each of the
// three addressed NICs, which a capture on that network's node side sees
// arrive from that NIC's MAC; no DHCP packet may reach any node side. The
// lease of a secondary NIC (net1), renewed once by the guest, must renew by
// unicast to the server identifier like eth0's, and nothing the guest sends
// for that identifier (the renewal, an ARP request) may reach the node. When
// the guest powers off, the pod namespace is exactly as before. One boot per
// data path serves all of these cases.
//
// Both data paths: redirect (the default) carries all four; the bridge data
// path cannot carry the macvlan, so there the VM gets eth0, net1 and net3,
// and asking for net2 with --datapath bridge is refused before anything
// changes.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cleanup, run } from '../helpers/netns.ts';
import { DATAPATHS, makePod, type Datapath, type Pod, type PodNic } from '../helpers/pods.ts';
import { diffSnapshots, snapshot, type Snapshot } from '../helpers/snapshot.ts';
import { buildGuest, guestQemuArgs, runGuest, type Guest, type GuestRun } from '../helpers/guest.ts';
import { startCapture, type Capture } from '../helpers/capture.ts';
import { expectReady, expectTakenOver, PODTAP, podtapIn, stateDirFor, type ReadyLine } from '../helpers/podtap.ts';
import { datapathArgs, readyIn } from './support.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

let guest: Guest;
let pod: Pod;
let before: Snapshot;
/** Where each pod interface's traffic arrives in the node namespace. */
let nodeSide: Record<string, string>;

beforeAll(async () => {
  guest = await buildGuest();
  pod = await makePod('multi', { cleanup });
  before = await snapshot(pod.pod);
  // net3's node end is the only veth named l2h… (pods.ts); net1's network
  // is the cni-n1 bridge, net2's the peer of the macvlan's parent.
  const links = JSON.parse((await run('ip', ['-n', pod.node, '-j', 'link', 'show'])).stdout) as { ifname: string }[];
  const l2 = links.filter((l) => l.ifname.startsWith('l2h')).map((l) => l.ifname);
  expect(l2).toHaveLength(1);
  nodeSide = { eth0: pod.hostIfname, net1: 'cni-n1', net2: 'mvnet0', net3: l2[0]! };
});

/**
 * QEMU's NIC arguments for NIC i: what the README shows for several NICs,
 * plus romfile= (no iPXE ROM: the test guest never network-boots, and
 * loading it costs boot time under TCG).
 */
function nicArgs(count: number): string[] {
  return Array.from({ length: count }, (_, i) => [
    '-netdev', `tap,id=net${i},fd={fd:${i}}`,
    '-device', `virtio-net-pci,netdev=net${i},mac={mac:${i}},host_mtu={mtu:${i}},romfile=`,
  ]).flat();
}

/** `a.b.c.d/len` of the network an address is in. */
function network(ip: string, prefix: number): string {
  const n = ip.split('.').reduce((a, o) => a * 256 + Number(o), 0);
  const masked = prefix === 0 ? 0 : Number((BigInt(n) >> BigInt(32 - prefix)) << BigInt(32 - prefix));
  return `${[24, 16, 8, 0].map((s) => (masked >>> s) & 255).join('.')}/${prefix}`;
}

/** The guest's IPv4 routes a NIC should carry, as "dst via gateway|link": the pod's own for that interface. */
function routesFor(n: PodNic): string[] {
  const dst = (d: string) => (d === 'default' ? d : d.replace(/\/32$/, ''));
  if (n.defaultRoute) return pod.expect.routes.filter((r) => r.family === 'inet').map((r) => `${dst(r.dst)} via ${r.gateway ?? 'link'}`).sort();
  // A secondary network's only route is the connected one (isGateway false, no IPAM routes).
  return n.ip ? [`${network(n.ip, n.handedPrefix!)} via link`] : [];
}

interface Booted {
  nics: PodNic[];
  vm: GuestRun;
  ready: ReadyLine | undefined;
  frames: Map<string, string[]>;
  takenOver: unknown;
  after: Snapshot;
}

/** The guest's name for NIC i: virtio-net devices probe in PCI slot order, the order of -device. */
const guestName = (i: number) => `eth${i}`;

/**
 * One boot of the whole pod through `podtap run`, shared by the cases of a
 * data path. NIC 1 (net1, a secondary network) is the guest's "main" NIC for
 * its init: DHCP there first, and after the pings one renewal of that lease
 * (udhcpc's SIGUSR1), before the report. The others follow in NIC order.
 */
async function boot(datapath: Datapath): Promise<Booted> {
  const nics = pod.nicsFor(datapath);
  expect(nics.map((n) => n.ifname)).toEqual(datapath === 'redirect' ? ['eth0', 'net1', 'net2', 'net3'] : ['eth0', 'net1', 'net3']);
  const captures = new Map<string, Capture>();
  for (const [ifname, dev] of Object.entries(nodeSide)) {
    captures.set(ifname, await startCapture(pod.node, dev, cleanup, ['udp', 'port', '67', 'or', 'udp', 'port', '68', 'or', 'icmp', 'or', 'arp']));
  }
  const qemu = [
    ...guestQemuArgs({
      guest,
      nic: guestName(1),
      net: 'dhcp',
      more: nics.flatMap((n, i) => (i === 1 ? [] : [{ nic: guestName(i), net: n.ip ? ('dhcp' as const) : ('try' as const) }])),
      ping: nics.filter((n) => n.ip).map((n) => n.nodeAddr!),
      mode: 'renew',
      renewAfter: 1,
      renews: 1,
      renewWait: 25,
      guestTimeout: 150,
    }),
    ...nicArgs(nics.length),
  ];
  // What the pod looks like while the guest runs; an error kept for its case.
  let takenOver: Promise<unknown> | undefined;
  const vm = await runGuest(
    pod.argv([PODTAP, 'run', '--state-dir', stateDirFor(cleanup), '--log-level', 'debug', ...pod.nicArgs(datapath), ...datapathArgs(datapath), '--', ...qemu]),
    {
      timeoutMs: 170_000,
      onLine: (line) => {
        if (!takenOver && line.includes('PODTAP-GUEST boot ')) takenOver = expectTakenOver(pod, datapath).then(() => undefined, (e: unknown) => e);
      },
    },
  );
  const frames = new Map<string, string[]>();
  for (const [ifname, c] of captures) frames.set(ifname, await c.stop());
  return { nics, vm, ready: readyIn(vm.serial), frames, takenOver: await takenOver, after: await snapshot(pod.pod) };
}

describe.each(DATAPATHS)('%s data path', (datapath: Datapath) => {
  let b: Booted;
  beforeAll(async () => {
    b = await boot(datapath);
  }, 200_000);

  it('podtap describes every NIC, takes over every interface, and the guest ran to the end', async () => {
    expect(b.ready, b.vm.stderr).toBeDefined();
    expectReady(b.ready!, pod, datapath);
    // DHCP is served on every addressed NIC's TAP, and only there.
    expect((b.ready!.dhcp as { nic: number }[]).map((d) => d.nic)).toEqual(b.nics.flatMap((n, i) => (n.ip ? [i] : [])));
    expect(b.takenOver).toBeUndefined();
    expect(b.vm.report.errors, b.vm.serial).toEqual([]);
    expect(b.vm.report.done, b.vm.serial).toBe(true);
  });

  it('NIC i is the guest\'s eth<i> with its pod interface\'s MAC, MTU and address by DHCP; the L2-only NIC gets no answer', () => {
    const r = b.vm.report;
    expect(r.last!.links.map((l) => [l.name, l.mac, l.mtu])).toEqual(b.nics.map((n, i) => [guestName(i), n.mac, n.mtu]));
    expect(r.last!.links.map((l) => l.addresses.map((a) => `${a.local}/${a.prefixlen}`))).toEqual(b.nics.map((n) => (n.ip ? [`${n.ip}/${n.handedPrefix}`] : [])));
    const bound = (i: number) => r.dhcp.find((e) => e.complete && e.event === 'bound' && e.vars.interface === guestName(i))?.vars;
    b.nics.forEach((n, i) => {
      if (!n.ip) return expect(bound(i), n.ifname).toBeUndefined();
      expect(bound(i), `${n.ifname}\n${b.vm.serial}`).toMatchObject({ ip: n.ip, mask: String(n.handedPrefix), mtu: String(n.mtu), serverid: expect.stringMatching(/^169\.254\./) });
      // The pod's default route, DNS and hostname come with eth0's lease only.
      for (const k of ['router', 'dns', 'hostname', 'search', 'domain']) {
        if (n.defaultRoute) expect(bound(i)?.[k], `${n.ifname} ${k}`).toBeDefined();
        else expect(bound(i)?.[k], `${n.ifname} ${k}`).toBeUndefined();
      }
    });
    expect(r.noLease).toEqual(b.nics.flatMap((n, i) => (n.ip ? [] : [guestName(i)])));
  });

  it('routes as the pod: one default route, through eth0 to its gateway; each NIC carries its interface\'s routes; DNS and hostname from eth0', () => {
    const last = b.vm.report.last!;
    expect(last.routes.filter((x) => x.dst === 'default').map((x) => `${x.gateway} ${x.dev}`)).toEqual([`${pod.gateway} eth0`]);
    b.nics.forEach((n, i) => {
      const through = last.routes.filter((x) => x.dev === guestName(i)).map((x) => `${x.dst} via ${x.gateway ?? 'link'}`).sort();
      expect(through, n.ifname).toEqual(routesFor(n));
    });
    expect(last.resolv.nameservers).toEqual(pod.resolvConf.nameservers);
    expect(last.resolv.search).toEqual(pod.resolvConf.search);
    expect(last.hostname).toBe(pod.hostname);
  });

  it('reaches the node through each addressed NIC: the echo requests arrive on that network\'s node side from that NIC', () => {
    const addressed = b.nics.filter((n) => n.ip);
    expect(b.vm.report.pings.map((p) => [p.target, p.ok])).toEqual(addressed.map((n) => [n.nodeAddr, true]));
    for (const n of addressed) {
      const echo = b.frames.get(n.ifname)!.filter((f) => f.includes(`${n.mac} >`) && f.includes(`${n.ip} > ${n.nodeAddr}: ICMP echo request`));
      expect(echo.length, `${n.ifname} on ${nodeSide[n.ifname]}:\n${b.frames.get(n.ifname)!.join('\n')}`).toBeGreaterThan(0);
    }
  });

  it('no DHCP packet reaches any network of the node, not even the L2-only NIC\'s unanswered tries', () => {
    for (const [ifname, lines] of b.frames) expect(lines.filter((l) => /\.6[78][: ]/.test(l)), ifname).toEqual([]);
  });

  it('a secondary NIC\'s lease renews by unicast to the server identifier, which stays inside the pod', () => {
    const r = b.vm.report;
    expect(r.renewRequested, b.vm.serial).toBe(true);
    expect(r.renewals, b.vm.serial).toBe(1);
    // podtap got the unicast REQUEST and took it as a renewal (RFC 2131
    // RENEWING), rather than only the broadcast of a client that gave up on
    // the server (REBINDING). (A REBINDING after it is the client's own
    // race, see dhcp-guest.test.ts.)
    const acks = b.vm.stderr.split('\n').filter((l) => /dhcp: ACK \((renewing|rebinding)\)/.test(l));
    expect(acks[0], b.vm.stderr).toMatch(/ACK \(renewing\) nic=1 /);
  });

  it('nothing the guest sends for podtap\'s server identifier (its renewal, an ARP request) reaches a network of the node', () => {
    const serverId = b.ready!.linkLocal.split('/')[0]!;
    for (const [ifname, lines] of b.frames) expect(lines.filter((l) => l.includes(serverId)), ifname).toEqual([]);
  });

  it('when the guest powers off, podtap exits 0 and the pod namespace is exactly as before', () => {
    expect(b.vm.exitCode, b.vm.stderr).toBe(0);
    expect(b.vm.stderr).toMatch(/namespace restored/);
    expect(diffSnapshots(before, b.after)).toEqual([]);
  });
});

it('refuses --datapath bridge for a NIC set that includes the macvlan net2, and changes nothing', async () => {
  const r = await podtapIn(pod, ['up', '--state-dir', stateDirFor(cleanup), '--datapath', 'bridge', ...pod.nicArgs('redirect')]);
  expect(r.exitCode, r.stderr).toBe(2);
  expect(r.stderr).toMatch(/net2 is a macvlan interface/);
  expect(r.stderr).toMatch(/--datapath redirect/);
  expect(r.stdout).not.toMatch(/"event":"ready"/);
  expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
});
