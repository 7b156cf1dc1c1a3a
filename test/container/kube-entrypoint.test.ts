// init/pod-entrypoint.yaml, played by podman 4.3 (`podman kube play`) in a
// node namespace of the test's own: podtap is the container's entrypoint and
// wraps QEMU. The manifest is played as shipped but for what a test machine
// must change (test/container/kube.ts): the image is the qemu target built
// from this checkout (by ID), the disk volume (the claim) holds the test
// guest's kernel and initramfs instead of disk.qcow2, QEMU's other arguments
// boot them under TCG, and the manifest's own -netdev and -device arguments
// give the NIC.
//
// What it shows:
// - the guest gets the address podman assigned to the pod by DHCP and pings
//   the pod's gateway; the readiness probe's command passes and prints the
//   ready line (podman 4.3 never runs readiness probes: the test runs the
//   command in the container, as kubelet would);
// - the state volume does its job: after kill -9 of podtap (the container's
//   process 1, so QEMU dies too) podman restarts the container, the new
//   podtap finds the journal, makes the TAP again and boots the VM, which
//   gets the same address;
// - SIGTERM (podman stop, 30 s grace) goes to QEMU, then podtap restores the
//   pod's namespace exactly (a snapshot taken before the container started)
//   and exits 0;
// - `kube down` then leaves nothing in the node namespace, and the engine's
//   cleanup finds nothing either.
// Also: the image's entrypoint passes podtap's commands and options through
// and wraps anything else in `podtap run --`.

import { describe, expect, it } from 'vitest';
import { createNodeEngine, podmanUnavailable } from '../helpers/engine.ts';
import { buildGuest, guestQemuArgs } from '../helpers/guest.ts';
import { pidsIn, run } from '../helpers/netns.ts';
import type { ReadyLine } from '../helpers/podtap.ts';
import { diffSnapshots, snapshot, type Snapshot } from '../helpers/snapshot.ts';
import {
  copyBootMedia,
  containerOf,
  diskOf,
  documentedBuild,
  envOf,
  forEngine,
  guestSince,
  jsonLog,
  killAndAdopt,
  kubeSuite,
  leftIn,
  logsOf,
  mountOf,
  podmanGateway,
  play,
  stateOf,
  until,
  untilReady,
  volumeOf,
  withManifestNic,
} from './kube.ts';

const why = podmanUnavailable();
if (why) console.warn(`test/container/kube-entrypoint.test.ts: skipped: ${why}`);

describe.skipIf(why !== undefined)(why ? `init/pod-entrypoint.yaml in podman (skipped: ${why})` : 'init/pod-entrypoint.yaml in podman', () => {
  const suite = kubeSuite('pod-entrypoint.yaml', ['qemu']);
  const { cleanup, images } = suite;

  it('the manifest runs the qemu image the docs build, with NET_ADMIN, the tun device, its state on a volume and a readiness probe on the ready file there', async () => {
    const manifest = suite.manifest;
    const vm = containerOf(manifest, 'vm');
    expect(vm.image).toBe('podtap-qemu:latest');
    expect(await documentedBuild(vm.image), 'the README builds the image the manifest names').toMatch(/--target qemu -t podtap-qemu:latest \./);
    expect(vm.securityContext?.capabilities).toEqual({ add: ['NET_ADMIN'] });
    expect(vm.securityContext).not.toHaveProperty('privileged');
    expect(volumeOf(manifest, 'tun').hostPath).toEqual({ path: '/dev/net/tun', type: 'CharDevice' });
    expect(mountOf(vm, 'tun')).toBe('/dev/net/tun');
    // The state dir is a subdirectory (podtap's own) of a volume that outlives the container.
    const stateDir = envOf(vm, 'PODTAP_STATE_DIR')!;
    const stateMount = mountOf(vm, 'state');
    expect(volumeOf(manifest, 'state').emptyDir).toBeDefined();
    expect(stateDir.startsWith(`${stateMount}/`)).toBe(true);
    expect(vm.readinessProbe?.exec.command).toEqual(['cat', `${stateDir}/ready`]);
  });

  it('kube play: the TCG guest gets the pod\'s address by DHCP and pings the gateway, the readiness probe passes; after kill -9 the restarted container adopts the journal and boots the VM again; SIGTERM restores the namespace exactly (exit 0); kube down leaves nothing', async () => {
    const guest = await buildGuest();
    const { engine, dir } = await suite.node();
    const gateway = await podmanGateway(engine);

    const m = forEngine(suite.manifest, engine);
    const vm = containerOf(m, 'vm');
    vm.image = images.qemu.id;
    // The disk volume as shipped (a claim), holding the test guest's kernel
    // and initramfs instead of disk.qcow2. The guest pings until the test is
    // done with it; it powers itself off after guestTimeout whatever happens.
    const disk = diskOf(m, 'vm');
    vm.args = withManifestNic(vm.args!, guestQemuArgs({ guest: disk, net: 'dhcp', ping: [gateway], mode: 'ping-forever', guestTimeout: 240 }));

    // podman 4.3 plays a pod with exit policy "stop": once its last
    // container has exited, it stops the infra container and the pod's
    // namespace goes. An idle container keeps it, so that the namespace can
    // be compared after podtap's exit; it is running (and so part of the
    // snapshot) from before podtap starts.
    m.spec.containers.push({ name: 'hold', image: images.qemu.id, command: ['sleep', 'infinity'] });
    let before: Snapshot | undefined;
    const pod = await play(engine, m, dir, {
      beforeStart: async (net) => {
        await copyBootMedia(engine, disk.volume, guest);
        await engine.podman(['start', `${m.metadata.name}-hold`]);
        before = await snapshot(net.netns);
      },
    });
    const c = pod.container('vm');
    const started = Date.now();
    expect(pod.net.gateway).toBe(gateway);

    // Ready: the probe's command passes and shows the pod's identity, handed to the VM.
    const ready = JSON.parse(await untilReady(engine, pod, 'vm')) as ReadyLine;
    expect(ready).toMatchObject({ event: 'ready', mac: pod.net.mac, ip: `${pod.net.ip}/${pod.net.prefix}`, gateway, adopted: false });
    // What podman itself makes of the probe: nothing (the README says so).
    const hc = await engine.podman(['healthcheck', 'run', c], { reject: false });
    expect(hc.stderr).toMatch(/has no defined healthcheck/);

    const booted = (since: number) =>
      until('the guest\'s lease and three pings', 120_000, async () => {
        const r = await guestSince(engine, c, since);
        return r.lease && r.ticks.filter((t) => t.ok).length >= 3 ? r : r.errors.length ? r : undefined;
      });
    const first = await booted(started);
    expect(first.errors).toEqual([]);
    expect(first.last?.mac).toBe(pod.net.mac);
    expect(first.lease?.ip).toBe(pod.net.ip);
    expect(first.last?.addresses.map((a) => `${a.local}/${a.prefixlen}`)).toEqual([`${pod.net.ip}/${pod.net.prefix}`]);
    expect(first.ticks.slice(0, 3)).toEqual([1, 2, 3].map((n) => expect.objectContaining({ n, target: gateway, ok: true })));

    // kill -9 of podtap: the container's process 1, so QEMU goes with it.
    // podman restarts the container (restartPolicy Always); the journal on
    // the state volume tells the new podtap what it set up.
    const { pid, restarts } = await stateOf(engine, c);
    expect(restarts).toBe(0);
    expect((await run('cat', [`/proc/${pid}/cmdline`])).stdout.split('\0')).toEqual(expect.arrayContaining(['/opt/podtap/init/../dist/podtap.mjs', 'run']));
    const killedAt = Date.now();
    const again = await killAndAdopt(engine, pod, 'vm', pid);
    expect(again).toMatchObject({ event: 'ready', mac: pod.net.mac, ip: `${pod.net.ip}/${pod.net.prefix}`, adopted: true });
    const log = jsonLog((await logsOf(engine, c, killedAt)).stderr);
    expect(log.find((l) => l.msg === 'adopted the running setup'), JSON.stringify(log)).toBeDefined();
    const second = await booted(killedAt);
    expect(second.errors).toEqual([]);
    expect(second.lease?.ip).toBe(pod.net.ip);
    expect(second.ticks.slice(0, 3).every((t) => t.ok && t.target === gateway)).toBe(true);

    // SIGTERM with time to act (what Kubernetes does when the pod is
    // deleted; see kube.ts for why not `kube down` alone): QEMU first, then
    // podtap restores the namespace and exits with QEMU's status. The pod's
    // namespace is still there: the infra container holds it.
    const stoppedAt = Date.now();
    await engine.podman(['stop', '--time', '30', c]);
    const stopped = await stateOf(engine, c);
    const tail = jsonLog((await logsOf(engine, c, stoppedAt)).stderr);
    expect(stopped.exitCode, JSON.stringify(tail)).toBe(0);
    // IPv6 duplicate address detection may still be finishing on the restored address: said, not waited for.
    expect(tail.map((l) => l.msg)).toEqual(expect.arrayContaining(['forwarding SIGTERM to the VMM', 'the VMM exited', expect.stringMatching(/^namespace restored\b/)]));
    expect(tail.find((l) => l.msg === 'the VMM exited')?.status).toBe(0);
    // Not restarted: a stop is the user's.
    expect((await stateOf(engine, c)).status).toBe('exited');
    expect(diffSnapshots(before!, await snapshot(pod.net.netns))).toEqual([]);

    await engine.podman(['kube', 'down', pod.file]);
    expect((await engine.podman(['pod', 'exists', pod.name], { reject: false })).exitCode).toBe(1);
    for (const v of m.spec.volumes!.filter((x) => x.emptyDir)) expect((await engine.podman(['volume', 'exists', v.name], { reject: false })).exitCode, `volume ${v.name}`).toBe(1);
    const left = await leftIn(engine.ns);
    expect(left.links).toEqual(['lo']);
    expect(left.nft.filter((t) => /podtap/.test(t))).toEqual([]);
    expect(await pidsIn(engine.ns)).toEqual([]);
    const rules = (await run('ip', ['netns', 'exec', engine.ns, 'iptables-save'])).stdout;
    expect(rules.split('\n').filter((l) => l.includes(pod.net.ip))).toEqual([]);
    expect(await engine.removeAll()).toEqual([]);
    console.info(`kube-entrypoint: two boots, restart and teardown in ${Date.now() - started} ms`);
  });

  it('the image\'s entrypoint: podtap\'s commands and options pass through, anything else runs under `podtap run --`', async () => {
    const engine = await createNodeEngine(cleanup);
    const flags = ['--cap-add', 'NET_ADMIN', '--device', '/dev/net/tun', '--network', 'podman'];
    const runImage = async (args: string[]) => engine.podman(['run', '--rm', '--name', engine.container(), ...flags, images.qemu.id, ...args], { reject: false });

    const version = await runImage(['--version']);
    expect(version.stdout).toMatch(/^podtap \d+\.\d+\.\d+$/);
    // Nobody serves status in a fresh container: status says so, exit 1.
    const status = await runImage(['status']);
    expect(status.exitCode).toBe(1);
    expect(status.stdout).toMatch(/^podtap is not answering on \/run\/podtap\/status\.sock/);
    // A VMM command line: podtap sets up, runs it with the TAP at fd 3, and
    // exits with its status after restoring the namespace.
    const wrapped = await runImage(['sh', '-c', 'ls -l /proc/self/fd/3 >&2; exit 7']);
    expect(wrapped.exitCode, wrapped.stderr).toBe(7);
    expect(wrapped.stderr).toMatch(/\/proc\/self\/fd\/3 -> \/dev\/net\/tun/);
    expect(wrapped.stderr).toMatch(/namespace restored/);
    expect(await engine.removeAll()).toEqual([]);
  });
});
