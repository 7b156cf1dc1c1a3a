// Running the real podtap command inside a test pod, the way a container
// runtime would: its own process, its own namespace, signals and exit codes.

import { resolve } from 'node:path';
import tmp from 'tmp';
import { expect } from 'vitest';
import { run, startInPod, runInPod, type Cleanup, type RunResult } from './netns.ts';
import type { Datapath, Pod } from './pods.ts';

// PODTAP_TEST_BIN runs the tests against another build of podtap (another
// checkout's init/podtap), e.g. to show that a test fails on an older release.
export const PODTAP = process.env.PODTAP_TEST_BIN ?? resolve(import.meta.dirname, '../../init/podtap');

/** One NIC of the ready line. */
export interface ReadyNic {
  nic: number;
  interface: string;
  kind: string;
  datapath: 'bridge' | 'redirect';
  mac: string;
  ip?: string;
  gateway?: string;
  mtu: number;
  bridge: string | null;
  tap: string;
  queues: number;
  defaultRoute: boolean;
  [k: string]: unknown;
}

export interface ReadyLine {
  event: 'ready';
  /** NIC 0's fields at the top level. */
  mac: string;
  ip: string;
  gateway?: string;
  mtu: number;
  bridge: string | null;
  tap: string;
  queues: number;
  datapath: 'bridge' | 'redirect';
  linkLocal: string;
  nics: ReadyNic[];
  steps: number;
  adopted: boolean;
  timings: Record<string, number>;
  [k: string]: unknown;
}

export interface Running {
  proc: ReturnType<typeof startInPod>;
  pid: number;
  stateDir: string;
  /** Resolves with the ready line, rejects if podtap exits first. */
  ready: Promise<ReadyLine>;
  stdout(): string;
  stderr(): string;
}

/** A scratch state dir for one podtap, removed at cleanup. */
export function stateDirFor(cleanup: Cleanup): string {
  const dir = tmp.dirSync({ tmpdir: '/run', prefix: 'podtap-test-state-' }).name;
  cleanup.path(dir);
  return dir;
}

/** Starts `podtap <args>` in the pod; the ready promise settles on the first stdout line. */
export function startPodtap(pod: Pod, args: string[], cleanup: Cleanup, env: Record<string, string> = {}, stateDir = stateDirFor(cleanup)): Running {
  const argv = [PODTAP, ...args.slice(0, 1), '--state-dir', stateDir, ...args.slice(1)];
  const proc = startInPod(pod.pod, pod.hostname, argv, cleanup, env);
  let out = '';
  let err = '';
  proc.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const ready = new Promise<ReadyLine>((resolveReady, reject) => {
    proc.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n').find((l) => l.startsWith('{"event":"ready"'));
      if (line) resolveReady(JSON.parse(line));
    });
    void proc.then((r) => reject(new Error(`podtap exited (${r.exitCode ?? r.signal}) before it was ready:\n${err}`)));
  });
  ready.catch(() => {});
  return { proc, pid: proc.pid!, stateDir, ready, stdout: () => out, stderr: () => err };
}

export function podtapIn(pod: Pod, args: string[], env: Record<string, string> = {}): Promise<RunResult> {
  return runInPod(pod.pod, pod.hostname, [PODTAP, ...args], { reject: false, env });
}

/** The name podtap gives NIC i's device: counting on from a trailing number, or appending one. */
export function nthName(base: string, i: number): string {
  if (i === 0) return base;
  const m = /^(.*?)(\d+)$/.exec(base);
  return m ? `${m[1]}${Number(m[2]) + i}` : `${base}${i}`;
}

export interface NicOptions {
  queues?: number;
  bridge?: string;
  tap?: string;
  /** The pod interfaces given with --interface, in that order; default every one the data path carries. */
  interfaces?: readonly string[];
}

/** The `nics` of the ready line podtap must print for this pod and data path. */
export function expectedNics(pod: Pod, datapath: Datapath, opts: NicOptions = {}): ReadyNic[] {
  const nics = opts.interfaces ? opts.interfaces.map((i) => pod.nics.find((n) => n.ifname === i)!) : pod.nicsFor(datapath);
  return nics.map((n, i) => ({
    nic: i,
    interface: n.ifname,
    kind: n.kind,
    datapath,
    mac: n.mac,
    ...(n.ip ? { ip: `${n.ip}/${n.handedPrefix}` } : {}),
    ...(n.gateway ? { gateway: n.gateway } : {}),
    mtu: n.mtu,
    bridge: datapath === 'bridge' ? nthName(opts.bridge ?? 'br0', i) : null,
    tap: nthName(opts.tap ?? 'tap0', i),
    queues: opts.queues ?? 1,
    defaultRoute: n.defaultRoute,
  }));
}

/** Asserts the ready line describes every NIC of the pod the data path carries. */
export function expectReady(ready: ReadyLine, pod: Pod, datapath: Datapath, opts: NicOptions = {}): void {
  const nics = expectedNics(pod, datapath, opts);
  const first = nics[0]!;
  expect(ready).toMatchObject({
    event: 'ready',
    mac: first.mac,
    ...(first.ip ? { ip: first.ip } : {}),
    mtu: first.mtu,
    bridge: first.bridge,
    tap: first.tap,
    queues: first.queues,
    datapath,
    adopted: false,
  });
  if (first.gateway) expect(ready.gateway).toBe(first.gateway);
  // These fields of every NIC, in NIC order, and no NIC for an interface left out.
  const keys = ['nic', 'interface', 'kind', 'datapath', 'mac', 'ip', 'gateway', 'mtu', 'bridge', 'tap', 'queues', 'defaultRoute'];
  expect(ready.nics.map((n) => Object.fromEntries(Object.entries(n).filter(([k]) => keys.includes(k))))).toEqual(nics);
}

type Json = Record<string, any>;

async function ipJson(ns: string, args: string[]): Promise<Json[]> {
  const r = await run('ip', ['-n', ns, '-j', ...args]);
  return r.stdout.trim() ? (JSON.parse(r.stdout) as Json[]) : [];
}

/**
 * Asserts what the pod namespace looks like while podtap is up: every NIC's
 * pod interface has given up its layer 3 (no address, not even IPv6
 * link-local; no route; no permanent neighbour; IPv6 address generation
 * off, never disable_ipv6), its tap is there with the interface's MTU, and
 * the data path is the one asked for: redirect keeps the interface's MAC and
 * joins it to the tap with `table netdev podtap` (no bridge anywhere);
 * bridge makes brN (no address, no route) with the interface, wearing
 * another MAC, and the tap as ports, guarded by `table bridge podtap`.
 */
export async function expectTakenOver(pod: Pod, datapath: Datapath, opts: { bridge?: string; tap?: string } = {}): Promise<void> {
  const [links, linkOnly, routes4, routes6, neigh, tables] = await Promise.all([
    ipJson(pod.pod, ['-d', 'addr', 'show']),
    // iproute2 shows the IPv6 address generation mode with `link` only.
    ipJson(pod.pod, ['-d', 'link', 'show']),
    ipJson(pod.pod, ['-4', 'route', 'show', 'table', 'all']),
    ipJson(pod.pod, ['-6', 'route', 'show', 'table', 'all']),
    ipJson(pod.pod, ['neigh', 'show', 'nud', 'permanent']),
    run('ip', ['netns', 'exec', pod.pod, 'nft', 'list', 'ruleset']).then((r) => r.stdout),
  ]);
  const link = (name: string): Json => {
    const l = links.find((x) => x.ifname === name);
    expect(l, `${name} missing`).toBeDefined();
    return { ...l!, inet6_addr_gen_mode: linkOnly.find((x) => x.ifname === name)?.inet6_addr_gen_mode };
  };
  const devs = new Set<string>();
  pod.nicsFor(datapath).forEach((n, i) => {
    const iface = link(n.ifname);
    const tap = link(nthName(opts.tap ?? 'tap0', i));
    devs.add(n.ifname);
    expect(iface.addr_info, `${n.ifname} keeps an address`).toEqual([]);
    expect(iface.inet6_addr_gen_mode, n.ifname).toBe('none');
    expect(tap.linkinfo?.info_kind).toBe('tun');
    expect(tap.mtu).toBe(n.mtu);
    expect(tap.addr_info, `${tap.ifname} has an address`).toEqual([]);
    expect(tap.inet6_addr_gen_mode).toBe('none');
    if (datapath === 'redirect') {
      expect(iface.address, `${n.ifname} must keep its MAC`).toBe(n.mac);
      expect(iface.master).toBeUndefined();
      expect(tap.master).toBeUndefined();
    } else {
      const brName = nthName(opts.bridge ?? 'br0', i);
      const br = link(brName);
      devs.add(brName);
      expect(br.linkinfo?.info_kind).toBe('bridge');
      expect(br.mtu).toBe(n.mtu);
      // The bridge speaks for nobody: DHCP is served on the tap.
      expect(br.addr_info, `${brName} has an address`).toEqual([]);
      expect(iface.master).toBe(brName);
      expect(iface.address, `${n.ifname} must wear another MAC on the bridge`).not.toBe(n.mac);
      expect(tap.master).toBe(brName);
    }
  });
  if (datapath === 'redirect') expect(links.filter((l) => l.linkinfo?.info_kind === 'bridge').map((l) => l.ifname)).toEqual([]);
  // The kernel's IPv6 multicast route (local table, ff00::/8) is there for
  // any up link with IPv6; only disable_ipv6 would take it, and that is a sysctl.
  const kernelMulticast = (r: Json) => r.table === 'local' && r.type === 'multicast' && r.dst === 'ff00::/8';
  const through = (r: Json) => !kernelMulticast(r) && (devs.has(r.dev) || (r.nexthops ?? []).some((h: Json) => devs.has(h.dev)));
  expect([...routes4, ...routes6].filter(through)).toEqual([]);
  expect(neigh.filter((x) => devs.has(x.dev))).toEqual([]);
  // podtap's tables only. Redirect: the netdev table forwards between each
  // pod interface and its tap, and there is no bridge table. Bridge: the
  // bridge table guards the ports, and nothing forwards around the bridge
  // (a netdev table may keep the pod's own stack quiet).
  const names = [...tables.matchAll(/^table (\S+) (\S+)/gm)].map((m) => `${m[1]} ${m[2]}`).sort();
  const forwards = [...new Set([...tables.matchAll(/fwd to "([^"]+)"/g)].map((m) => m[1]!))].sort();
  if (datapath === 'redirect') {
    expect(names).toEqual(['netdev podtap']);
    const pairs = pod.nicsFor(datapath).flatMap((n, i) => [n.ifname, nthName(opts.tap ?? 'tap0', i)]);
    expect(forwards).toEqual(pairs.sort());
  } else {
    expect(names).toContain('bridge podtap');
    expect(names.filter((n) => n !== 'bridge podtap' && n !== 'netdev podtap')).toEqual([]);
    expect(forwards).toEqual([]);
  }
}
