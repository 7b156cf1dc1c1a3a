// podtap's container image under a real container engine: Debian's podman
// 4.3 with runc and netavark, each test in a node namespace of its own (see
// test/helpers/engine.ts). The images are built from this checkout on the
// stand-in base (test/container/images.ts), and run the way the README's
// Deployment section says: `--cap-add NET_ADMIN --device /dev/net/tun`, not
// privileged. That gives podtap what Kubernetes gives it: a veth named eth0
// with the address the engine's IPAM chose, a read-only /proc/sys, and the
// default capability set plus NET_ADMIN.

import { readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CONTAINERS_CONF, createNodeEngine, podmanUnavailable, REPO_ROOT, type NodeEngine, type PodmanProcess } from '../helpers/engine.ts';
import { buildGuest, guestQemuArgs, runGuest } from '../helpers/guest.ts';
import { Cleanup } from '../helpers/netns.ts';
import type { ReadyLine } from '../helpers/podtap.ts';
import { diffSnapshots, snapshot, waitSettled } from '../helpers/snapshot.ts';
import { buildPodtapImage, ensureBaseImage, type BuiltImage } from './images.ts';

const why = podmanUnavailable();
if (why) console.warn(`test/container/image.test.ts: skipped: ${why}`);

// Exactly what the README asks of the engine; nothing more.
const README_FLAGS = ['--cap-add', 'NET_ADMIN', '--device', '/dev/net/tun'];
const VERSION = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const CAP_NET_ADMIN = 12n;
const CAP_SYS_ADMIN = 21n;

interface Network {
  ip: string;
  prefix: number;
  mac: string;
  gateway: string;
}

/** The address podman's IPAM gave a running container (or a pod's infra container). */
async function networkOf(engine: NodeEngine, container: string): Promise<Network & { sandbox: string }> {
  const r = await engine.podman(['container', 'inspect', '--format', '{{json .NetworkSettings}}', container]);
  const s = JSON.parse(r.stdout) as { SandboxKey: string; Networks: Record<string, { IPAddress: string; IPPrefixLen: number; MacAddress: string; Gateway: string }> };
  const nets = Object.values(s.Networks ?? {});
  expect(nets, `networks of ${container}: ${r.stdout}`).toHaveLength(1);
  const n = nets[0]!;
  expect(n.IPAddress, `podman assigned no address to ${container}`).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
  return { ip: n.IPAddress, prefix: n.IPPrefixLen, mac: n.MacAddress, gateway: n.Gateway, sandbox: s.SandboxKey };
}

/** The parts of `podtap inspect`'s report these tests read. */
interface InspectReport {
  chosen: string[];
  interfaces: {
    interface: string;
    kind: string;
    mac: string;
    vm: { mac: string; ipv4: { address: string; prefixlen: number; gateway?: string } | null } | null;
  }[];
}

interface Mount {
  mountPoint: string;
  options: string[]; // per-mount options (field 6), e.g. ro, nosuid
}

function parseMountinfo(text: string): Mount[] {
  return text
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const f = line.split(' ');
      return { mountPoint: f[4] ?? '', options: (f[5] ?? '').split(',') };
    });
}

function ipv4ToInt(ip: string): number {
  return ip.split('.').reduce((n, o) => n * 256 + Number(o), 0);
}

function sameSubnet(a: string, b: string, prefix: number): boolean {
  const shift = 32 - prefix;
  return Math.floor(ipv4ToInt(a) / 2 ** shift) === Math.floor(ipv4ToInt(b) / 2 ** shift);
}

interface Attached {
  /** podtap's ready line; rejects if the container exits first or takes too long. */
  ready: Promise<ReadyLine>;
  stderr(): string;
}

/** Follows an attached container's output (`podman start --attach`). */
function follow(proc: PodmanProcess, timeoutMs: number): Attached {
  let out = '';
  let err = '';
  proc.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const ready = new Promise<ReadyLine>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ready line after ${timeoutMs} ms; stderr:\n${err}`)), timeoutMs);
    proc.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n').find((l) => l.startsWith('{"event":"ready"'));
      if (line) {
        clearTimeout(timer);
        resolve(JSON.parse(line) as ReadyLine);
      }
    });
    void proc.then((r) => {
      clearTimeout(timer);
      reject(new Error(`the container exited (${r.exitCode ?? r.signal}) before podtap was ready; its stderr:\n${err}${out ? `\nstdout:\n${out}` : ''}`));
    });
  });
  ready.catch(() => {});
  return { ready, stderr: () => err };
}

describe.skipIf(why !== undefined)(why ? `podtap's image in podman (skipped: ${why})` : "podtap's image in podman", () => {
  const cleanup = new Cleanup();
  afterEach(() => cleanup.cleanupAll());
  let agent: BuiltImage;
  let qemu: BuiltImage;

  beforeAll(async () => {
    const base = await ensureBaseImage();
    agent = await buildPodtapImage('agent');
    qemu = await buildPodtapImage('qemu');
    console.info(
      `images: base ${base.built ? 'built' : 'reused'} in ${base.ms} ms; ` +
        [agent, qemu].map((b) => `${b.target} ${b.id.slice(0, 12)} in ${b.ms} ms (${b.cachedSteps} steps cached)`).join('; '),
    );
  }, 1_800_000);

  it('agent image: podtap runs on the image\'s Node 24, /proc/sys is read-only, and inspect finds eth0 with the address podman assigned', async () => {
    const engine = await createNodeEngine(cleanup);
    const c = engine.container();
    // A long-lived container with the README's flags; podtap runs in it by exec.
    await engine.podman(['run', '--detach', '--name', c, ...README_FLAGS, '--entrypoint', 'sleep', agent.id, 'infinity']);
    const exec = async (argv: string[]) => (await engine.podman(['exec', c, ...argv])).stdout;
    const net = await networkOf(engine, c);

    // The image's own Node 24 on PATH is the only Node there is: the launcher
    // takes node_modules/node first, and refuses a Node older than 24.
    expect(await exec(['node', '--version'])).toMatch(/^v24\.\d+\.\d+$/);
    expect((await exec(['sh', '-c', 'command -v node; ls /opt/podtap'])).split('\n')).toEqual(['/usr/local/bin/node', 'dist', 'init', 'package.json']);
    expect(await exec(['podtap', '--version'])).toBe(`podtap ${VERSION}`);

    // Not privileged: NET_ADMIN added, SYS_ADMIN not there.
    const capEff = BigInt(`0x${/^CapEff:\s*([0-9a-f]+)$/m.exec(await exec(['cat', '/proc/self/status']))?.[1] ?? 'x'}`);
    expect((capEff >> CAP_NET_ADMIN) & 1n).toBe(1n);
    expect((capEff >> CAP_SYS_ADMIN) & 1n).toBe(0n);

    // /proc/sys is mounted read-only, as in every unprivileged container:
    // podtap cannot write a sysctl there.
    const procSys = parseMountinfo(await exec(['cat', '/proc/self/mountinfo'])).filter((m) => m.mountPoint === '/proc/sys');
    expect(procSys.length, 'a /proc/sys mount').toBeGreaterThan(0);
    expect(procSys.at(-1)!.options, 'the /proc/sys mount on top').toContain('ro');

    // podtap inspect chooses the container's eth0 and would hand the VM
    // exactly what podman set up there.
    const report = JSON.parse(await exec(['podtap', 'inspect'])) as InspectReport;
    expect(report.chosen).toEqual(['eth0']);
    expect(report.interfaces.find((i) => i.interface === 'eth0')).toMatchObject({
      kind: 'veth',
      mac: net.mac,
      vm: { mac: net.mac, ipv4: { address: net.ip, prefixlen: net.prefix, gateway: net.gateway } },
    });

    // The same through the image's entrypoint, as the README runs it (a new
    // container: its own address, from the same network).
    const viaEntrypoint = JSON.parse((await engine.podman(['run', '--rm', '--name', engine.container(), ...README_FLAGS, agent.id, 'inspect'])).stdout) as InspectReport;
    expect(viaEntrypoint.chosen).toEqual(['eth0']);
    const v4 = viaEntrypoint.interfaces.find((i) => i.interface === 'eth0')?.vm?.ipv4;
    expect(v4, JSON.stringify(viaEntrypoint)).toMatchObject({ prefixlen: net.prefix, gateway: net.gateway });
    expect(sameSubnet(v4!.address, net.ip, net.prefix), `${v4!.address} in ${net.ip}/${net.prefix}`).toBe(true);

    expect(await engine.removeAll()).toEqual([]);
  });

  /** A pod whose infra container holds the network namespace, started, and that namespace settled. */
  async function startPod(engine: NodeEngine) {
    const pod = engine.pod();
    await engine.podman(['pod', 'create', '--name', pod, '--network', 'podman']);
    await engine.podman(['pod', 'start', pod]);
    const infra = (await engine.podman(['pod', 'inspect', '--format', '{{.InfraContainerID}}', pod])).stdout.trim();
    const net = await networkOf(engine, infra);
    const netns = basename(net.sandbox);
    await waitSettled(netns);
    return { pod, net, netns };
  }

  it('agent image: podtap up in a pod\'s container becomes ready with the pod\'s address and restores the namespace on SIGTERM (exit 0)', async () => {
    const engine = await createNodeEngine(cleanup);
    // A pod, as Kubernetes makes one: the infra container holds the network
    // namespace, so it outlives podtap's container and can be compared.
    const { pod, net, netns: podNetns } = await startPod(engine);
    const before = await snapshot(podNetns);

    const c = engine.container();
    await engine.podman(['create', '--pod', pod, '--name', c, ...README_FLAGS, agent.id, 'up']);
    const proc = engine.start(['start', '--attach', c]);
    const attached = follow(proc, 60_000);
    const ready = await attached.ready;
    // The VM gets the pod's identity; how the frames get to the TAP (bridge
    // or redirect data path) is podtap's choice.
    expect(ready).toMatchObject({ event: 'ready', mac: net.mac, ip: `${net.ip}/${net.prefix}`, gateway: net.gateway, tap: 'tap0' });
    const readyFile = JSON.parse((await engine.podman(['exec', c, 'cat', '/run/podtap/ready'])).stdout) as ReadyLine;
    expect(readyFile).toEqual(ready);

    await engine.podman(['kill', '--signal', 'TERM', c]);
    const exited = await Promise.race([proc, new Promise<undefined>((r) => setTimeout(r, 30_000, undefined))]);
    expect(exited, `podtap still running 30 s after SIGTERM; stderr:\n${attached.stderr()}`).toBeDefined();
    expect(exited!.exitCode, `stderr:\n${attached.stderr()}`).toBe(0);
    expect((await engine.podman(['container', 'inspect', '--format', '{{.State.ExitCode}}', c])).stdout).toBe('0');

    const after = await snapshot(podNetns);
    expect(diffSnapshots(before, after)).toEqual([]);
    expect(await engine.removeAll()).toEqual([]);
  });

  it('qemu image: the entrypoint wraps QEMU, whose TCG guest gets the pod\'s address by DHCP and reaches its gateway; QEMU\'s exit 0 ends podtap with 0 and the namespace restored', async () => {
    const guest = await buildGuest();
    const engine = await createNodeEngine(cleanup);
    const { pod, net, netns: podNetns } = await startPod(engine);
    const before = await snapshot(podNetns);

    // The entrypoint pattern (init/pod-entrypoint.yaml): the container's
    // arguments are the VMM's command line, and podtap wraps it. The NIC
    // keeps its default option ROM (efi-virtio.rom): the image must have it.
    const vmm = [
      ...guestQemuArgs({ guest: { kernel: '/vm/kernel', initrd: '/vm/initrd' }, net: 'dhcp', ping: [net.gateway], guestTimeout: 90 }),
      '-netdev', 'tap,id=n0,fd={fd}',
      '-device', 'virtio-net-pci,netdev=n0,mac={mac}',
    ];
    const c = engine.container();
    const argv = engine.argv([
      'run', '--name', c, '--pod', pod, ...README_FLAGS,
      '--volume', `${guest.kernel}:/vm/kernel:ro`, '--volume', `${guest.initrd}:/vm/initrd:ro`,
      qemu.id, ...vmm,
    ]);
    const vm = await runGuest(argv, { timeoutMs: 180_000, env: { ...process.env, CONTAINERS_CONF } });
    expect(vm.reason, vm.stderr).toBe('done');
    expect(vm.report.errors, vm.stderr).toEqual([]);
    expect(vm.report.last?.mac).toBe(net.mac);
    expect(vm.report.lease?.ip, vm.stderr).toBe(net.ip);
    expect(vm.report.pings).toEqual([expect.objectContaining({ target: net.gateway, ok: true })]);
    // podman run's status is the container's, which is podtap's, which is QEMU's.
    expect(vm.exitCode, vm.stderr).toBe(0);
    expect((await engine.podman(['container', 'inspect', '--format', '{{.State.ExitCode}}', c])).stdout).toBe('0');

    const after = await snapshot(podNetns);
    expect(diffSnapshots(before, after)).toEqual([]);
    expect(await engine.removeAll()).toEqual([]);
  });
});
