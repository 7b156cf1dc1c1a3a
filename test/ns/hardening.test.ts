// What podtap must get right when something around it is wrong: a set-up
// that fails half-way, a missing nft, a journal or state dir someone else
// could have written, a stale lock, a full or read-only state dir, and a
// namespace that looks like the host's. The release before the core rework
// (6569112) gets each of these wrong: run with PODTAP_TEST_BIN=<a checkout
// of it>/init/podtap to see them fail (that release writes sysctls, so give
// it a writable /proc/sys to see the failures that matter here). Three
// companions, marked, need not fail there: they show that what a
// neighbouring case relies on works.

import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { crc32 } from 'node:zlib';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cleanup, NETNS_RUN_DIR, createNetns, netnsPath, nsExec, nsSh, podArgv, processStartTime, randomHex, run, runInPod, type RunResult } from '../helpers/netns.ts';
import { makePod, type Pod } from '../helpers/pods.ts';
import { snapshot, diffSnapshots, type Snapshot } from '../helpers/snapshot.ts';
import { PODTAP, expectReady, podtapIn, startPodtap, stateDirFor } from '../helpers/podtap.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

// The checkout whose podtap runs (see PODTAP_TEST_BIN): its sources too.
const REPO = resolve(dirname(PODTAP), '..');
const STACK = /internal error|\n\s+at .*\(.*:\d+:\d+\)/;

let pod: Pod;
let multi: Pod;
beforeAll(async () => {
  [pod, multi] = await Promise.all([makePod('ptp', { cleanup }), makePod('multi', { cleanup })]);
});

/** A state dir of podtap's own (0700, root), removed at cleanup. */
function ownDir(): string {
  return stateDirFor(cleanup);
}

/** Up, ready, SIGTERM, exit 0, the namespace as `before`. */
async function upWorks(p: Pod, args: string[], before: Snapshot, stateDir?: string): Promise<void> {
  const up = startPodtap(p, args, cleanup, {}, stateDir);
  const ready = await up.ready;
  expect(ready.adopted).toBe(false);
  up.proc.kill('SIGTERM');
  const r = await up.proc;
  expect(r.exitCode, up.stderr()).toBe(0);
  expect(diffSnapshots(before, await snapshot(p.pod))).toEqual([]);
}

// ---------------------------------------------------------------------------

describe('a set-up that fails half-way is rolled back completely', () => {
  it('nft missing from PATH: refused before any change, naming nft', async () => {
    const before = await snapshot(pod.pod);
    const bin = ownDir();
    await nsSh(pod.pod, 'ln -s "$(command -v ip)" "$1/ip"', [bin]);
    for (const datapath of ['redirect', 'bridge']) {
      const stateDir = ownDir();
      // podtap itself runs with a PATH that has ip but no nft.
      const r = await runInPod(pod.pod, pod.hostname, ['env', `PATH=${bin}`, PODTAP, 'up', '--state-dir', stateDir, '--datapath', datapath], { reject: false, timeoutMs: 20_000 });
      expect(r.exitCode, r.stderr).toBe(3);
      expect(r.stderr).toMatch(/the `nft` command \(nftables\) is not installed\n\s+fix: install nftables/);
      // Refused up front: nothing was changed that had to be restored.
      expect(r.stderr).not.toMatch(/restoring the namespace|namespace restored/);
      expect(r.stdout).toBe('');
      expect(readdirSync(stateDir)).toEqual([]);
      expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
    }
  });

  it('bridge data path, three NICs: the kernel refuses to make net1 a bridge port (a macvlan sits on it) after NIC 0 is plumbed and every address is gone; all of it is undone, the guard too, and the next up works', async () => {
    // Something in the pod put a macvlan on net1: net1 now has an rx handler,
    // so the kernel refuses it as a bridge port. Discovery can't know.
    await nsSh(multi.pod, 'ip link add mvside link net1 type macvlan mode bridge');
    try {
      const before = await snapshot(multi.pod);
      const stateDir = ownDir();
      const r = await podtapIn(multi, ['up', '--state-dir', stateDir, '--datapath', 'bridge', ...multi.nicArgs('bridge')]);
      expect(r.exitCode, r.stderr).toBe(7);
      expect(r.stderr).toMatch(/setting up failed at step nic1\/port-enslave: ip link set dev net1 master br1: .*Device or resource busy/);
      expect(r.stderr).toMatch(/setup failed, restoring the namespace/);
      expect(r.stdout).toBe('');
      expect(r.stderr).not.toMatch(STACK);
      // No journal, no lock, no readiness file: nothing for `down` to find.
      expect(readdirSync(stateDir)).toEqual([]);
      expect(diffSnapshots(before, await snapshot(multi.pod))).toEqual([]);
    } finally {
      await nsSh(multi.pod, 'ip link del mvside');
    }
    await upWorks(multi, ['up', '--datapath', 'bridge', ...multi.nicArgs('bridge')], await snapshot(multi.pod));
  });

  // A device name podtap wants may be another link's alternative name
  // (`ip link property add ... altname`): the kernel refuses to create it,
  // and worse, `ip link del dev NAME` in the undo would delete the link that
  // carries it. So it is refused before anything changes.
  for (const [datapath, name, nic] of [['bridge', 'br1', 'net1'], ['redirect', 'tap1', 'net1']] as const) {
    it(`${datapath} data path: ${name} is an alternative name of net3: refused before any change, and net3 is never deleted`, async () => {
      await nsSh(multi.pod, 'ip link property add dev net3 altname "$1"', [name]);
      try {
        const before = await snapshot(multi.pod);
        const stateDir = ownDir();
        const r = await podtapIn(multi, ['up', '--state-dir', stateDir, '--datapath', datapath, ...multi.nicArgs(datapath)]);
        expect(r.exitCode, r.stderr).toBe(5);
        expect(r.stderr).toMatch(new RegExp(`${name} is an alternative name of net3, so the ${datapath === 'bridge' ? 'bridge' : 'tap'} for ${nic} can't be created`));
        expect(r.stderr).not.toMatch(/restoring the namespace/);
        expect(readdirSync(stateDir)).toEqual([]);
        expect(diffSnapshots(before, await snapshot(multi.pod))).toEqual([]);
      } finally {
        await nsSh(multi.pod, 'ip link property del dev net3 altname "$1" 2>/dev/null || true', [name]);
      }
    });
  }

  for (const datapath of ['redirect', 'bridge'] as const) {
    it(`${datapath} data path: the kernel refuses the third NIC's tap (no fds left) after two are open; all of it is undone and the next up works`, async () => {
      const before = await snapshot(multi.pod);
      const stateDir = ownDir();
      const args = ['up', '--state-dir', stateDir, '--datapath', datapath, '--queues', '100', ...multi.nicArgs(datapath)];
      const r = await runInPod(multi.pod, multi.hostname, ['sh', '-c', 'ulimit -n 250 && exec "$@"', 'nofile', PODTAP, ...args], { reject: false, timeoutMs: 30_000 });
      expect(r.exitCode, r.stderr).toBe(3);
      expect(r.stderr).toMatch(/cannot open tap tap2 \(queue \d+ of 100\) \(open: EMFILE\)/);
      expect(r.stderr).toMatch(/setup failed, restoring the namespace/);
      expect(r.stdout).toBe('');
      expect(readdirSync(stateDir)).toEqual([]);
      expect(diffSnapshots(before, await snapshot(multi.pod))).toEqual([]);
      await upWorks(multi, ['up', '--datapath', datapath, '--queues', '100', ...multi.nicArgs(datapath)], before);
    });
  }
});

// ---------------------------------------------------------------------------

/** A journal file as podtap writes one: the body and its CRC-32. */
function journalText(state: Record<string, unknown>): string {
  const body = JSON.stringify(state);
  return JSON.stringify({ crc32: crc32(body).toString(16).padStart(8, '0'), body }) + '\n';
}

function netnsId(p: Pod): string {
  return `net:[${statSync(netnsPath(p.pod)).ino}]`;
}

/** A journal that `down` would act on: format 2 (this podtap) or 1 (the release before), with these steps. */
function forgedJournal(p: Pod, format: 1 | 2, steps: unknown[]): string {
  const common = { runId: randomHex(8), pid: 999_999, netns: netnsId(p), createdAt: new Date().toISOString(), phase: 'ready', steps };
  if (format === 2)
    return journalText({
      format: 'podtap-journal/2',
      ...common,
      settings: { interfaces: null, bridge: 'br0', tap: 'tap0', queues: 1, persistTap: false, antispoof: true, datapath: null },
      pod: { interfaces: [], dns: { nameservers: [], search: [], options: [] }, hostname: '' },
      // The canary tap is this journal's own device: a journal may only
      // create and delete the taps and bridges of its attachments.
      attachments: [{ nic: 0, interface: 'eth0', kind: 'veth', mac: p.expect.mac, mtu: 1500, datapath: 'redirect', tap: CANARY, serverMac: '02:00:00:00:00:03', primary: true }],
      serverId: '169.254.75.1/32',
    });
  return journalText({
    format: 'podtap-journal/1',
    ...common,
    pidStart: '1',
    settings: { interface: null, bridge: 'br0', tap: 'tap0', queues: 1, persistTap: false },
    pod: { link: { name: 'eth0', ifindex: 2, kind: 'veth', mac: p.expect.mac, mtu: 1500, up: true }, addresses: [], routes: [], neighbours: [], sysctls: {}, dns: { nameservers: [], search: [], options: [] }, hostname: '' },
    vm: { mac: p.expect.mac, ip: p.podIP, prefixlen: 32, mtu: 1500, routes: [] },
    linkLocal: '169.254.75.1/32',
    bridgeMac: '02:00:00:00:00:01',
    vethMac: '02:00:00:00:00:02',
  });
}

const CANARY = 'fcan0';

/**
 * A step whose undo deletes the canary tap, last in the journal so that it
 * would be undone first: if podtap acts on any of a journal before checking
 * all of it, the canary is gone.
 */
function canaryStep(format: 1 | 2): unknown {
  return format === 2
    ? { id: 'nic9/tap-open', do: [{ op: 'tap-open', tap: { name: CANARY, queues: 1, persist: true } }], undo: [{ op: 'link-del', name: CANARY }] }
    : { id: 'tap-open', do: [{ tap: { name: CANARY, queues: 1, persist: true } }], undo: [{ ip: `link del dev ${CANARY}` }] };
}

describe('a journal podtap would never write is refused, with nothing run', () => {
  const marker = `podtap-forged-${randomHex(4)}`;
  const include = join(mkdtempSync('/tmp/podtap-forged-'), 'forged.nft');
  writeFileSync(include, 'add table inet podtap_forged\n');
  cleanup.path(resolve(include, '..'));
  cleanup.defer(`rm ${marker}`, async () => rmSync(join(NETNS_RUN_DIR, marker), { force: true }));

  beforeAll(async () => {
    await nsSh(pod.pod, `ip tuntap add dev ${CANARY} mode tap`);
  });
  afterAll(async () => {
    await nsSh(pod.pod, `ip link del ${CANARY} 2>/dev/null || true`);
  });

  const CASES: { name: string; v2: unknown; v1: unknown; v2says: RegExp }[] = [
    {
      name: 'an undo that deletes eth0',
      v2: { id: 'nic0/port-mac', do: [{ op: 'link-set', name: 'eth0', mac: '02:00:00:00:00:09' }], undo: [{ op: 'link-del', name: 'eth0' }] },
      v1: { id: 'port-mac', do: [{ ip: 'link set dev eth0 address 02:00:00:00:00:09' }], undo: [{ ip: 'link del dev eth0' }] },
      v2says: /step nic0\/port-mac: link-del "eth0" is not a device of podtap's own/,
    },
    {
      name: 'an undo that deletes a tap its step did not open',
      v2: { id: 'nic0/addr-del/0', do: [], undo: [{ op: 'link-del', name: CANARY }] },
      v1: { id: 'addr-del/0', do: [], undo: [{ ip: `link del dev ${CANARY}` }] },
      v2says: new RegExp(`step nic0/addr-del/0: deletes ${CANARY}, which the step did not create`),
    },
    {
      name: 'an ip command line',
      v2: { id: 'nic0/route-del/0', do: [], undo: [{ ip: `netns add ${marker}` }] },
      v1: { id: 'route-del/0', do: [], undo: [{ ip: `netns add ${marker}` }] },
      v2says: /step nic0\/route-del\/0: .*unknown action undefined/,
    },
    {
      name: 'a sysctl',
      v2: { id: 'nic0/ipv6-quiet', do: [], undo: [{ op: 'sysctl', key: 'net/ipv6/conf/eth0/disable_ipv6', value: '1' }] },
      v1: { id: 'ipv6-off', do: [], undo: [{ sysctl: 'net/ipv6/conf/eth0/disable_ipv6', value: '1' }] },
      v2says: /step nic0\/ipv6-quiet: .*unknown action "sysctl"/,
    },
    {
      name: 'an nft include',
      v2: {
        id: 'guard/netdev',
        do: [],
        undo: [{ op: 'nft-load', table: { family: 'netdev', name: 'podtap', nics: [{ nic: 0, podIf: 'eth0', tap: `t" ; include "${include}" ; #`, vmMac: '02:00:00:00:00:09', antispoof: true, ipv4: [], ipv6: [], reservedLinkLocal: [] }] } }],
      },
      v1: { id: 'guard', do: [], undo: [{ nft: `include "${include}"` }] },
      v2says: /step guard\/netdev: .*bad interface name/,
    },
  ];

  for (const c of CASES) {
    it(`${c.name}: refused by down and by up (journal format 2, and the previous release's format 1)`, async () => {
      const before = await snapshot(pod.pod);
      for (const format of [1, 2] as const) {
        const stateDir = ownDir();
        writeFileSync(join(stateDir, 'journal.json'), forgedJournal(pod, format, [format === 2 ? c.v2 : c.v1, canaryStep(format)]), { mode: 0o600 });
        for (const command of ['down', 'up']) {
          const r = await podtapIn(pod, [command, '--state-dir', stateDir]);
          expect(r.exitCode, `${command}, format ${format}:\n${r.stderr}`).toBe(6);
          expect(r.stderr).toMatch(format === 2 ? c.v2says : /was written by podtap 0\.1 \(format podtap-journal\/1\), whose steps this podtap no longer replays/);
          expect(r.stderr).toMatch(/\n\s+fix: /);
          expect(r.stdout).toBe('');
          // Nothing ran: not the forged action, not the canary's undo.
          expect(existsSync(join(NETNS_RUN_DIR, marker)), 'the forged `ip netns add` ran').toBe(false);
          expect((await nsExec(pod.pod, ['nft', 'list', 'tables'])).stdout).not.toMatch(/podtap_forged/);
          expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
        }
        // The journal is left for a human to look at.
        expect(readdirSync(stateDir)).toEqual(['journal.json']);
      }
    });
  }

  describe('the state dir and the journal must be podtap\'s own, and are checked before anything is read', () => {
    /**
     * A state dir holding a well-formed journal whose only undo deletes the
     * canary: this podtap's format, or the previous release's (which this
     * one would refuse anyway, but only after reading it: the checks below
     * come first).
     */
    function withCanaryJournal(dir: string, format: 1 | 2 = 2): void {
      writeFileSync(join(dir, 'journal.json'), forgedJournal(pod, format, [canaryStep(format)]), { mode: 0o600 });
    }

    /** Each check with a journal of either format in the dir: `make(format)` sets the case up. */
    async function refusedWithCanary(make: (format: 1 | 2) => string, status: number, says: RegExp): Promise<RunResult> {
      const before = await snapshot(pod.pod);
      let last!: RunResult;
      for (const format of [1, 2] as const) {
        const stateDir = make(format);
        for (const command of ['down', 'up']) {
          last = await podtapIn(pod, [command, '--state-dir', stateDir]);
          expect(last.exitCode, `${command}, journal format ${format}:\n${last.stderr}`).toBe(status);
          expect(last.stderr).toMatch(says);
          expect(last.stderr).toMatch(/podtap's own/);
          expect(last.stdout).toBe('');
          expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
        }
      }
      return last;
    }

    it('(companion) the canary journal itself is acted on when it is in order, so the refusals below are what stop it', async () => {
      const dir = ownDir();
      withCanaryJournal(dir);
      const r = await podtapIn(pod, ['down', '--state-dir', dir]);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stderr).toMatch(/namespace restored/);
      expect((await nsExec(pod.pod, ['ip', 'link', 'show', CANARY], { reject: false })).exitCode).not.toBe(0);
      await nsSh(pod.pod, `ip tuntap add dev ${CANARY} mode tap`);
    });

    it('a state dir owned by another user', async () => {
      const make = (format: 1 | 2) => {
        const dir = ownDir();
        withCanaryJournal(dir, format);
        chownSync(dir, 4242, 4242);
        return dir;
      };
      await refusedWithCanary(make, 3, /the state dir .* is owned by uid 4242, not by podtap's uid 0/);
    });

    for (const [who, mode] of [['its group', 0o770], ['everyone', 0o777]] as const) {
      it(`a state dir writable by ${who}`, async () => {
        const make = (format: 1 | 2) => {
          const dir = ownDir();
          withCanaryJournal(dir, format);
          chmodSync(dir, mode);
          return dir;
        };
        await refusedWithCanary(make, 3, new RegExp(`the state dir .* is writable by ${who}`));
      });
    }

    it('a state dir that is a symlink (to a directory of podtap\'s own)', async () => {
      const make = (format: 1 | 2) => {
        const real = ownDir();
        withCanaryJournal(real, format);
        const link = `${ownDir()}-link`;
        symlinkSync(real, link);
        cleanup.path(link);
        return link;
      };
      await refusedWithCanary(make, 3, /the state dir .* is a symbolic link/);
    });

    it('a journal owned by another user', async () => {
      const make = (format: 1 | 2) => {
        const dir = ownDir();
        withCanaryJournal(dir, format);
        chownSync(join(dir, 'journal.json'), 4242, 4242);
        return dir;
      };
      await refusedWithCanary(make, 6, /journal\.json is owned by uid 4242/);
    });

    it('a journal writable by everyone', async () => {
      const make = (format: 1 | 2) => {
        const dir = ownDir();
        withCanaryJournal(dir, format);
        chmodSync(join(dir, 'journal.json'), 0o666);
        return dir;
      };
      await refusedWithCanary(make, 6, /journal\.json is writable by everyone/);
    });

    it('journal.json replaced by a symlink to a root-only file is not followed', async () => {
      const secrets = mkdtempSync('/tmp/podtap-secret-');
      cleanup.path(secrets);
      // One root-only file holds a journal podtap would act on, another one
      // text that must never be shown.
      const secret = `SECRET-${randomHex(8)}`;
      const shadow = join(secrets, 'shadow');
      writeFileSync(shadow, `root:${secret}:19000:0:99999:7:::\n`, { mode: 0o600 });
      const linkTo = (target: string) => {
        const dir = ownDir();
        symlinkSync(target, join(dir, 'journal.json'));
        return dir;
      };
      await refusedWithCanary((format) => {
        const valid = join(secrets, `valid-${format}`);
        writeFileSync(valid, forgedJournal(pod, format, [canaryStep(format)]), { mode: 0o600 });
        return linkTo(valid);
      }, 6, /journal\.json is a symbolic link/);
      const r = await refusedWithCanary(() => linkTo(shadow), 6, /journal\.json is a symbolic link/);
      expect(r.stderr).not.toContain(secret);
    });
  });
});

// ---------------------------------------------------------------------------

describe('the lock', () => {
  it('a lock file naming a live process (pid 1) blocks neither up nor down', async () => {
    const before = await snapshot(pod.pod);
    const dir = ownDir();
    // Pid and start time, as a pid-file lock would have it: pid 1 is alive
    // and always will be, yet only a held flock may stop podtap.
    const pid1 = `1 ${processStartTime(1) ?? ''}\n`;
    writeFileSync(join(dir, 'lock'), pid1, { mode: 0o600 });
    await upWorks(pod, ['up'], before, dir);

    // A journal left by a podtap killed with -9, and a lock naming pid 1.
    const crashed = startPodtap(pod, ['up'], cleanup, {}, dir);
    await crashed.ready;
    crashed.proc.kill('SIGKILL');
    await crashed.proc;
    writeFileSync(join(dir, 'lock'), pid1, { mode: 0o600 });
    const down = await podtapIn(pod, ['down', '--state-dir', dir]);
    expect(down.exitCode, down.stderr).toBe(0);
    expect(down.stderr).toMatch(/namespace restored/);
    expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
  });

  it('(companion) a second podtap is refused while the first runs, naming its pid', async () => {
    const up = startPodtap(pod, ['up'], cleanup);
    await up.ready;
    for (const command of ['up', 'down']) {
      const r = await podtapIn(pod, [command, '--state-dir', up.stateDir]);
      expect(r.exitCode, r.stderr).toBe(5);
      expect(r.stderr).toMatch(new RegExp(`another podtap \\(pid ${up.pid}\\) holds ${up.stateDir}/lock`));
    }
    up.proc.kill('SIGTERM');
    expect((await up.proc).exitCode).toBe(0);
  });
});

// ---------------------------------------------------------------------------

describe('a full or read-only state dir', () => {
  /**
   * A tiny tmpfs in a mount namespace of its own, held by a sleeping
   * process; podtap runs in a copy of that mount namespace (which its pod
   * wrapper then makes private), so `up`, the kill and `down` all see it.
   */
  async function tinyStateDir(options: string): Promise<{ dir: string; argv: (podtapArgs: string[]) => string[]; read: (file: string) => Promise<string | undefined> }> {
    const dir = mkdtempSync('/tmp/podtap-full-');
    cleanup.path(dir);
    const holder = execa('unshare', ['-m', '--propagation', 'private', 'sh', '-c', `mount -t tmpfs -o ${options},mode=0700 podtap-full "$1" && echo mounted && exec sleep 600`, 'holder', dir], { reject: false, stdin: 'ignore' });
    cleanup.pid(holder.pid!);
    await new Promise<void>((ok, fail) => {
      holder.stdout?.once('data', () => ok());
      void holder.then((r) => fail(new Error(`tmpfs holder exited: ${r.stderr}`)));
    });
    const enter = ['nsenter', `--mount=/proc/${holder.pid}/ns/mnt`, '--'];
    return {
      dir,
      argv: (podtapArgs) => [...enter, ...podArgv(pod.pod, pod.hostname, [PODTAP, ...podtapArgs])],
      read: async (file) => {
        const r = await run(enter[0]!, [...enter.slice(1), 'cat', join(dir, file)], { reject: false });
        return r.exitCode === 0 ? r.stdout : undefined;
      },
    };
  }

  it('full at any point of up: it fails and rolls back, or it is ready with a whole journal that `down` restores from after kill -9; never ready with a truncated journal', async () => {
    const before = await snapshot(pod.pod);
    const outcomes: string[] = [];
    // From no room for the journal to room for everything, page by page;
    // then room to spare but too few inodes for the files podtap makes.
    const sizes = ['size=4k', 'size=8k', 'size=12k', 'size=16k', 'size=20k', 'size=24k', 'size=1m,nr_inodes=3', 'size=1m,nr_inodes=4', 'size=1m,nr_inodes=5'];
    for (const options of sizes) {
      const t = await tinyStateDir(options);
      const [file, ...args] = t.argv(['up', '--state-dir', t.dir]);
      const up = execa(file!, args, { reject: false, stdin: 'ignore' });
      cleanup.pid(up.pid!);
      let out = '';
      const ready = await new Promise<boolean>((resolveReady) => {
        up.stdout?.on('data', (d: Buffer) => {
          out += d.toString();
          if (out.includes('"event":"ready"')) resolveReady(true);
        });
        void up.then(() => resolveReady(false));
      });
      if (ready) {
        up.kill('SIGKILL');
        await up;
        // The journal on disk is whole: it parses and says ready.
        const text = await t.read('journal.json');
        expect(text, options).toBeDefined();
        const outer = JSON.parse(text!) as { body: string };
        expect((JSON.parse(outer.body) as { phase: string }).phase).toBe('ready');
        const [dfile, ...dargs] = t.argv(['down', '--state-dir', t.dir]);
        const down = await run(dfile!, dargs, { reject: false });
        expect(down.exitCode, `${options}: ${down.stderr}`).toBe(0);
        expect(down.stderr).toMatch(/namespace restored/);
        outcomes.push(`${options}: ready, restored after kill -9`);
      } else {
        const r = await up;
        expect(r.exitCode, `${options}: ${r.stderr}`).toBe(3);
        expect(r.stderr).toMatch(/(cannot write the journal|cannot write the readiness file|cannot open the lock) .*(ENOSPC|no space)/);
        expect(r.stderr).not.toMatch(STACK);
        expect(out).toBe('');
        // Nothing left for `down`: the failed start cleaned up after itself.
        expect(await t.read('journal.json'), options).toBeUndefined();
        outcomes.push(`${options}: refused (exit 3)`);
      }
      expect(diffSnapshots(before, await snapshot(pod.pod)), options).toEqual([]);
    }
    console.log(`full state dir:\n  ${outcomes.join('\n  ')}`);
    // Both outcomes were met: the sizes span the whole start.
    expect(outcomes.some((o) => o.includes('refused'))).toBe(true);
    expect(outcomes.some((o) => o.includes('ready'))).toBe(true);
  });

  it('a state dir that turns read-only while up (EROFS on the ready file, the journal, the lock) does not stop the teardown: the namespace is restored and podtap exits', async () => {
    const before = await snapshot(pod.pod);
    const up = startPodtap(pod, ['up'], cleanup);
    await up.ready;
    // In podtap's own mount namespace: the state dir becomes a read-only bind mount of itself.
    await run('nsenter', ['-t', String(up.pid), '-m', 'sh', '-c', 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1"', 'ro', up.stateDir]);
    up.proc.kill('SIGTERM');
    const r = await up.proc;
    expect(r.exitCode, up.stderr()).toBe(0);
    expect(up.stderr()).toMatch(/removing .*\/ready failed: EROFS/);
    expect(up.stderr()).toMatch(/namespace restored/);
    expect(up.stderr()).not.toMatch(STACK);
    expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
    // What could not be removed is replayed harmlessly, and goes.
    expect(readdirSync(up.stateDir)).toContain('journal.json');
    const down = await podtapIn(pod, ['down', '--state-dir', up.stateDir]);
    expect(down.exitCode, down.stderr).toBe(0);
    expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
    expect(readdirSync(up.stateDir).filter((f) => /^(journal\.json|lock|ready)$/.test(f))).toEqual([]);
  });
});

// ---------------------------------------------------------------------------

describe("the host's own network namespace", () => {
  // podtap never runs in the machine's namespace here: the check itself is
  // called in this test process (which is there) and in children that are
  // elsewhere.
  const lifecycle = join(REPO, 'src/lifecycle.ts');
  const probe = `import(${JSON.stringify(lifecycle)}).then((m) => console.log(m.inInitialNetns()))`;

  it('inInitialNetns is true in the initial network namespace, also from a new pid namespace', async () => {
    const { inInitialNetns } = (await import(lifecycle)) as { inInitialNetns: () => boolean };
    expect(inInitialNetns()).toBe(true);
    const r = await run('unshare', ['--pid', '--fork', '--mount-proc', process.execPath, '--disable-warning=ExperimentalWarning', '-e', probe]);
    expect(r.stdout.trim()).toBe('true');
  });

  it('inInitialNetns is false in a pod namespace, seen from the host pid namespace or its own', async () => {
    const ns = await createNetns({ cleanup });
    const here = await nsExec(ns, [process.execPath, '--disable-warning=ExperimentalWarning', '-e', probe]);
    expect(here.stdout.trim()).toBe('false');
    const own = await nsExec(ns, ['unshare', '--pid', '--fork', '--mount-proc', process.execPath, '--disable-warning=ExperimentalWarning', '-e', probe]);
    expect(own.stdout.trim()).toBe('false');
  });

  it('(companion) a pod is not mistaken for the host: inspect and up work there', async () => {
    const r = await pod.run([PODTAP, 'inspect'], { reject: false });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).not.toMatch(/machine's own network namespace/);
    const before = await snapshot(pod.pod);
    const up = startPodtap(pod, ['up'], cleanup);
    expectReady(await up.ready, pod, 'redirect');
    up.proc.kill('SIGTERM');
    expect((await up.proc).exitCode).toBe(0);
    expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
  });
});


