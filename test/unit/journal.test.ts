import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Journal, Lock, deserialize, serialize } from '../../src/journal/journal.ts';
import { applyPlan, undoSteps, type Effects } from '../../src/journal/apply.ts';
import { plan } from '../../src/plan/plan.ts';
import { SHAPES } from '../helpers/shapes.ts';
import type { Step } from '../../src/plan/steps.ts';
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

function newJournal(dir: string): Journal {
  const pod = SHAPES.ptp;
  return Journal.create(dir, { settings: {}, pod, vm: { mac: pod.link.mac, ip: '10.22.0.5/16', address: '10.22.0.5', prefixlen: 16, mtu: 1500 }, linkLocal: '169.254.75.1/32', bridgeMac: '02:00:00:00:00:02', vethMac: '02:00:00:00:00:01' });
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
      events.push({ effect: `nft ${script.split('\n')[0]}`, journaled: onDisk() });
      return undefined;
    },
    sysctl(key, value) {
      events.push({ effect: `sysctl ${key}=${value}`, journaled: onDisk() });
    },
    async settle() {
      events.push({ effect: 'settle', journaled: onDisk() });
    },
  };
  return { fx, events };
}

const GEN = { vethMac: '02:aa:bb:cc:dd:01', bridgeMac: '02:aa:bb:cc:dd:02' };
const P = plan(SHAPES.ptp, [], { bridge: 'br0', tap: 'tap0', queues: 1, linkLocal: '169.254.75.1/32', linkLocalExplicit: false, antispoof: true, persistTap: false }, GEN);

describe('journal', () => {
  it('records every step before any of it is applied (write-ahead)', async () => {
    const dir = stateDir();
    const j = newJournal(dir);
    const { fx, events } = recorder(dir);
    await applyPlan(P.steps, j, { openTap: () => [99], log, effects: fx });
    expect(events.length).toBeGreaterThan(10);
    for (const e of events) expect(e.journaled).toBe(P.steps.length);
  });

  it('replays undo actions in reverse step order, and replaying twice gives the same actions', async () => {
    const dir = stateDir();
    const j = newJournal(dir);
    const a = recorder(dir);
    await applyPlan(P.steps, j, { openTap: () => [99], log, effects: a.fx });
    const loaded = Journal.load(dir)!;
    const first = recorder(dir);
    expect((await undoSteps(loaded.state.steps, { log, effects: first.fx })).failures).toEqual([]);
    const second = recorder(dir);
    expect((await undoSteps(loaded.state.steps, { log, effects: second.fx })).failures).toEqual([]);
    expect(second.events.map((e) => e.effect)).toEqual(first.events.map((e) => e.effect));
    const expected = [...P.steps].reverse().flatMap((s) => s.undo).map((x) => ('ip' in x ? `ip ${x.ip}` : 'nft' in x ? `nft ${x.nft.split('\n')[0]}` : 'sysctl' in x ? `sysctl ${x.sysctl}=${x.value}` : 'tap'));
    expect(first.events.map((e) => e.effect)).toEqual(expected);
  });

  it('treats "already gone" as done on replay but reports real failures', async () => {
    const steps: Step[] = [
      { id: 'a', do: [], undo: [{ ip: 'link del dev br0' }] },
      { id: 'b', do: [], undo: [{ ip: 'route replace default via 10.0.0.1 dev eth0 table main' }] },
    ];
    const { fx } = recorder(stateDir(), (l) => (l.startsWith('link del') ? 'Cannot find device "br0"' : l.startsWith('route') ? 'Error: Nexthop has invalid gateway.' : undefined));
    const r = await undoSteps(steps, { log, effects: fx });
    expect(r.failures).toHaveLength(1);
    expect(r.failures[0]).toMatch(/^b: ip route replace default .*invalid gateway/);
  });

  it('retries lines the kernel refuses while IPv6 addresses are tentative, once they settle', async () => {
    const steps: Step[] = [{ id: 'r', do: [], undo: [{ ip: 'route replace fd00::/64 via fd00::1 dev eth0 src fd00::5' }] }];
    let settled = false;
    const { fx, events } = recorder(stateDir(), () => (settled ? undefined : 'Error: Invalid source address.'));
    const settle = fx.settle;
    fx.settle = async () => {
      settled = true;
      await settle();
    };
    expect((await undoSteps(steps, { log, effects: fx })).failures).toEqual([]);
    expect(events.map((e) => e.effect)).toEqual(['ip route replace fd00::/64 via fd00::1 dev eth0 src fd00::5', 'settle', 'ip route replace fd00::/64 via fd00::1 dev eth0 src fd00::5']);
  });

  it('stops at the failing step and names it', async () => {
    const dir = stateDir();
    const { fx } = recorder(dir, (l) => (l.startsWith('link add name br0') ? 'RTNETLINK answers: File exists' : undefined));
    await expect(applyPlan(P.steps, newJournal(dir), { openTap: () => [99], log, effects: fx })).rejects.toThrow(/step bridge-add.*File exists/);
  });

  it('writes atomically and refuses corrupt, truncated or foreign journals', () => {
    const dir = stateDir();
    const j = newJournal(dir);
    j.record(P.steps.slice(0, 3));
    const text = readFileSync(j.path, 'utf8');
    expect(Journal.load(dir)!.state.steps).toHaveLength(3);
    expect(existsSync(`${j.path}.tmp`)).toBe(false);

    writeFileSync(j.path, text.slice(0, text.length / 2));
    expect(() => Journal.load(dir)).toThrow(/not valid JSON/);
    writeFileSync(j.path, text.replace('route del', 'route add'));
    expect(() => Journal.load(dir)).toThrow(/checksum/);
    writeFileSync(j.path, '{"hello":1}');
    expect(() => Journal.load(dir)).toThrow(/not a podtap journal/);
    const foreign = JSON.parse(deserialize(text, 'x') ? JSON.stringify({ ...deserialize(text, 'x'), netns: 'net:[1]' }) : '');
    writeFileSync(j.path, serialize(foreign));
    expect(() => Journal.load(dir)).toThrow(/belongs to network namespace net:\[1\]/);
  });

  it('lets one holder take the lock, and takes over a dead holder\'s lock', () => {
    const dir = stateDir();
    const lock = Lock.acquire(dir, 'set up');
    expect(() => Lock.acquire(dir, 'set up')).toThrow(/another podtap \(pid \d+\)/);
    lock.release();
    writeFileSync(join(dir, 'lock'), '999999999 12345\n');
    Lock.acquire(dir, 'set up').release();
  });
});
