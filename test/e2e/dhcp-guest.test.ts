// The guest end to end for every pod shape and both data paths: `podtap
// run` boots a QEMU (TCG) guest whose init runs busybox udhcpc and reports
// what it got. Lease, routes, resolv.conf, MTU and hostname must be the
// pod's; a renewal must be ACKed by unicast; the guest must reach its
// gateway and the node; the node side of the veth must never see a DHCP
// packet; and teardown restores the pod. The ready line must describe the
// NIC and name the data path (redirect without asking: it is the default).

import { afterAll, describe, expect, it } from 'vitest';
import { Cleanup } from '../helpers/netns.ts';
import { DATAPATHS, makePod, SHAPES, type Pod } from '../helpers/pods.ts';
import { snapshot, diffSnapshots } from '../helpers/snapshot.ts';
import { buildGuest, guestQemuArgs, runGuest } from '../helpers/guest.ts';
import { startCapture } from '../helpers/capture.ts';
import { expectReady, PODTAP, stateDirFor } from '../helpers/podtap.ts';
import { datapathArgs, readyIn } from './support.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

/** "default" / "a.b.c.d/32" / "a.b.c.d" all to one spelling. */
function dst(d: string): string {
  if (d === 'default' || d === '0.0.0.0/0') return 'default';
  return d.endsWith('/32') ? d.slice(0, -3) : d;
}

/** The IPv4 routes through eth0 the pod has, as destination → gateway, without kernel ones for secondary addresses. */
function podRoutes(pod: Pod): string[] {
  return pod.expect.routes
    .filter((r) => r.family === 'inet' && r.dev === 'eth0')
    .filter((r) => !(r.protocol === 'kernel' && r.prefsrc && r.prefsrc !== pod.podIP))
    .map((r) => `${dst(r.dst)} via ${r.gateway ?? 'link'}`)
    .sort();
}

describe.each(DATAPATHS.flatMap((datapath) => SHAPES.map((shape) => [shape, datapath] as const)))('%s pod, %s data path', (shape, datapath) => {
  it('the guest gets exactly the pod identity by DHCP, renews, reaches the node; nothing leaks; teardown restores', async () => {
    const guest = await buildGuest();
    const pod = await makePod(shape, { cleanup, hostname: `vm-${shape}` });
    const before = await snapshot(pod.pod);
    const capture = await startCapture(pod.node, pod.hostIfname, cleanup, ['udp', 'port', '67', 'or', 'udp', 'port', '68']);
    // Calico's 169.254.1.1 only exists as proxy ARP: the pod can't ping it either.
    const targets = [...new Set([...(shape === 'calico' ? [] : [pod.gateway!]), pod.nodeAddr])];
    const qemu = [
      ...guestQemuArgs({ guest, net: 'dhcp', ping: targets, mode: 'renew', renewAfter: 1, renews: 1, renewWait: 30, guestTimeout: 90 }),
      '-netdev', 'tap,id=n0,fds={fds}',
      '-device', 'virtio-net-pci,netdev=n0,mac={mac},romfile=',
    ];
    const run = await runGuest(pod.argv([PODTAP, 'run', '--state-dir', stateDirFor(cleanup), '--log-level', 'debug', ...datapathArgs(datapath), '--', ...qemu]), { timeoutMs: 150_000 });
    const dhcpLines = await capture.stop();
    const ready = readyIn(run.serial);
    expect(ready, run.stderr).toBeDefined();
    expectReady(ready!, pod, datapath);
    const r = run.report;
    const lease = r.lease!;
    expect(lease, run.serial).toBeDefined();

    // The pod's identity, as the guest's own DHCP client reports it.
    expect(lease.ip).toBe(pod.podIP);
    expect(r.last!.mac).toBe(pod.expect.mac);
    expect(r.last!.mtu).toBe(pod.expect.mtu);
    expect(lease.mtu).toBe(pod.expect.mtu);
    expect(r.last!.hostname).toBe(`vm-${shape}`);
    expect(lease.dns).toEqual(pod.resolvConf.nameservers.filter((n) => !n.includes(':')));
    expect(r.last!.resolv.search).toEqual(pod.resolvConf.search);
    expect(lease.serverid).toMatch(/^169\.254\./);
    // Routes: the guest's table through eth0 equals the pod's (kernel routes
    // for the guest's own subnet included: it has one exactly when the pod does).
    const guestRoutes = r.last!.routes.filter((x) => x.dev === 'eth0').map((x) => `${dst(x.dst)} via ${x.gateway ?? 'link'}`).sort();
    expect(guestRoutes).toEqual(podRoutes(pod));
    expect(r.last!.addresses.map((a) => a.local)).toEqual([pod.podIP]);

    // A real lease that really renews: the guest's first request after the
    // lease is its unicast to the server identifier, which podtap takes off
    // the TAP and ACKs as a renewal (RFC 2131 RENEWING). A broadcast
    // REBINDING may follow: busybox udhcpc sends the unicast from a socket
    // bound to ciaddr:68 and closes it only after writing, so an ACK that
    // comes back within a millisecond can land on that socket and be lost
    // (a race of the client, seen in captures on the TAP; the guest then
    // rebinds and podtap ACKs again).
    expect(r.renewals, run.serial).toBeGreaterThanOrEqual(1);
    const acks = run.stderr.split('\n').filter((l) => /dhcp: ACK \((renewing|rebinding)\)/.test(l));
    expect(acks[0], run.stderr).toMatch(/ACK \(renewing\) nic=0 /);
    for (const t of targets) expect(r.pings.find((p) => p.target === t)?.ok, `ping ${t}`).toBe(true);

    // The node never saw a DHCP packet, in either direction.
    expect(dhcpLines.filter((l) => /\.6[78][: ]/.test(l))).toEqual([]);

    expect(run.exitCode, run.stderr).toBe(0);
    expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
  });
});
