// The data-path benchmark in its --quick form, as a smoke test: it must run
// on this machine, measure every contender in both directions and print its
// table. No timing is asserted (numbers on a shared 2-core CI machine say
// nothing); what is asserted is that every contender moved frames, that
// podtap's default path is the one measured as "default", and that the
// benchmark leaves the machine as it found it.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { listNetns, run } from '../helpers/netns.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const out = mkdtempSync(join(tmpdir(), 'podtap-bench-smoke-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

const rootLinks = () => execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' }).split('\n').map((l) => l.split(':')[1]?.trim()).filter(Boolean).sort();

interface Summary { n: number; median: number }
interface DatapathData {
  cases: string[];
  contenders: { id: string; label: string }[];
  missing: { id: string; why: string }[];
  summaries: Record<string, Record<string, Summary>>;
  podtapDefault: { path: string; stated: boolean };
}

describe('bench: the data-path section (--quick) runs and measures every contender', () => {
  it('podtap bridge and redirect (guard on and off), macvtap and passt each deliver frames VM → node and node → VM, 64 and 1514 bytes', async () => {
    const linksBefore = rootLinks();
    const r = await run(process.execPath, [join(ROOT, 'bench', 'run.ts'), '--quick', '--only', 'datapath', '--dp-trials', '1', '--dp-seconds', '0.2', '--out', out], { reject: false, timeoutMs: 600_000 });
    expect(r.exitCode, `bench failed:\n${r.stderr.slice(-3000)}`).toBe(0);
    // The table is printed, with the reference and podtap's default path.
    expect(r.stdout).toMatch(/\| Data path \| VM → node, 64 B frames: macvtap passthru/);
    expect(r.stdout).toMatch(/podtap redirect \(default\), guard on/);

    const res = JSON.parse(readFileSync(join(out, 'latest.json'), 'utf8')) as { sections: { name: string; data: unknown }[]; failures: string[] };
    expect(res.failures).toEqual([]);
    const dp = res.sections.find((s) => s.name === 'Data path')?.data as DatapathData;
    expect(dp.podtapDefault).toMatchObject({ path: 'redirect', stated: true });
    expect(dp.missing).toEqual([]);
    expect(dp.cases.sort()).toEqual(['rx-1514', 'rx-64', 'tx-1514', 'tx-64']);
    const ids = dp.contenders.map((c) => c.id).sort();
    expect(ids).toEqual(['bridge', 'bridge-noas', 'macvtap', 'passt', 'redirect', 'redirect-noas']);
    for (const id of ids)
      for (const c of dp.cases) {
        const s = dp.summaries[id]?.[c];
        expect(s?.n, `${id} ${c}: trials`).toBeGreaterThan(0);
        expect(s!.median, `${id} ${c}: packets per second`).toBeGreaterThan(0);
      }

    // Nothing left behind: no namespace of the benchmark's, no link in the root namespace.
    expect((await listNetns()).filter((n) => n.startsWith('ptb-'))).toEqual([]);
    expect(rootLinks()).toEqual(linksBefore);
  }, 900_000);
});
