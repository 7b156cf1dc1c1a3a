import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FORMAT, Journal, Lock, deserialize, serialize, type JournalState } from '../../src/journal/journal.ts';
import { applyPlan, execute, undoSteps, type Effects } from '../../src/journal/apply.ts';
import { ipLines, type Step } from '../../src/journal/actions.ts';
import { removalScript } from '../../src/plan/guard.ts';
import { plan, type Generated, type PlanOptions } from '../../src/plan/plan.ts';
import { parseRoutes } from '../../src/pod/discover.ts';
import { PodtapError } from '../../src/errors.ts';
import { MULTUS, SHAPES, linksOf, podOf } from '../helpers/shapes.ts';
import type { BatchFailure } from '../../src/sys/ip.ts';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
function stateDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'podtap-journal-'));
  dirs.push(d);
  return d;
}
const log = () => {};

const OPTS: PlanOptions = { bridge: 'br0', tap: 'tap0', queues: 1, linkLocal: '169.254.75.1/32', linkLocalExplicit: false, antispoof: true, persistTap: false, support: { redirect: true }, datapath: 'bridge' };
const GEN = (nic: number): Generated => ({ serverMac: `02:aa:00:00:0${nic}:01`, portMac: `02:aa:00:00:0${nic}:02`, bridgeMac: `02:aa:00:00:0${nic}:03` });
const P = plan(SHAPES.ptp, linksOf(SHAPES.ptp), OPTS, GEN);

function newJournal(dir: string, p = P, pod = SHAPES.ptp): Journal {
  return Journal.create(dir, { settings: { queues: 1 }, pod, attachments: p.attachments, serverId: p.serverId });
}

/** Fake kernel effects that record, for each effect, how many steps the journal on disk held at that moment. */
function recorder(dir: string, fail?: (line: string) => string | undefined) {
  const events: { effect: string; journaled: number }[] = [];
  const onDisk = () => (existsSync(Journal.pathIn(dir)) ? deserialize(readFileSync(Journal.pathIn(dir), 'utf8'), 'x').steps.length : 0);
  const fx: Effects = {
    async ipBatch(lines, opts) {
      const out: BatchFailure[] = [];
      for (const [i, l] of lines.entries()) {
        events.push({ effect: `ip ${l}`, journaled: onDisk() });
        const msg = fail?.(l);
        if (msg) {
          out.push({ line: i, command: l, message: msg });
          if (!opts?.force) break;
        }
      }
      return out;
    },
    async nft(script) {
      events.push({ effect: `nft ${script.split('\n').slice(0, 3).join(' / ')}`, journaled: onDisk() });
      return undefined;
    },
    async settle() {
      events.push({ effect: 'settle', journaled: onDisk() });
      return 0;
    },
  };
  return { fx, events };
}

/** A journal file as a writer who recomputes the checksum would make it. */
function journalText(state: unknown): string {
  const body = JSON.stringify(state);
  return JSON.stringify({ crc32: crc32(body).toString(16).padStart(8, '0'), body }) + '\n';
}

function refusal(text: string): PodtapError {
  try {
    deserialize(text, '/run/podtap/journal.json');
  } catch (e) {
    expect(e).toBeInstanceOf(PodtapError);
    expect((e as PodtapError).code).toBe('journal');
    return e as PodtapError;
  }
  throw new Error('not refused');
}

describe('journal', () => {
  it('records every step before any of it is applied (write-ahead)', async () => {
    const dir = stateDir();
    const j = newJournal(dir);
    const { fx, events } = recorder(dir);
    await applyPlan(P.steps, j, { openTap: () => [99], log, effects: fx }, []);
    expect(events.length).toBeGreaterThan(10);
    expect(events.some((e) => e.effect.startsWith('nft '))).toBe(true);
    for (const e of events) expect(e.journaled).toBe(P.steps.length);
  });

  it('replays undo actions in reverse step order, and replaying twice gives the same actions', async () => {
    const dir = stateDir();
    const j = newJournal(dir);
    const a = recorder(dir);
    await applyPlan(P.steps, j, { openTap: () => [99], log, effects: a.fx }, []);
    const loaded = Journal.load(dir)!;
    expect(loaded.state.steps).toEqual(P.steps);
    const first = recorder(dir);
    expect((await undoSteps(loaded.state.steps, { log, effects: first.fx })).failures).toEqual([]);
    const second = recorder(dir);
    expect((await undoSteps(loaded.state.steps, { log, effects: second.fx })).failures).toEqual([]);
    expect(second.events.map((e) => e.effect)).toEqual(first.events.map((e) => e.effect));
    const expected = [...P.steps]
      .reverse()
      .flatMap((s) => s.undo)
      .flatMap((x) => ipLines(x)?.map((l) => `ip ${l}`) ?? [x.op === 'nft-delete' ? `nft ${removalScript(x.family).split('\n').slice(0, 3).join(' / ')}` : x.op]);
    // Having put an IPv6 address back (the link-local one), undo asks once how much DAD is left.
    expect(first.events.map((e) => e.effect)).toEqual([...expected, 'settle']);
  });

  it('treats "already gone" as done on replay but reports real failures', async () => {
    const steps: Step[] = [
      { id: 'a', do: [], undo: [{ op: 'link-del', name: 'br0' }] },
      { id: 'b', do: [], undo: [{ op: 'route-add', route: { family: 'inet', table: 'main', type: 'unicast', dst: 'default', gateway: '10.0.0.1', dev: 'eth0', flags: [] } }] },
    ];
    const { fx } = recorder(stateDir(), (l) => (l.startsWith('link del') ? 'Cannot find device "br0"' : l.startsWith('route') ? 'Error: Nexthop has invalid gateway.' : undefined));
    const r = await undoSteps(steps, { log, effects: fx });
    expect(r.failures).toHaveLength(1);
    expect(r.failures[0]).toMatch(/^b: ip route replace default via 10\.0\.0\.1 .*invalid gateway/);
  });

  it('retries lines the kernel refuses while IPv6 addresses are tentative, once they settle', async () => {
    const route = { family: 'inet6' as const, table: 'main', type: 'unicast', dst: 'fd00::/64', gateway: 'fd00::1', dev: 'eth0', prefsrc: 'fd00::5', flags: [] };
    const steps: Step[] = [{ id: 'r', do: [], undo: [{ op: 'route-add', route }] }];
    const line = 'route replace fd00::/64 via fd00::1 dev eth0 table main src fd00::5';
    let settled = false;
    const { fx, events } = recorder(stateDir(), () => (settled ? undefined : 'Error: Invalid source address.'));
    const settle = fx.settle;
    fx.settle = async (ms) => {
      settled = true;
      return settle(ms);
    };
    expect((await undoSteps(steps, { log, effects: fx })).failures).toEqual([]);
    expect(events.map((e) => e.effect)).toEqual([`ip ${line}`, 'settle', `ip ${line}`]);
  });

  it('stops at the failing step and names it', async () => {
    const dir = stateDir();
    const { fx } = recorder(dir, (l) => (l.startsWith('link add name br0') ? 'RTNETLINK answers: File exists' : undefined));
    await expect(applyPlan(P.steps, newJournal(dir), { openTap: () => [99], log, effects: fx }, [])).rejects.toThrow(/step nic0\/bridge-add.*File exists/);
  });

  it('waits for the guard in the background and reports its failure, without an unobserved rejection', async () => {
    const { fx } = recorder(stateDir());
    fx.nft = async () => 'Error: Could not process rule: No such file or directory';
    await expect(execute(P.steps, { openTap: () => [99], log, effects: fx }, [])).rejects.toThrow(/step guard\/bridge: nft: Error: Could not process rule/);
    // A foreground failure wins over the background one, and both settle first.
    const both = recorder(stateDir(), (l) => (l.startsWith('link add') ? 'RTNETLINK answers: File exists' : undefined));
    both.fx.nft = fx.nft;
    await expect(execute(P.steps, { openTap: () => [99], log, effects: both.fx }, [])).rejects.toThrow(/nic0\/bridge-add/);
  });

  it('writes atomically and refuses corrupt, truncated or foreign journals', () => {
    const dir = stateDir();
    const j = newJournal(dir);
    j.record(P.steps.slice(0, 3));
    const text = readFileSync(j.path, 'utf8');
    expect(Journal.load(dir)!.state.steps).toHaveLength(3);

    writeFileSync(j.path, text.slice(0, text.length / 2));
    expect(() => Journal.load(dir)).toThrow(/not valid JSON/);
    writeFileSync(j.path, text.replace('tap-open', 'tap-shut'));
    expect(() => Journal.load(dir)).toThrow(/checksum/);
    writeFileSync(j.path, '{"hello":1}');
    expect(() => Journal.load(dir)).toThrow(/not a podtap journal/);
    writeFileSync(j.path, serialize({ ...deserialize(text, 'x'), netns: 'net:[1]' }));
    expect(() => Journal.load(dir)).toThrow(/belongs to network namespace net:\[1\]/);
  });

  it('round-trips a multi-NIC journal exactly', () => {
    const p = plan(MULTUS, linksOf(MULTUS), { ...OPTS, datapath: 'redirect' }, GEN);
    const dir = stateDir();
    const j = newJournal(dir, p, MULTUS);
    j.record(p.steps);
    j.setPhase('ready');
    const back = Journal.load(dir)!.state;
    expect(back).toEqual(j.state);
    expect(back.format).toBe(FORMAT);
    expect(back.attachments).toHaveLength(4);
    expect(deserialize(serialize(back), 'x')).toEqual(back);
  });
});

describe('deserialize refuses what podtap would not write', () => {
  const state = (): JournalState => JSON.parse(JSON.stringify(newJournal(stateDir()).state)) as JournalState;

  it('a journal of podtap 0.1 (format 1), naming that release and how to restore with it', () => {
    const old = { format: 'podtap-journal/1', runId: 'x', pid: 1, netns: 'net:[1]', createdAt: '', phase: 'ready', steps: [{ id: 'bridge-add', do: [{ ip: 'link add br0 type bridge' }], undo: [{ ip: 'link del dev br0' }] }] };
    const e = refusal(journalText(old));
    expect(e.message).toMatch(/was written by podtap 0\.1 \(format podtap-journal\/1\)/);
    expect(e.hint).toMatch(/that release's `podtap down`/);
  });

  it('an unknown format, an unknown phase, no step list', () => {
    expect(refusal(journalText({ ...state(), format: 'podtap-journal/3' })).message).toMatch(/has format "podtap-journal\/3", expected podtap-journal\/2/);
    expect(refusal(journalText({ ...state(), phase: 'done' })).message).toMatch(/unknown phase "done"/);
    expect(refusal(journalText({ ...state(), steps: 'all' })).message).toMatch(/no step list/);
  });

  it('a checksum mismatch', () => {
    const text = serialize(state());
    const outer = JSON.parse(text) as { crc32: string; body: string };
    expect(refusal(JSON.stringify({ ...outer, body: outer.body.replace('"phase":"setup"', '"phase":"ready"') })).message).toMatch(/fails its checksum/);
    expect(refusal(JSON.stringify({ ...outer, crc32: '00000000' })).message).toMatch(/fails its checksum/);
  });

  it('a step with a forged action, even with a recomputed checksum; nothing of it is acted on', () => {
    const forged: unknown[] = [
      { id: 'nic0/tap-open', do: [], undo: [{ ip: 'link del dev eth0' }] },
      { id: 'nic0/x', do: [], undo: [{ op: 'sysctl', key: 'net/ipv4/ip_forward', value: '1' }] },
      { id: 'nic0/x', do: [], undo: [{ op: 'link-del', name: 'eth0' }] },
      { id: 'nic0/x', do: [], undo: [{ op: 'route-add', route: { family: 'inet', table: 'main', type: 'unicast', dst: 'default', dev: 'eth0 table 5', flags: [] } }] },
      { id: 'guard/bridge', do: [{ op: 'nft-load', table: { family: 'bridge', name: 'filter', nics: [] } }], undo: [] },
      { id: 'guard/bridge', do: [], undo: [{ op: 'nft-delete', family: 'inet', name: 'filter' }] },
    ];
    for (const step of forged) {
      const e = refusal(journalText({ ...state(), steps: [...P.steps, step] }));
      expect(e.message).toMatch(/holds a step podtap would never write \(step .*\), so none of it is acted on/);
    }
  });
});

describe('deserialize refuses a deletion of a pod interface', () => {
  it('even when the step claims to have created a link of that name', () => {
    // `down` replays only undo-actions: a do-action that "creates" eth0 is
    // never run, so it must not license deleting the pod's eth0.
    const state = JSON.parse(JSON.stringify(newJournal(stateDir()).state)) as JournalState;
    const cover = { id: 'nic0/tap-open', do: [{ op: 'tap-open', tap: { name: 'eth0', queues: 1, persist: false } }], undo: [{ op: 'link-del', name: 'eth0' }] };
    expect(state.pod.interfaces.map((i) => i.link.name)).toContain('eth0');
    const e = refusal(journalText({ ...state, steps: [cover, ...P.steps.slice(1)] }));
    expect(e.message).toMatch(/eth0/);
  });
});

describe('a pod with a multipath route', () => {
  it('can be set up and its journal still loads for teardown', () => {
    // As `ip -j route show` prints it: no device of its own, one per next hop.
    const [multipath] = parseRoutes([{ dst: '10.40.0.0/16', protocol: 'boot', flags: [], nexthops: [{ gateway: '10.22.0.1', dev: 'eth0', weight: 1, flags: [] }, { gateway: '10.22.0.1', dev: 'eth0', weight: 2, flags: ['onlink'] }] }]);
    const eth0 = SHAPES.ptp.interfaces[0]!;
    const pod = podOf({ ...eth0, routes: [...eth0.routes, multipath!] });
    const p = plan(pod, linksOf(pod), OPTS, GEN);
    expect(p.steps.some((s) => s.do.some((a) => a.op === 'route-del' && a.route === multipath))).toBe(true);
    const j = newJournal(stateDir(), p, pod);
    j.record(p.steps);
    expect(() => deserialize(readFileSync(j.path, 'utf8'), j.path)).not.toThrow();
  });
});

describe('lock', () => {
  it('lets one holder take the lock, and takes over a dead holder\'s lock', async () => {
    const dir = stateDir();
    const lock = await Lock.acquire(dir, 'set up');
    expect(readFileSync(join(dir, 'lock'), 'utf8')).toBe(`${process.pid}\n`);
    await expect(Lock.acquire(dir, 'set up')).rejects.toThrow(new RegExp(`another podtap \\(pid ${process.pid}\\) holds .* so this one cannot set up`));
    lock.release();
    expect(existsSync(join(dir, 'lock'))).toBe(false);
    // A file left by a holder that died holds no flock.
    writeFileSync(join(dir, 'lock'), '999999999\n', { mode: 0o600 });
    (await Lock.acquire(dir, 'set up')).release();
  });
});
