// The pod fixtures and the snapshot are what every namespace test trusts, so
// they are tested for real here: each shape looks the way its CNI plugin (or
// Calico) makes it, reaches its node, snapshots compare equal when nothing
// changed and unequal when anything did, and cleanup leaves nothing behind.

import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { hostname as rootHostname } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Cleanup,
  createNetns,
  deleteNetns,
  listNetns,
  NETNS_ETC_DIR,
  STATE_DIR,
  netnsExists,
  nsExec,
  nsStateDir,
  pidsIn,
  pingFrom,
  processStartTime,
  run,
  startInPod,
  sweepOrphans,
} from '../helpers/netns.ts';
import { ALL_SHAPES, makePod, observePod, type Pod, type Shape } from '../helpers/pods.ts';
import { diffSnapshots, snapshot, waitSettled } from '../helpers/snapshot.ts';
import { startPodtap } from '../helpers/podtap.ts';
import { limiter } from '../helpers/limit.ts';

const cleanup = new Cleanup();
const created: string[] = [];
let rootLinksBefore: string[] = [];

async function rootLinks(): Promise<string[]> {
  const r = await run('ip', ['-j', 'link', 'show']);
  return (JSON.parse(r.stdout) as { ifname: string }[]).map((l) => l.ifname).sort();
}

const ip = (ns: string, ...args: string[]) => run('ip', ['-n', ns, ...args]);

/** Namespaces whose owner record names this test process. */
function ownedByMe(): string[] {
  if (!existsSync(STATE_DIR)) return [];
  return readdirSync(STATE_DIR).filter((n) => {
    try {
      return readFileSync(join(STATE_DIR, n, 'owner'), 'utf8').startsWith(`${process.pid} `);
    } catch {
      return false;
    }
  });
}

beforeAll(async () => {
  await sweepOrphans();
  rootLinksBefore = await rootLinks();
});

afterAll(async () => {
  await cleanup.cleanupAll();
  const left = (await listNetns()).filter((n) => created.includes(n));
  expect(left).toEqual([]);
  expect(ownedByMe()).toEqual([]);
  expect(await rootLinks()).toEqual(rootLinksBefore);
});

/** Something to change in a pod, the section it must show up in, and how to undo it. */
interface Mutation {
  name: string;
  apply: (p: Pod) => Promise<unknown>;
  revert: (p: Pod) => Promise<unknown>;
  shows: RegExp;
}

const MUTATIONS: Mutation[] = [
  {
    name: 'extra address',
    apply: (p) => ip(p.pod, 'addr', 'add', '10.99.0.1/32', 'dev', 'eth0'),
    revert: (p) => ip(p.pod, 'addr', 'del', '10.99.0.1/32', 'dev', 'eth0'),
    shows: /^addresses\.eth0: \+ inet 10\.99\.0\.1\/32/m,
  },
  {
    name: 'MTU',
    apply: (p) => ip(p.pod, 'link', 'set', 'eth0', 'mtu', '1400'),
    revert: (p) => ip(p.pod, 'link', 'set', 'eth0', 'mtu', String(p.expect.mtu)),
    shows: /^links\.eth0\.mtu: \d+ -> 1400$/m,
  },
  {
    name: 'route',
    apply: (p) => ip(p.pod, 'route', 'add', '10.98.0.0/16', 'dev', 'eth0', 'table', '100'),
    revert: (p) => ip(p.pod, 'route', 'del', '10.98.0.0/16', 'dev', 'eth0', 'table', '100'),
    shows: /^routes\.inet: \+ unicast 10\.98\.0\.0\/16 dev eth0 table 100/m,
  },
  {
    name: 'rule',
    apply: (p) => ip(p.pod, 'rule', 'add', 'pref', '100', 'from', '10.98.0.0/16', 'table', '100'),
    revert: (p) => ip(p.pod, 'rule', 'del', 'pref', '100'),
    shows: /^rules\.inet: \+ 100: src 10\.98\.0\.0/m,
  },
  {
    name: 'sysctl',
    apply: (p) => nsExec(p.pod, ['sysctl', '-qw', 'net.ipv4.conf.eth0.proxy_arp=1']),
    revert: (p) => nsExec(p.pod, ['sysctl', '-qw', 'net.ipv4.conf.eth0.proxy_arp=0']),
    shows: /^sysctls\.net\.ipv4\.conf\.eth0\.proxy_arp: "0" -> "1"$/m,
  },
  {
    name: 'nftables',
    apply: (p) => nsExec(p.pod, ['nft', 'add table bridge podtap_probe']),
    revert: (p) => nsExec(p.pod, ['nft', 'delete table bridge podtap_probe']),
    shows: /^nftables: \+ table bridge podtap_probe/m,
  },
  {
    name: 'proxy neighbour',
    apply: (p) => ip(p.pod, 'neigh', 'add', 'proxy', '10.98.0.1', 'dev', 'eth0'),
    revert: (p) => ip(p.pod, 'neigh', 'del', 'proxy', '10.98.0.1', 'dev', 'eth0'),
    shows: /^neighbours: \+ proxy 10\.98\.0\.1 dev eth0/m,
  },
  {
    name: 'qdisc',
    apply: (p) => run('tc', ['-n', p.pod, 'qdisc', 'add', 'dev', 'eth0', 'clsact']),
    // Kernel quirk: adding clsact to a device with txqlen 0 (CNI's veths)
    // sets txqlen to 1000, and deleting it does not set it back.
    revert: async (p) => {
      await run('tc', ['-n', p.pod, 'qdisc', 'del', 'dev', 'eth0', 'clsact']);
      await ip(p.pod, 'link', 'set', 'eth0', 'txqlen', String(p.shape === 'calico' || p.shape === 'jumbo' ? 1000 : 0));
    },
    shows: /^tc: \+ qdisc clsact ffff: dev eth0/m,
  },
];

function shapeChecks(shape: Shape, p: Pod, obs: Awaited<ReturnType<typeof observePod>>): void {
  // Literal facts about each shape, independent of pods.ts's own expectation
  // lists, so a wrong expectation cannot agree with itself.
  const v4 = obs.routes.filter((r) => r.family === 'inet');
  switch (shape) {
    case 'ptp':
      expect(obs.addresses).toEqual([expect.objectContaining({ local: '10.22.0.2', prefixlen: 16 })]);
      expect(v4).toContainEqual(expect.objectContaining({ dst: '10.22.0.0/16', gateway: '10.22.0.1' }));
      expect(v4).toContainEqual(expect.objectContaining({ dst: 'default', gateway: '10.22.0.1' }));
      // ptp deletes the kernel's connected route for the subnet.
      expect(v4.filter((r) => r.protocol === 'kernel')).toEqual([]);
      break;
    case 'bridge':
      expect(obs.addresses).toEqual([expect.objectContaining({ local: '10.21.0.2', prefixlen: 16 })]);
      expect(v4).toContainEqual(expect.objectContaining({ dst: '10.21.0.0/16', protocol: 'kernel', scope: 'link' }));
      expect(v4).toContainEqual(expect.objectContaining({ dst: 'default', gateway: '10.21.0.1' }));
      break;
    case 'calico':
      expect(obs.addresses).toEqual([expect.objectContaining({ local: '10.23.5.7', prefixlen: 32 })]);
      expect(v4).toEqual([
        expect.objectContaining({ dst: '169.254.1.1', scope: 'link' }),
        expect.objectContaining({ dst: 'default', gateway: '169.254.1.1' }),
      ]);
      expect(obs.mtu).toBe(1450);
      break;
    case 'dualstack':
      expect(obs.addresses).toContainEqual(expect.objectContaining({ family: 'inet', local: '10.24.0.2', prefixlen: 16 }));
      expect(obs.addresses).toContainEqual(expect.objectContaining({ family: 'inet6', local: 'fd00:24::2', prefixlen: 64, scope: 'global' }));
      expect(obs.routes).toContainEqual(expect.objectContaining({ family: 'inet6', dst: 'default', gateway: 'fd00:24::1' }));
      break;
    case 'multi':
      // eth0 as CNI ptp makes it, and three more interfaces.
      expect(obs.addresses).toEqual([expect.objectContaining({ local: '10.27.0.2', prefixlen: 16 })]);
      expect(v4).toContainEqual(expect.objectContaining({ dst: 'default', gateway: '10.27.0.1' }));
      expect(p.nics.map((n) => [n.ifname, n.kind, n.ip ?? null, n.defaultRoute])).toEqual([
        ['eth0', 'veth', '10.27.0.2', true],
        ['net1', 'veth', '10.28.0.2', false],
        ['net2', 'macvlan', '10.29.0.2', false],
        ['net3', 'veth', null, false],
      ]);
      break;
    case 'jumbo':
      expect(obs.mtu).toBe(9000);
      expect(obs.addresses.map((a) => [a.local, a.secondary ?? false])).toEqual([
        ['10.26.0.10', false],
        ['10.26.0.11', true],
      ]);
      expect(v4).toContainEqual(expect.objectContaining({ dst: '10.77.0.0/16', gateway: '10.26.0.1', metric: 300 }));
      expect(obs.neighbours).toEqual([expect.objectContaining({ dst: '10.26.0.1' })]);
      break;
  }
  expect(p.gateway).toBeDefined();
}

/** What `ip` says about the pod's other interfaces (multi): kind, addresses, routes, and that only eth0 has a default route. */
async function otherNics(p: Pod): Promise<void> {
  for (const n of p.nics.slice(1)) {
    const [link] = JSON.parse((await run('ip', ['-n', p.pod, '-j', '-d', 'addr', 'show', 'dev', n.ifname])).stdout) as Record<string, any>[];
    expect(link!.linkinfo.info_kind, n.ifname).toBe(n.kind);
    expect(link!.address).toBe(n.mac);
    const global = (link!.addr_info as Record<string, any>[]).filter((a) => a.scope === 'global').map((a) => `${a.local}/${a.prefixlen}`);
    expect(global, n.ifname).toEqual(n.ip ? [`${n.ip}/${n.prefix}`] : []);
    const routes = JSON.parse((await run('ip', ['-n', p.pod, '-j', 'route', 'show', 'dev', n.ifname])).stdout) as Record<string, any>[];
    // The connected route of its subnet, nothing else: no default, no gateway.
    expect(routes.map((r) => [r.dst, r.gateway ?? null]), n.ifname).toEqual(n.ip ? [[`${n.ip.replace(/\.\d+$/, '.0')}/${n.prefix}`, null]] : []);
    if (n.nodeAddr) expect(await pingFrom(p.pod, n.nodeAddr), `${n.ifname} reaches ${n.nodeAddr}`).toBe(true);
  }
  if (p.shape === 'multi') {
    // The macvlan really sits on a parent in the node namespace.
    const [mv] = JSON.parse((await run('ip', ['-n', p.pod, '-j', '-d', 'link', 'show', 'dev', 'net2'])).stdout) as Record<string, any>[];
    expect(mv!.linkinfo.info_data.mode).toBe('bridge');
  }
}

// Each shape on a pod of its own, two at once.
const shapeSlots = limiter(2);

describe.each(ALL_SHAPES)('%s pod', (shape) => {
  it.concurrent('is built for real, reaches its node, snapshots detect change, and cleans up', () => shapeSlots(async () => {
    const t0 = performance.now();
    const p = await makePod(shape, { cleanup });
    const tMade = performance.now();
    created.push(p.node, p.pod);
    const first = await snapshot(p.pod);
    const tSnap = performance.now();
    console.log(`${shape}: makePod ${Math.round(tMade - t0)} ms, first snapshot ${Math.round(tSnap - tMade)} ms`);

    // Looks right.
    const obs = await observePod(p.pod);
    expect(obs.mac).toBe(p.expect.mac);
    expect(obs.mtu).toBe(p.expect.mtu);
    expect(obs.addresses).toEqual(p.expect.addresses);
    expect(obs.routes).toEqual(p.expect.routes);
    expect(obs.neighbours).toEqual(p.expect.neighbours);
    shapeChecks(shape, p, obs);
    expect(p.ifname).toBe('eth0');
    expect(first.links[p.ifname]).toMatchObject({ mtu: p.expect.mtu, address: p.expect.mac });
    expect(Object.keys(first.links).sort()).toEqual(['lo', ...p.nics.map((n) => n.ifname)].sort());
    await otherNics(p);

    // Reaches its node.
    expect(await pingFrom(p.pod, p.nodeAddr)).toBe(true);
    if (p.nodeAddr6) expect(await pingFrom(p.pod, p.nodeAddr6)).toBe(true);

    // Pod identity: resolv.conf, hostname, hosts; the machine's own untouched.
    const seen = await p.run(['sh', '-c', 'hostname; echo ---; cat /etc/resolv.conf; echo ---; cat /etc/hostname; echo ---; cat /etc/hosts']);
    const [host, resolv, etcHostname, hosts] = seen.stdout.split('\n---\n');
    expect(host).toBe(p.hostname);
    expect(`${resolv}\n`).toBe(p.resolvConfText);
    expect(resolv).toContain('search default.svc.cluster.local svc.cluster.local cluster.local');
    expect(resolv).toContain('options ndots:5');
    expect(etcHostname).toBe(p.hostname);
    expect(hosts).toContain(`${p.podIP}\t${p.hostname}`);
    expect(rootHostname()).not.toBe(p.hostname);
    expect(first.etc['resolv.conf']).toBe(p.resolvConfText);

    // Same state, same snapshot; for the node too.
    const second = await snapshot(p.pod);
    expect(diffSnapshots(first, second)).toEqual([]);
    expect(second).toEqual(first);
    const nodeA = await snapshot(p.node);
    const nodeB = await snapshot(p.node);
    expect(nodeB).toEqual(nodeA);

    // Any change shows, readably, and undoing it gives the first snapshot back.
    for (const m of MUTATIONS) {
      await m.apply(p);
      const changed = await snapshot(p.pod);
      const diff = diffSnapshots(first, changed);
      expect(diff.join('\n'), m.name).toMatch(m.shows);
      expect(() => expect(changed).toEqual(first)).toThrow();
      await m.revert(p);
      const back = await snapshot(p.pod);
      expect(diffSnapshots(first, back), `after undoing ${m.name}`).toEqual([]);
    }

    // Cleanup removes everything the pod had.
    await p.cleanup();
    for (const ns of [p.node, p.pod]) {
      expect(netnsExists(ns)).toBe(false);
      expect(existsSync(nsStateDir(ns))).toBe(false); // host-local leases lived here
      expect(existsSync(join(NETNS_ETC_DIR, ns))).toBe(false);
    }
    if (p.cniNetwork) expect(existsSync(join('/var/lib/cni/networks', p.cniNetwork))).toBe(false);
    expect(await rootLinks()).toEqual(rootLinksBefore);
    await p.cleanup(); // idempotent
  }));
});

describe('the pod wrapper', () => {
  /** The /proc/sys line of a mountinfo text: its mount options, or undefined when it is no mount point. */
  function procSysOptions(mountinfo: string): string[] | undefined {
    // id parent major:minor root mountpoint options ... - fstype source superoptions
    const line = mountinfo.split('\n').find((l) => l.split(' ')[4] === '/proc/sys');
    return line?.split(' ')[5]?.split(',');
  }

  it('runs every pod command, and podtap itself, with /proc/sys read-only, as container engines mount it', async () => {
    const p = await makePod('ptp', { cleanup });
    created.push(p.node, p.pod);
    // A command in the pod: /proc/sys is a read-only mount point, and writing fails.
    const seen = await p.run(['cat', '/proc/self/mountinfo']);
    expect(procSysOptions(seen.stdout)).toContain('ro');
    const write = await p.run(['sh', '-c', 'echo 1 > /proc/sys/net/ipv4/ip_forward'], { reject: false });
    expect(write.exitCode).not.toBe(0);
    expect(write.stderr).toMatch(/Read-only file system/);
    // The same sysctl is writable outside the pod wrapper: the read-only mount is the pod's alone.
    expect(procSysOptions(readFileSync('/proc/self/mountinfo', 'utf8')) ?? []).not.toContain('ro');
    // podtap's own mount table while it is up.
    const up = startPodtap(p, ['up'], cleanup);
    await up.ready;
    expect(procSysOptions(readFileSync(`/proc/${up.pid}/mountinfo`, 'utf8'))).toContain('ro');
    expect(readFileSync(`/proc/${up.pid}/cmdline`, 'utf8').split('\0')).toContain('up');
    up.proc.kill('SIGTERM');
    expect((await up.proc).exitCode, up.stderr()).toBe(0);
    await p.cleanup();
  });
});

describe('snapshot', () => {
  it('is stable over time for a bridge with a veth and a tap, as podtap builds them', async () => {
    const p = await makePod('ptp', { cleanup });
    created.push(p.node, p.pod);
    // The shape podtap builds in the pod: eth0 and tap0 enslaved to br0.
    await ip(p.pod, 'link', 'add', 'br0', 'type', 'bridge');
    await run('ip', ['-n', p.pod, 'tuntap', 'add', 'dev', 'tap0', 'mode', 'tap']);
    await ip(p.pod, 'link', 'set', 'tap0', 'master', 'br0');
    await ip(p.pod, 'link', 'set', 'br0', 'up');
    await ip(p.pod, 'link', 'set', 'tap0', 'up');
    const a = await snapshot(p.pod);
    expect(a.links.br0).toMatchObject({ linkinfo: { info_kind: 'bridge' } });
    expect(a.links.tap0).toMatchObject({ master: 'br0', linkinfo: { info_kind: 'tun', info_slave_kind: 'bridge' } });
    // Bridge timers tick; nothing else may.
    await new Promise((r) => setTimeout(r, 1500));
    const b = await snapshot(p.pod);
    expect(diffSnapshots(a, b)).toEqual([]);
    await ip(p.pod, 'link', 'del', 'br0');
    await ip(p.pod, 'link', 'del', 'tap0');
    const c = await snapshot(p.pod);
    expect(diffSnapshots(a, c)).toEqual(expect.arrayContaining(['links.br0: removed (was ' + JSON.stringify(a.links.br0) + ')']));
    await p.cleanup();
  });

  it('shows an eth0 down/up cycle that the kernel does not fully undo', async () => {
    // Taking a ptp pod's eth0 down flushes its routes and IPv6 addresses, and
    // bringing it up brings back the kernel's connected /16 that ptp deleted.
    const p = await makePod('dualstack', { cleanup });
    created.push(p.node, p.pod);
    const before = await snapshot(p.pod);
    await ip(p.pod, 'link', 'set', 'eth0', 'down');
    await ip(p.pod, 'link', 'set', 'eth0', 'up');
    const after = await snapshot(p.pod);
    const diff = diffSnapshots(before, after);
    expect(diff).toContain('routes.inet: - unicast default via 10.24.0.1 dev eth0 table main proto boot');
    expect(diff).toContain('routes.inet: + unicast 10.24.0.0/16 dev eth0 table main proto kernel scope link src 10.24.0.2');
    expect(diff).toContain('addresses.eth0: - inet6 fd00:24::2/64 scope global');
    await p.cleanup();
  });

  it('lists processes left in the namespace, but not its own', async () => {
    const local = new Cleanup();
    try {
      const p = await makePod('calico', { cleanup: local });
      created.push(p.node, p.pod);
      const idle = await snapshot(p.pod);
      expect(idle.processes).toEqual([]);
      const sub = startInPod(p.pod, p.hostname, ['sleep', '600'], local);
      await new Promise((r) => setTimeout(r, 200));
      const busy = await snapshot(p.pod);
      expect(busy.processes).toEqual(['sleep']);
      expect(diffSnapshots(idle, busy)).toEqual(['processes: + sleep']);
      await local.cleanupAll();
      await sub;
      expect(sub.pid && processStartTime(sub.pid)).toBeFalsy();
      expect(netnsExists(p.pod)).toBe(false);
    } finally {
      await local.cleanupAll();
    }
  });

  it('waitSettled waits out IPv6 DAD', async () => {
    const ns = await createNetns({ cleanup });
    created.push(ns);
    const peer = await createNetns({ cleanup });
    created.push(peer);
    await ip(ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', peer);
    await ip(peer, 'link', 'set', 'eth0', 'up');
    await ip(ns, 'addr', 'add', 'fd00:77::1/64', 'dev', 'eth0');
    await ip(ns, 'link', 'set', 'eth0', 'up');
    const raw = await snapshot(ns, { settle: false });
    await waitSettled(ns);
    const settled = await snapshot(ns, { settle: false });
    expect(settled.addresses.eth0?.some((a) => a.includes('tentative'))).toBe(false);
    expect(settled.addresses.eth0).toContain('inet6 fd00:77::1/64 scope global');
    // Right after `up` the address was not final yet: that is why snapshots settle.
    expect(diffSnapshots(raw, settled).length).toBeGreaterThan(0);
  });
});

describe('namespace bookkeeping', () => {
  it('cleanupAll removes namespaces and kills processes even after a failure', async () => {
    const local = new Cleanup();
    let ns = '';
    let pid: number | undefined;
    await expect(
      (async () => {
        try {
          ns = await createNetns({ cleanup: local });
          created.push(ns);
          const sub = startInPod(ns, 'probe', ['sleep', '600'], local);
          pid = sub.pid;
          throw new Error('test body failed');
        } finally {
          await local.cleanupAll();
        }
      })(),
    ).rejects.toThrow('test body failed');
    expect(netnsExists(ns)).toBe(false);
    expect(pid && processStartTime(pid)).toBeFalsy();
    expect(local.pending).toBe(0);
  });

  it('deleteNetns kills processes nobody registered', async () => {
    const ns = await createNetns({ cleanup });
    created.push(ns);
    const stray = execa('ip', ['netns', 'exec', ns, 'sleep', '600'], { reject: false });
    for (let i = 0; i < 50 && !(await pidsIn(ns)).length; i++) await new Promise((r) => setTimeout(r, 20));
    expect(await pidsIn(ns)).toEqual([stray.pid]);
    await deleteNetns(ns);
    const r = await stray;
    expect(r.signal).toBe('SIGTERM');
    expect(netnsExists(ns)).toBe(false);
  });

  it('sweepOrphans removes namespaces whose owner process died, and only those', async () => {
    const mine = await createNetns({ cleanup });
    const orphan = await createNetns({ cleanup });
    created.push(mine, orphan);
    const dead = execa('true');
    await dead;
    await writeFile(join(nsStateDir(orphan), 'owner'), `${dead.pid} 1\n`);
    const swept = await sweepOrphans();
    expect(swept).toContain(orphan);
    expect(swept).not.toContain(mine);
    expect(netnsExists(orphan)).toBe(false);
    expect(netnsExists(mine)).toBe(true);
  });

  it('makePod refuses an unknown shape or a bad hostname without leaving anything', async () => {
    const before = ownedByMe();
    await expect(makePod('nope' as Shape)).rejects.toThrow(/unknown pod shape/);
    await expect(makePod('ptp', { hostname: 'bad host' })).rejects.toThrow(/bad hostname/);
    expect(ownedByMe()).toEqual(before);
  });
});
