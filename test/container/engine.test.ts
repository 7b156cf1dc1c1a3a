// The container-engine helpers themselves (test/helpers/engine.ts): podman
// confined to a node namespace, cleanup by exact name that leaves nothing,
// leftovers reported, orphans of a killed test swept, and the root namespace
// kept out of it. Runs on the stand-in base image only (no podtap build).

import { execa } from 'execa';
import { existsSync, readFileSync } from 'node:fs';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createNodeEngine, hostPodman, podmanUnavailable, rootIptablesLeftovers, sweepEngineOrphans, CONTAINERS_CONF } from '../helpers/engine.ts';
import { Cleanup, deleteNetns, netnsExists, run } from '../helpers/netns.ts';
import { BASE_IMAGE, ensureBaseImage } from './images.ts';

const why = podmanUnavailable();
if (why) console.warn(`test/container/engine.test.ts: skipped: ${why}`);

/** Asks podman directly (root namespace, a read-only query) whether an object exists. */
async function exists(kind: 'container' | 'pod' | 'volume' | 'network', name: string): Promise<boolean> {
  const r = await run('podman', [kind, 'exists', name], { reject: false, env: { CONTAINERS_CONF } });
  if (r.exitCode > 1) throw new Error(`podman ${kind} exists ${name}: ${r.stderr}`);
  return r.exitCode === 0;
}

describe.skipIf(why !== undefined)(why ? `podman in node namespaces (skipped: ${why})` : 'podman in node namespaces', () => {
  const cleanup = new Cleanup();
  afterEach(() => cleanup.cleanupAll());

  beforeAll(async () => {
    await ensureBaseImage();
  }, 900_000);

  it('runs containers inside the node namespace and removes every container, pod, volume, network and namespace it made, by name', async () => {
    const mine = new Cleanup();
    const engine = await createNodeEngine(mine);
    const c = engine.container();
    const vol = engine.volume();
    const net = engine.network();
    const pod = engine.pod();
    await engine.podman(['volume', 'create', vol]);
    await engine.podman(['network', 'create', net]);
    // An anonymous volume too (--volume with a bare path), as an image VOLUME makes.
    await engine.podman(['run', '--detach', '--name', c, '--network', net, '--volume', `${vol}:/data`, '--volume', '/anon', BASE_IMAGE, 'sleep', 'infinity']);
    await engine.podman(['pod', 'create', '--name', pod]);
    await engine.podman(['run', '--detach', '--pod', pod, '--name', engine.container(), BASE_IMAGE, 'sleep', 'infinity']);
    const inspect = JSON.parse((await engine.podman(['container', 'inspect', c])).stdout) as {
      NetworkSettings: { SandboxKey: string };
      Mounts: { Type: string; Name: string; Destination: string }[];
    }[];
    const sandbox = inspect[0]!.NetworkSettings.SandboxKey;
    const anon = inspect[0]!.Mounts.find((m) => m.Destination === '/anon')!.Name;
    expect(existsSync(sandbox)).toBe(true);

    // The network's bridge and chains are in the node namespace, not the root one.
    const links = (await run('ip', ['-n', engine.ns, '-j', 'link', 'show', 'type', 'bridge'])).stdout;
    expect((JSON.parse(links) as { ifname: string }[]).length).toBe(2); // podman0 (the pod) and the test network's
    expect((await run('ip', ['-j', 'link', 'show', 'type', 'bridge'])).stdout).not.toMatch(/podman/);
    expect(rootIptablesLeftovers()).toEqual([]);

    await mine.cleanupAll();
    expect(netnsExists(engine.ns)).toBe(false);
    expect(existsSync(sandbox)).toBe(false);
    for (const [kind, name] of [['container', c], ['pod', pod], ['volume', vol], ['volume', anon], ['network', net]] as const) {
      expect(await exists(kind, name), `${kind} ${name}`).toBe(false);
    }
    expect(rootIptablesLeftovers()).toEqual([]);
  });

  it('reports what is left behind: a process still in the node namespace', async () => {
    const engine = await createNodeEngine(cleanup);
    const stray = execa('nsenter', [`--net=${engine.netnsPath}`, '--', 'sleep', '300'], { reject: false });
    cleanup.pid(stray.pid!);
    // Until nsenter has become sleep.
    for (let i = 0; i < 100 && !readFileSync(`/proc/${stray.pid}/cmdline`, 'utf8').startsWith('sleep'); i++) await new Promise((r) => setTimeout(r, 20));
    const left = await engine.removeAll();
    expect(left).toEqual([expect.stringMatching(new RegExp(`^process ${stray.pid} \\(sleep 300\\) still in node namespace ${engine.ns}$`))]);
  });

  it('sweeps the containers, pods and volumes of a test process that died before its cleanup', async () => {
    // A "killed" test: its objects exist, its node namespace and owner record are gone.
    const dead = new Cleanup();
    const victim = await createNodeEngine(dead);
    const c = victim.container();
    const pod = victim.pod();
    const vol = victim.volume();
    await victim.podman(['volume', 'create', vol]);
    await victim.podman(['pod', 'create', '--name', pod]);
    await victim.podman(['run', '--detach', '--name', c, '--volume', `${vol}:/data`, BASE_IMAGE, 'sleep', 'infinity']);
    await deleteNetns(victim.ns); // what netns.ts's sweep or exit hook would do

    const engine = await createNodeEngine(cleanup, { sweep: false });
    const { swept, left } = await sweepEngineOrphans(engine);
    expect(swept.sort()).toEqual([c, pod, vol].sort());
    expect(left).toEqual([]);
    for (const [kind, name] of [['container', c], ['pod', pod], ['volume', vol]] as const) {
      expect(await exists(kind, name), `${kind} ${name}`).toBe(false);
    }
    // The dead test's cleanup never runs; its engine, asked, says why it cannot act.
    expect(await victim.removeAll()).toEqual([expect.stringMatching(new RegExp(`^node namespace ${victim.ns} is gone; not removed`))]);
  });

  it('refuses podman commands that could create networks in the root namespace', () => {
    expect(() => hostPodman(['run', BASE_IMAGE, 'true'])).toThrow(/node namespace/);
    expect(() => hostPodman(['kube', 'play', 'x.yaml'])).toThrow(/node namespace/);
    expect(() => hostPodman(['build', '.'])).toThrow(/--network host/);
    expect(() => hostPodman(['build', '--network', 'private', '.'])).toThrow(/--network host/);
  });
});
