// The guest-namespace stand-in VM (test/tools/tap-guest as the VMM of the
// real `podtap run`, test/helpers/guest-ns.ts) on the CNI ptp pod shape:
// a real DHCP client gets the pod's identity through podtap's TAP, the pod is
// restored exactly afterwards, raw frames from test/tools/pkt meet the guard,
// a multi-queue TAP works with both queues relayed, and the guest outlives a
// killed podtap until `podtap down` hangs its tap up. The last cases run the
// tools on their own: tap-guest with two NICs, to show that one process
// serves several and unplugs a NIC whose tap goes away, and pkt's refusals.

import { execa } from 'execa';
import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cleanup, HELPER_MARK, createNetns, nsExec, pidsIn, randomHex, run } from '../helpers/netns.ts';
import { makePod } from '../helpers/pods.ts';
import { diffSnapshots, snapshot } from '../helpers/snapshot.ts';
import { podtapIn } from '../helpers/podtap.ts';
import { PKT, TAP_GUEST, buildTools, pktSend, startGuestNs, startRecv, udhcpcOnce, writeUdhcpcScript, type GuestNs } from '../helpers/guest-ns.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

let script: string;
beforeAll(async () => {
  await buildTools();
  const dir = await mkdtemp('/run/podtap-test-guest-ns-');
  cleanup.path(dir);
  script = await writeUdhcpcScript(join(dir, 'udhcpc.sh'));
});

type Json = Record<string, any>;

async function ipJson(g: GuestNs, args: string[]): Promise<Json[]> {
  return JSON.parse((await g.run(['ip', '-j', ...args])).stdout || '[]') as Json[];
}

/** udhcpc in the guest, once: lease, address and routes, or a thrown error. */
async function dhcp(g: GuestNs): Promise<string> {
  const r = await g.run(udhcpcOnce(script), { timeoutMs: 20_000 });
  return `${r.stdout}${r.stderr}`;
}

async function ping(g: GuestNs, addr: string): Promise<boolean> {
  return (await g.run(['ping', '-c', '1', '-W', '2', addr], { reject: false })).exitCode === 0;
}

/** tap-guest's per-queue counters from its exit report in podtap's stderr. */
function queueCounters(stderr: string, ifname: string): { toGuest: number; toPod: number }[] {
  const out: { toGuest: number; toPod: number }[] = [];
  for (const m of stderr.matchAll(new RegExp(`^tap-guest: ${ifname} queue (\\d+): (\\d+) frames to the guest, (\\d+) to the pod`, 'gm'))) {
    out[Number(m[1])] = { toGuest: Number(m[2]), toPod: Number(m[3]) };
  }
  return out;
}

const macHex = (mac: string): string => mac.replaceAll(':', '');

/** An Ethernet frame carrying IPv4 UDP to port 9 with `payloadHex`, as hex; `vlan` is an 802.1Q TCI. */
function udpFrame(dstMac: string, srcMac: string, srcIp: string, dstIp: string, payloadHex: string, vlan?: string): string {
  const payload = Buffer.from(payloadHex, 'hex');
  const udp = Buffer.alloc(8);
  udp.writeUInt16BE(40000, 0);
  udp.writeUInt16BE(9, 2);
  udp.writeUInt16BE(8 + payload.length, 4); // checksum 0: none, which IPv4 allows
  const ip = Buffer.alloc(20);
  ip[0] = 0x45;
  ip.writeUInt16BE(20 + 8 + payload.length, 2);
  ip[8] = 64;
  ip[9] = 17;
  Buffer.from(srcIp.split('.').map(Number)).copy(ip, 12);
  Buffer.from(dstIp.split('.').map(Number)).copy(ip, 16);
  let sum = 0;
  for (let i = 0; i < 20; i += 2) sum += ip.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  ip.writeUInt16BE(~sum & 0xffff, 10);
  return `${macHex(dstMac)}${macHex(srcMac)}${vlan ? `8100${vlan}` : ''}0800${ip.toString('hex')}${udp.toString('hex')}${payload.toString('hex')}`;
}

describe('guest namespace behind podtap run, ptp pod', () => {
  it('(a) udhcpc in the guest gets the pod address and the default route via the gateway, and pings the gateway in the node namespace', async () => {
    const pod = await makePod('ptp', { cleanup });
    const g = await startGuestNs(pod, { cleanup });
    expect(g.ready).toMatchObject({ event: 'ready', mac: pod.expect.mac, mtu: 1500, queues: 1 });
    const [link] = await ipJson(g, ['link', 'show', 'dev', 'eth0']);
    expect(link).toMatchObject({ address: pod.expect.mac, mtu: 1500 });

    const out = await dhcp(g);
    expect(out).toMatch(new RegExp(`lease of ${pod.podIP} obtained`));
    const [addr] = await ipJson(g, ['-4', 'addr', 'show', 'dev', 'eth0']);
    expect(addr!.addr_info.map((a: Json) => a.local)).toEqual([pod.podIP]);
    const routes = await ipJson(g, ['-4', 'route', 'show', 'default']);
    expect(routes).toEqual([expect.objectContaining({ dst: 'default', gateway: pod.gateway, dev: 'eth0' })]);
    expect(await ping(g, pod.gateway!)).toBe(true);

    const stopped = await g.stop();
    expect(stopped.exitCode, stopped.stderr).toBe(0);
    expect(stopped.stderr).toMatch(/^tap-guest: Terminated, exiting$/m);
    expect(stopped.stderr).toMatch(/namespace restored/);
  });

  it('(b) stop() ends podtap with status 0 and the pod namespace is exactly as before', async () => {
    const pod = await makePod('ptp', { cleanup });
    const before = await snapshot(pod.pod);
    const g = await startGuestNs(pod, { cleanup });
    await dhcp(g);
    expect(await ping(g, pod.gateway!)).toBe(true);
    // While the guest is up the pod differs (so the comparison below can fail).
    expect(diffSnapshots(before, await snapshot(pod.pod))).not.toEqual([]);

    const stopped = await g.stop();
    expect(stopped.exitCode, stopped.stderr).toBe(0);
    expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
    // tap-guest has gone, and the guest's eth0 with it.
    expect(await pidsIn(g.ns)).toEqual([]);
    expect((await ipJson(g, ['link', 'show'])).map((l) => l.ifname)).toEqual(['lo']);
  });

  it('(c) pkt send with a forged source MAC reaches nothing on the node side; the same frame with the pod MAC does', async () => {
    const pod = await makePod('ptp', { cleanup });
    const g = await startGuestNs(pod, { cleanup });
    const [nodeLink] = JSON.parse((await run('ip', ['-n', pod.node, '-j', 'link', 'show', 'dev', pod.hostIfname])).stdout) as Json[];
    const nonce = randomHex(8);
    // What a guest would send the gateway (UDP to the discard port, from the
    // pod's address), differing only in the source MAC.
    const frame = (src: string, vlan?: string): string => udpFrame(nodeLink!.address, src, pod.podIP, pod.gateway!, nonce, vlan);
    const forged = frame('02:5e:0f:0c:ad:01');
    const honest = frame(pod.expect.mac);
    const tagged = frame(pod.expect.mac, '2005'); // priority 1, VLAN 5

    // Witnesses on both sides of the guard: the node's end of the veth, and
    // podtap's tap in the pod (packet sockets there see a frame before the
    // bridge and its guard do).
    const atNode = await startRecv(pod.node, cleanup, { ifname: pod.hostIfname, match: [nonce], count: 1, timeoutMs: 10_000 });
    const atTap = await startRecv(pod.pod, cleanup, { ifname: g.ready.tap, match: [nonce], count: 5, timeoutMs: 10_000 });
    // The forged frames go first, on the same (single) queue: had one
    // crossed, it would be the frame the node's receiver stops at.
    expect((await g.run(pktSend('eth0', forged, { count: 3, intervalUs: 1000 }))).stdout).toBe('sent 3');
    await g.run(pktSend('eth0', honest));
    // Whether the guard lets a tagged frame out is its policy; that it
    // reaches the pod's tap exactly as sent is the tools' job.
    await g.run(pktSend('eth0', tagged));
    expect(await atNode.done).toEqual([honest]);
    // All five reached the pod's tap byte for byte, tag included: the guard
    // stopped the forged ones, not the relay.
    expect(await atTap.done).toEqual([forged, forged, forged, honest, tagged]);

    const stopped = await g.stop();
    expect(stopped.exitCode, stopped.stderr).toBe(0);
  });

  it('(d) --queues 2 with both fds relayed: DHCP and ping work, and both queues carry frames both ways', async () => {
    const pod = await makePod('ptp', { cleanup });
    const g = await startGuestNs(pod, { cleanup, podtapArgs: ['--queues', '2'] });
    expect(g.ready.queues).toBe(2);
    const [link] = await ipJson(g, ['-d', 'link', 'show', 'dev', 'eth0']);
    expect(link!.linkinfo.info_data).toMatchObject({ type: 'tap', multi_queue: true, numqueues: 2 });

    await dhcp(g);
    expect(await ping(g, pod.gateway!)).toBe(true);
    // The tap puts each flow on a queue by its hash: 16 TCP connections to
    // closed ports on the gateway (each answered by a RST at once) land on
    // both queues but with a chance of 2^-15.
    await g.run(['sh', '-c', `for p in $(seq 40001 40016); do busybox nc -w 1 ${pod.gateway} $p </dev/null; done; true`]);

    const stopped = await g.stop();
    expect(stopped.exitCode, stopped.stderr).toBe(0);
    const q = queueCounters(stopped.stderr, 'eth0');
    expect(q, stopped.stderr).toHaveLength(2);
    for (const c of q) {
      expect(c.toGuest, stopped.stderr).toBeGreaterThan(0);
      expect(c.toPod, stopped.stderr).toBeGreaterThan(0);
    }
  });

  it('(e) after kill -9 of podtap the guest keeps its network; `podtap down` deletes the tap, tap-guest exits, the pod is as before', async () => {
    const pod = await makePod('ptp', { cleanup });
    const before = await snapshot(pod.pod);
    const g = await startGuestNs(pod, { cleanup });
    await dhcp(g);
    process.kill(g.podtap.pid, 'SIGKILL');
    // The VMM holds the TAP: traffic does not depend on podtap.
    expect(await ping(g, pod.gateway!)).toBe(true);
    expect(await pidsIn(g.ns)).toHaveLength(1);

    const down = await podtapIn(pod, ['down', '--state-dir', g.podtap.stateDir]);
    expect(down.exitCode, down.stderr).toBe(0);
    // podtap's execa promise settles once tap-guest, the last holder of its
    // stdout, has gone too.
    const r = await Promise.race([g.podtap.proc, sleep(10_000, undefined, { ref: false })]);
    expect(r?.signal, g.podtap.stderr()).toBe('SIGKILL');
    expect(g.podtap.stderr()).toMatch(/^tap-guest: every pod-side tap hung up, exiting$/m);
    expect(await pidsIn(g.ns)).toEqual([]);
    expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
  });
});

describe('tap-guest on its own', () => {
  it('serves two NICs in one process (taps opened by name), and unplugs a NIC whose tap is deleted, exiting 0 when none is left', async () => {
    await buildTools();
    const host = await createNetns({ prefix: 'ptg-', cleanup });
    const guest = await createNetns({ prefix: 'ptg-', cleanup });
    const ip = (ns: string, ...args: string[]) => run('ip', ['-n', ns, ...args]);
    await ip(host, 'tuntap', 'add', 'dev', 'ta', 'mode', 'tap', 'vnet_hdr');
    await ip(host, 'tuntap', 'add', 'dev', 'tb', 'mode', 'tap', 'vnet_hdr', 'multi_queue');
    await ip(host, 'addr', 'add', '10.201.1.1/24', 'dev', 'ta');
    await ip(host, 'addr', 'add', '10.201.2.1/24', 'dev', 'tb');
    await ip(host, 'link', 'set', 'ta', 'up');
    await ip(host, 'link', 'set', 'tb', 'up');

    const proc = execa('ip', ['netns', 'exec', host, TAP_GUEST, '--netns', guest,
      '--nic', 'tap=ta,mac=02:00:00:20:10:01', '--nic', 'tap=tb,queues=2,ifname=net1,mtu=1400'], { reject: false, stdin: 'ignore', env: { [HELPER_MARK]: '1' } });
    cleanup.pid(proc.pid!);
    let out = '';
    proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    for (const end = Date.now() + 10_000; !/^ready$/m.test(out); await sleep(20)) {
      if (Date.now() > end || proc.exitCode !== null) throw new Error(`tap-guest not ready: ${out}`);
    }

    const links = JSON.parse((await ip(guest, '-j', '-d', 'link', 'show')).stdout) as Json[];
    expect(links.map((l) => [l.ifname, l.operstate === 'DOWN' ? 'down' : 'up'])).toEqual([['lo', 'up'], ['eth0', 'up'], ['net1', 'up']]);
    expect(links[1]).toMatchObject({ address: '02:00:00:20:10:01', mtu: 1500 });
    expect(links[2]).toMatchObject({ mtu: 1400, linkinfo: { info_data: { multi_queue: true, numqueues: 2 } } });
    await ip(guest, 'addr', 'add', '10.201.1.2/24', 'dev', 'eth0');
    await ip(guest, 'addr', 'add', '10.201.2.2/24', 'dev', 'net1');
    const pingFromGuest = async (addr: string) => (await nsExec(guest, ['ping', '-c', '1', '-W', '2', addr], { reject: false })).exitCode === 0;
    expect(await pingFromGuest('10.201.1.1')).toBe(true);
    expect(await pingFromGuest('10.201.2.1')).toBe(true);

    // Deleting a tap is what podtap's teardown (or `podtap down`) does.
    await ip(host, 'link', 'del', 'ta');
    for (const end = Date.now() + 5000; (await ip(guest, 'link', 'show')).stdout.includes(' eth0:'); await sleep(20)) {
      if (Date.now() > end) throw new Error('the guest eth0 outlived its tap');
    }
    expect(await pingFromGuest('10.201.2.1')).toBe(true);
    expect(proc.exitCode).toBe(null);
    await ip(host, 'link', 'del', 'tb');
    const r = await Promise.race([proc, sleep(5000, undefined, { ref: false })]);
    expect(r?.exitCode, r?.stderr).toBe(0);
    expect(r!.stderr).toMatch(/every pod-side tap hung up, exiting/);
    expect(r!.stderr).toMatch(/^tap-guest: net1 queue 1: \d+ frames to the guest/m);
  });

  it('pkt refuses what it cannot send exactly', async () => {
    const ns = await createNetns({ prefix: 'ptg-', cleanup });
    const short = await nsExec(ns, [PKT, 'send', '--ifname', 'lo', '--hex', 'ffffffffffff'], { reject: false });
    expect(short.exitCode).toBe(2);
    expect(short.stderr).toMatch(/at least 14 bytes/);
    const odd = await nsExec(ns, [PKT, 'send', '--ifname', 'lo', '--hex', 'fffffffffffff'], { reject: false });
    expect(odd.exitCode).toBe(2);
    const noIf = await nsExec(ns, [PKT, 'send', '--ifname', 'nope0', '--hex', `${'ff'.repeat(12)}88b5`], { reject: false });
    expect(noIf.exitCode).toBe(1);
  });
});
