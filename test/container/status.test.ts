// `podtap status` in init/pod-sidecar.yaml's two containers, played by podman
// 4.3 (`podman kube play`) in a node namespace of the test's own: in podtap's
// container and in the VMM's (uid 107, no capabilities), which reaches
// podtap through the status socket in the shared volume
// (PODTAP_STATUS_SOCKET in both). Text and --json, at each step of "why has
// my VM no network":
//   1. podtap ready, nobody fetched the fds: status says the VMM has no TAP
//      and the guest never asked for DHCP;
//   2. the VMM fetched them (the guest-namespace stand-in on the machine,
//      test/container/host-vmm.ts; the manifest's VMM container only idles,
//      so that the test decides when the fetch happens): fetched once, DHCP
//      still never asked;
//   3. the guest's udhcpc got its lease: bound;
//   4. the guest sends forged frames (another source address, another source
//      MAC): the guard's drops, counted by reason, with what each means.

import { describe, expect, it } from 'vitest';
import { podmanUnavailable } from '../helpers/engine.ts';
import { pktSend } from '../helpers/guest-ns.ts';
import type { ReadyLine } from '../helpers/podtap.ts';
import { udp4Frame } from '../../src/serve/frames.ts';
import { startHostGuest } from './host-vmm.ts';
import { containerOf, envOf, forEngine, hostPathOf, kubeSuite, play, untilReady } from './kube.ts';

const why = podmanUnavailable();
if (why) console.warn(`test/container/status.test.ts: skipped: ${why}`);

interface StatusDoc {
  podtap: { pid: number; adopted: boolean };
  handoff: { mode: string; fetches: number; fdsHeld: number[] };
  nics: { interface: string; mac: string; ip: string; dhcp4: { state: string; binds: number; renewals: number }; guardDrops: Record<string, number> }[];
}

describe.skipIf(why !== undefined)(why ? `podtap status in podman (skipped: ${why})` : 'podtap status in podman', () => {
  const suite = kubeSuite('pod-sidecar.yaml', ['agent', 'qemu']);
  const { cleanup, images } = suite;

  it('from podtap\'s container and the VMM\'s: fds never fetched and DHCP never asked, then fetched, then bound, then the guard\'s drops by reason after forged frames', async () => {
    const { engine, dir } = await suite.node();
    const m = forEngine(suite.manifest, engine);
    const podtap = containerOf(m, 'podtap');
    const vmm = containerOf(m, 'vmm');
    podtap.image = images.agent.id;
    vmm.image = images.qemu.id;
    // The VMM container as shipped (user, capabilities, volume, variables), idle.
    vmm.command = ['sh', '-c', 'trap "exit 0" TERM; while :; do sleep 1; done'];
    delete vmm.args;

    const pod = await play(engine, m, dir);
    const ready = JSON.parse(await untilReady(engine, pod, 'podtap')) as ReadyLine;
    const socket = envOf(podtap, 'PODTAP_FD_SOCKET')!;
    const nicLine = `NIC 0: eth0 (veth) via ${ready.datapath} → tap0, MAC ${pod.net.mac}, MTU ${ready.mtu}, default route`;
    const ipLine = `  IPv4 ${pod.net.ip}/${pod.net.prefix} via ${pod.net.gateway}`;

    /** Asks in both containers; the text must be the same in both, and the documents but for their time. */
    const ask = async (): Promise<{ text: string[]; doc: StatusDoc }> => {
      const out: { text: string[]; doc: StatusDoc }[] = [];
      for (const c of [pod.container('podtap'), pod.container('vmm')]) {
        const text = await engine.podman(['exec', c, 'podtap', 'status']);
        const json = await engine.podman(['exec', c, 'podtap', 'status', '--json']);
        expect(text.exitCode).toBe(0);
        const doc = JSON.parse(json.stdout) as StatusDoc & { time?: number };
        delete doc.time;
        out.push({ text: text.stdout.split('\n').map((l) => l.replace(/ready \d+s ago/, 'ready Ns ago').replace(/bound \d+s ago/, 'bound Ns ago')), doc });
      }
      expect(out[1]!.text).toEqual(out[0]!.text);
      expect(out[1]!.doc).toEqual(out[0]!.doc);
      return out[0]!;
    };
    const handoffLine = (what: string) => `hand-off: serving fds on ${socket}: ${what}`;
    const expectText = (text: string[], handoff: string, rest: string[]) => {
      expect(text[0]).toMatch(/^podtap \d+\.\d+\.\d+ pid 1, ready Ns ago$/);
      expect(text.slice(1)).toEqual([handoffLine(handoff), '', nicLine, ipLine, ...rest]);
    };

    // 1. Nobody has the fds yet.
    let s = await ask();
    expectText(s.text, 'never fetched, so the VMM has no TAP (has the VMM container run `podtap exec` with this socket?)', [
      '  DHCPv4: the guest never asked (is its DHCP client running on this NIC?)',
      '  guard dropped nothing',
    ]);
    expect(s.doc.podtap).toMatchObject({ pid: 1, adopted: false });
    expect(s.doc.handoff).toMatchObject({ mode: 'fd-socket', fetches: 0, fdsHeld: [1] });
    expect(s.doc.nics).toEqual([expect.objectContaining({ interface: 'eth0', mac: pod.net.mac, ip: `${pod.net.ip}/${pod.net.prefix}`, dhcp4: expect.objectContaining({ state: 'free', binds: 0 }), guardDrops: {} })]);

    // 2. The VMM fetches them (on the machine, from the socket in the pod's volume).
    const g = await startHostGuest(await hostPathOf(pod, podtap, socket), dir, cleanup);
    s = await ask();
    expectText(s.text, 'fetched 1 time', ['  DHCPv4: the guest never asked (is its DHCP client running on this NIC?)', '  guard dropped nothing']);
    expect(s.doc.handoff).toMatchObject({ fetches: 1 });

    // 3. The guest's DHCP client.
    expect(await g.dhcp()).toBe(`${pod.net.ip}/${pod.net.prefix}`);
    s = await ask();
    expectText(s.text, 'fetched 1 time', ['  DHCPv4: bound Ns ago', '  guard dropped nothing']);
    expect(s.doc.nics[0]!.dhcp4).toMatchObject({ state: 'bound', binds: 1, renewals: 0 });

    // 4. Forged frames from the guest: three from another IPv4 address, two from another MAC.
    const frame = (srcMac: string, src: string) =>
      udp4Frame({ srcMac, dstMac: '02:00:00:00:00:01', src, dst: pod.net.gateway, srcPort: 40000, dstPort: 9, payload: Buffer.from('podtap-status-test') }).toString('hex');
    expect((await g.run(pktSend('eth0', frame(pod.net.mac, '192.0.2.66'), { count: 3, intervalUs: 1000 }))).stdout).toBe('sent 3');
    expect((await g.run(pktSend('eth0', frame('02:5e:0f:0c:ad:01', pod.net.ip), { count: 2, intervalUs: 1000 }))).stdout).toBe('sent 2');
    s = await ask();
    expect(s.doc.nics[0]!.guardDrops).toEqual({ 'from-vm:spoofed-ipv4': 3, 'from-vm:spoofed-mac': 2 });
    expect(s.text.slice(1, 6)).toEqual([handoffLine('fetched 1 time'), '', nicLine, ipLine, '  DHCPv4: bound Ns ago']);
    expect(s.text[6]).toBe('  guard dropped:');
    expect(s.text.slice(7).sort()).toEqual([
      `    from-vm:spoofed-ipv4 3: IPv4 from an address other than the pod's: let the guest configure itself by DHCP`,
      `    from-vm:spoofed-mac 2: frames from a MAC other than the VM's: give the VMM's NIC mac=${pod.net.mac}`,
    ]);

    await engine.podman(['pod', 'stop', '--time', '30', pod.name]);
    await engine.podman(['kube', 'down', pod.file]);
    expect(await engine.removeAll()).toEqual([]);
  });
});
