// init/pod-sidecar.yaml, played by podman 4.3 (`podman kube play`) in a node
// namespace of the test's own: podtap (the agent image, NET_ADMIN, the tun
// device) serves the TAP fds on a socket in a shared emptyDir; the VMM
// container (the qemu image, uid 107, no capabilities, no tun device) fetches
// them with `podtap exec` and becomes QEMU. Both are regular containers and
// start together. The manifest is played as shipped but for the images (by
// ID), what is on the disk volume (the test guest's kernel and initramfs,
// booted by QEMU under TCG; test/container/kube.ts) and one variable: a 30 s
// lease, so that the guest renews within the test.
//
// What it shows:
// - the VMM side really has nothing: its process is QEMU itself, uid 107,
//   no effective capabilities, no /dev/net/tun; the guest still gets the
//   pod's address by DHCP and pings the gateway;
// - `podtap status` answers in the VMM container (the status socket is in
//   the shared volume): the fds were fetched once, the lease is bound;
// - kill -9 of podtap: podman restarts its container (restartPolicy), the
//   new podtap adopts the running VM from the journal in the state volume
//   (its own subdirectory, 0700), the guest never stops pinging and renews
//   its lease against the new podtap, which status then reports;
// - `podman pod stop` (SIGTERM to both, with time) then `kube down`: podtap
//   restores the namespace and exits 0, and nothing of podtap's is left in
//   the pod's namespace or anything in the node's.

import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { podmanUnavailable } from '../helpers/engine.ts';
import { buildGuest, guestQemuArgs } from '../helpers/guest.ts';
import { pidsIn, run } from '../helpers/netns.ts';
import type { ReadyLine } from '../helpers/podtap.ts';
import {
  copyBootMedia,
  containerOf,
  diskOf,
  documentedBuild,
  envOf,
  exitStatuses,
  forEngine,
  guestSince,
  holdNetns,
  jsonLog,
  killAndAdopt,
  kubeSuite,
  leftIn,
  logsOf,
  mountOf,
  podmanGateway,
  play,
  setEnv,
  stateOf,
  until,
  untilReady,
  volumeOf,
  withManifestNic,
} from './kube.ts';

const why = podmanUnavailable();
if (why) console.warn(`test/container/kube-sidecar.test.ts: skipped: ${why}`);

const CAP_NET_ADMIN = 12n;

function procStatus(pid: number): { uid: string; capEff: bigint } {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  return { uid: /^Uid:\s+(\d+)/m.exec(text)![1]!, capEff: BigInt(`0x${/^CapEff:\s*([0-9a-f]+)$/m.exec(text)![1]}`) };
}

describe.skipIf(why !== undefined)(why ? `init/pod-sidecar.yaml in podman (skipped: ${why})` : 'init/pod-sidecar.yaml in podman', () => {
  const suite = kubeSuite('pod-sidecar.yaml', ['agent', 'qemu']);
  const { cleanup, images } = suite;

  it('the manifest: podtap (agent image) has NET_ADMIN and the tun device; the VMM (qemu image) runs as uid 107 with no capabilities and no tun device; both name the same sockets in the shared volume; the state is a subdirectory of its own volume', async () => {
    const manifest = suite.manifest;
    const podtap = containerOf(manifest, 'podtap');
    const vmm = containerOf(manifest, 'vmm');
    expect(podtap.image).toBe('podtap:latest');
    expect(vmm.image).toBe('podtap-qemu:latest');
    expect(await documentedBuild(podtap.image)).toMatch(/ -t podtap:latest \.$/);
    expect(await documentedBuild(vmm.image)).toMatch(/--target qemu -t podtap-qemu:latest \./);
    expect(podtap.securityContext?.capabilities).toEqual({ add: ['NET_ADMIN'] });
    expect(mountOf(podtap, 'tun')).toBe('/dev/net/tun');
    expect(vmm.securityContext).toMatchObject({ runAsUser: 107, runAsNonRoot: true, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } });
    expect(vmm.securityContext?.capabilities?.add).toBeUndefined();
    expect(vmm.volumeMounts?.map((v) => v.name)).not.toContain('tun');
    expect(vmm.command).toEqual(['podtap', 'exec', '--']);
    for (const v of ['PODTAP_FD_SOCKET', 'PODTAP_STATUS_SOCKET']) {
      expect(envOf(vmm, v), v).toBe(envOf(podtap, v));
      expect(envOf(podtap, v)!.startsWith(`${mountOf(podtap, 'fds')}/`), v).toBe(true);
    }
    expect(mountOf(vmm, 'fds')).toBe(mountOf(podtap, 'fds'));
    // The sockets' group is the VMM's: podtap runs with it as its group.
    expect(envOf(podtap, 'PODTAP_FD_SOCKET_MODE')).toBe('0660');
    expect(podtap.securityContext?.runAsGroup).toBe(vmm.securityContext?.runAsGroup);
    const stateDir = envOf(podtap, 'PODTAP_STATE_DIR')!;
    expect(stateDir.startsWith(`${mountOf(podtap, 'state')}/`)).toBe(true);
    expect(volumeOf(manifest, 'state').emptyDir).toBeDefined();
    expect(podtap.readinessProbe?.exec.command).toEqual(['cat', `${stateDir}/ready`]);
    // Regular containers, not init containers: podman 4.3 would wait forever for a native sidecar.
    expect(manifest.spec.initContainers).toBeUndefined();
  });

  it('kube play: the unprivileged VMM gets the TAP over the socket and its guest the pod\'s address; podtap status answers in the VMM container; kill -9 of podtap: the restarted podtap adopts the running VM, whose pings go on and whose lease renews against it; pod stop restores the namespace', async () => {
    const guest = await buildGuest();
    const { engine, dir } = await suite.node();
    const gateway = await podmanGateway(engine);

    const m = forEngine(suite.manifest, engine);
    const podtap = containerOf(m, 'podtap');
    const vmm = containerOf(m, 'vmm');
    podtap.image = images.agent.id;
    vmm.image = images.qemu.id;
    // udhcpc renews at half the lease (and not sooner than 15 s).
    setEnv(podtap, 'PODTAP_LEASE_TIME', '30');
    // The disk claim as shipped, holding the test guest's kernel and initramfs.
    const disk = diskOf(m, 'vmm');
    vmm.args = withManifestNic(vmm.args!, guestQemuArgs({ guest: disk, net: 'dhcp', ping: [gateway], mode: 'ping-forever', guestTimeout: 240 }));

    const pod = await play(engine, m, dir, { beforeStart: () => copyBootMedia(engine, disk.volume, guest) });
    const started = Date.now();
    const cp = pod.container('podtap');
    const cv = pod.container('vmm');
    const held = await holdNetns(pod, engine, cleanup);
    const ready = JSON.parse(await untilReady(engine, pod, 'podtap')) as ReadyLine;
    expect(ready).toMatchObject({ event: 'ready', mac: pod.net.mac, ip: `${pod.net.ip}/${pod.net.prefix}`, gateway, adopted: false, fdSocket: envOf(podtap, 'PODTAP_FD_SOCKET') });

    const first = await until('the guest\'s lease and five pings', 120_000, async () => {
      const r = await guestSince(engine, cv, started);
      return (r.lease && r.ticks.filter((t) => t.ok).length >= 5) || r.errors.length ? r : undefined;
    });
    expect(first.errors).toEqual([]);
    expect(first.lease?.ip).toBe(pod.net.ip);
    expect(first.last?.mac).toBe(pod.net.mac);
    expect(first.ticks.every((t) => t.ok && t.target === gateway)).toBe(true);

    // The VMM container's process is QEMU itself (podtap exec became it), an
    // ordinary user with no capability, and there is no tun device there.
    const vmmPid = (await stateOf(engine, cv)).pid;
    expect(readFileSync(`/proc/${vmmPid}/cmdline`, 'utf8').split('\0')[0]).toBe('qemu-system-x86_64');
    const vmmProc = procStatus(vmmPid);
    expect(vmmProc.uid).toBe('107');
    expect(vmmProc.capEff).toBe(0n);
    expect((await engine.podman(['exec', cv, 'test', '-e', '/dev/net/tun'], { reject: false })).exitCode).toBe(1);
    const vmmLog = (await logsOf(engine, cv)).stderr;
    expect(vmmLog).toMatch(/fetched the TAP fds/);
    // podtap's own process: root with NET_ADMIN, and the VMM's group.
    const podtapPid = (await stateOf(engine, cp)).pid;
    expect((procStatus(podtapPid).capEff >> CAP_NET_ADMIN) & 1n).toBe(1n);
    expect(/^Gid:\s+(\d+)/m.exec(readFileSync(`/proc/${podtapPid}/status`, 'utf8'))![1]).toBe('107');

    // podtap status from the VMM container, through the shared volume.
    const status1 = (await engine.podman(['exec', cv, 'podtap', 'status'])).stdout.split('\n');
    expect(status1[0]).toMatch(/^podtap \S+ pid 1, ready \d+s ago$/);
    expect(status1[1]).toBe(`hand-off: serving fds on ${envOf(podtap, 'PODTAP_FD_SOCKET')}: fetched 1 time`);
    // (A renewal may already have come on a slow machine: at half the 30 s lease.)
    expect(status1).toContainEqual(expect.stringMatching(/^ {2}DHCPv4: bound \d+s ago(, 1 renewal)?$/));
    expect(status1).toContain('  guard dropped nothing');

    // The state: podtap's own subdirectory of the volume, which survives the container.
    const stateDir = envOf(podtap, 'PODTAP_STATE_DIR')!;
    expect((await engine.podman(['exec', cp, 'stat', '-c', '%u %a %F', stateDir])).stdout).toBe('0 700 directory');

    // kill -9 of podtap (its container's process 1), from outside: podman
    // restarts the container and the new podtap adopts the running VM.
    const killedAt = Date.now();
    const adopted = await killAndAdopt(engine, pod, 'podtap', podtapPid);
    expect(adopted).toMatchObject({ mac: pod.net.mac, ip: `${pod.net.ip}/${pod.net.prefix}`, adopted: true });
    expect(jsonLog((await logsOf(engine, cp, killedAt)).stderr).find((l) => l.msg === 'adopted the running setup')).toMatchObject({ tapsHeldByVmm: 1 });
    // The VMM did not notice: same process.
    expect((await stateOf(engine, cv)).pid).toBe(vmmPid);

    // Right after the adoption, status says what that means.
    const status2 = (await engine.podman(['exec', cv, 'podtap', 'status'])).stdout.split('\n');
    expect(status2[0]).toMatch(/^podtap \S+ pid 1, ready \d+s ago \(adopted a running VM\)$/);
    expect(status2[1]).toBe(`hand-off: serving fds on ${envOf(podtap, 'PODTAP_FD_SOCKET')}: the running VMM holds the TAP (podtap adopted it); a restarted VMM fetches it again here`);

    const renewed = await until('a renewal after the restart', 90_000, async () => {
      const r = await guestSince(engine, cv, killedAt);
      return r.dhcp.some((e) => e.event === 'renew' && e.complete) && r.ticks.length >= 12 ? r : undefined;
    });
    expect(renewed.errors).toEqual([]);
    expect(renewed.lease).toMatchObject({ event: 'renew', ip: pod.net.ip, serverid: ready.linkLocal.split('/')[0] });
    // Pings across the restart: the data path is the kernel's, podtap's
    // death costs at most a couple.
    expect(renewed.ticks.filter((t) => !t.ok).length, JSON.stringify(renewed.ticks)).toBeLessThanOrEqual(2);
    expect(renewed.ticks.slice(-5).every((t) => t.ok)).toBe(true);

    const doc = JSON.parse((await engine.podman(['exec', cv, 'podtap', 'status', '--json'])).stdout) as {
      podtap: { adopted: boolean };
      handoff: { mode: string; fetches: number; fdsHeld: number[] };
      nics: { ip: string; dhcp4: { state: string; renewals: number } }[];
    };
    expect(doc.podtap.adopted).toBe(true);
    expect(doc.handoff).toMatchObject({ mode: 'fd-socket', fetches: 0, fdsHeld: [0] });
    expect(doc.nics[0]).toMatchObject({ ip: `${pod.net.ip}/${pod.net.prefix}`, dhcp4: { state: 'bound' } });
    expect(doc.nics[0]!.dhcp4.renewals).toBeGreaterThanOrEqual(1);
    expect((await engine.podman(['exec', cv, 'podtap', 'status'])).stdout.split('\n')).toContainEqual(expect.stringMatching(/^ {2}DHCPv4: bound \d+s ago, \d+ renewals?$/));

    // Deleting the pod, as Kubernetes does: SIGTERM to both containers,
    // with time; podtap restores the namespace and exits 0. Then kube down.
    const podtapId = await pod.id('podtap');
    const stoppedAt = Date.now();
    await engine.podman(['pod', 'stop', '--time', '30', pod.name]);
    const tail = jsonLog((await logsOf(engine, cp, stoppedAt)).stderr).map((l) => l.msg);
    expect(tail).toEqual(expect.arrayContaining(['SIGTERM: tearing down', expect.stringMatching(/^namespace restored\b/)]));
    await engine.podman(['kube', 'down', pod.file]);
    expect(await exitStatuses(engine, podtapId, started)).toEqual([137, 0]); // the kill -9, then the SIGTERM

    // The pod's namespace, kept by the test: podman took its veth, and nothing of podtap's is there.
    expect(await leftIn(held)).toEqual({ links: ['lo'], addresses: ['lo 127.0.0.1/8', 'lo ::1/128'], routes: expect.any(Array), nft: [] });
    expect((await leftIn(held)).routes.filter((r) => !/ dev lo$/.test(r))).toEqual([]);
    // The node's: nothing.
    expect((await leftIn(engine.ns)).links).toEqual(['lo']);
    expect(await pidsIn(engine.ns)).toEqual([]);
    const rules = (await run('ip', ['netns', 'exec', engine.ns, 'iptables-save'])).stdout;
    expect(rules.split('\n').filter((l) => l.includes(pod.net.ip))).toEqual([]);
    expect(await engine.removeAll()).toEqual([]);
    console.info(`kube-sidecar: boot, adoption, renewal and teardown in ${Date.now() - started} ms`);
  });
});
