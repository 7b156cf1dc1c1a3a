// The results: one Markdown table (also printed), the raw data as JSON, and
// the SVG chart, under bench/results/ with a timestamp, plus latest.* copies.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Machine } from './machine.ts';
import { ROOT } from './proc.ts';
import { fmt, type Summary } from './stats.ts';

export interface Row {
  metric: string;
  podtap: string;
  baseline?: string; // what it is compared with
  baselineValue?: string;
  ratio?: string;
  target: string;
  /** undefined: informational row, no target */
  met?: boolean;
  /** How far off the target, when missed (or the margin when met). */
  margin?: string;
}

export interface Section {
  name: string;
  rows: Row[];
  notes: string[];
  data: unknown;
  /** Extra Markdown (profile tables) appended after the main table. */
  extraMarkdown?: string;
}

export interface Results {
  machine: Machine;
  options: Record<string, unknown>;
  sections: Section[];
  durationS: number;
  failures: string[];
}

/** A ratio target "value ≤ limit × baseline": met flag and the margin text. */
export function ratioTarget(podtap: Summary, base: Summary, limit: number, unit = 'ms'): Pick<Row, 'ratio' | 'met' | 'margin' | 'target'> {
  const r = podtap.median / base.median;
  const met = r <= limit;
  const allowed = limit * base.median;
  const margin = met
    ? `met with ${fmt((1 - r / limit) * 100, 2)}% headroom`
    : `missed: ${fmt(r / limit, 3)}× over; needs −${fmt(podtap.median - allowed)} ${unit} (to ≤ ${fmt(allowed)} ${unit})`;
  return { ratio: `${fmt(r)}×`, met, margin, target: `≤ ${limit}×` };
}

/** "value ≥ limit × baseline" (throughput). */
export function ratioAtLeast(podtap: Summary, base: Summary, limit: number, unit: string): Pick<Row, 'ratio' | 'met' | 'margin' | 'target'> {
  const r = podtap.median / base.median;
  const met = r >= limit;
  const margin = met ? `met (${fmt(r)}× of dnsmasq)` : `missed: reaches ${fmt(r * 100, 3)}% of ${fmt(limit * base.median)} ${unit}`;
  return { ratio: `${fmt(r)}×`, met, margin, target: `≥ ${limit}×` };
}

function esc(s: string): string {
  return s.replace(/\|/g, '\\|');
}

export function markdownTable(sections: Section[]): string {
  const head = '| Section | Metric | podtap | Baseline | Baseline value | Ratio | Target | Met | Margin |\n|---|---|---|---|---|---|---|---|---|\n';
  const lines: string[] = [];
  for (const s of sections) {
    for (const r of s.rows) {
      const met = r.met === undefined ? '' : r.met ? '✅' : '❌';
      lines.push(`| ${esc(s.name)} | ${esc(r.metric)} | ${esc(r.podtap)} | ${esc(r.baseline ?? '')} | ${esc(r.baselineValue ?? '')} | ${r.ratio ?? ''} | ${esc(r.target)} | ${met} | ${esc(r.margin ?? '')} |`);
    }
  }
  return head + lines.join('\n') + '\n';
}

export function machineMarkdown(m: Machine): string {
  return [
    `- CPU: ${m.cpuModel}, ${m.cores} cores; RAM ${m.memoryGiB} GiB; load average at start ${m.loadAvgAtStart.join(' / ')}`,
    `- Kernel: ${m.kernel}; Node (podtap's): ${m.node}; bench Node: ${m.benchNode}`,
    `- Tools: ${Object.entries(m.tools).map(([k, v]) => `${k}: ${v}`).join('; ')}`,
    `- Tree: ${m.git}; run at ${m.date}`,
  ].join('\n');
}

export function renderMarkdown(res: Results, svgFile?: string): string {
  const parts = [
    '# podtap benchmark',
    '',
    machineMarkdown(res.machine),
    `- Options: ${JSON.stringify(res.options)}; took ${Math.round(res.durationS)} s`,
    '',
    'Each figure: median (min–max) over the runs given in the notes; ratios are of medians measured in the same interleaved run.',
    '',
    markdownTable(res.sections),
  ];
  if (svgFile) parts.push(`![podtap phases](${svgFile})`, '');
  for (const s of res.sections) {
    if (!s.notes.length && !s.extraMarkdown) continue;
    parts.push(`## ${s.name}`, '');
    for (const n of s.notes) parts.push(`- ${n}`);
    parts.push('');
    if (s.extraMarkdown) parts.push(s.extraMarkdown, '');
  }
  if (res.failures.length) parts.push('## Failures', '', ...res.failures.map((f) => '```\n' + f + '\n```'), '');
  return parts.join('\n');
}

/** Writes bench-<stamp>.{md,json,svg} and latest.{md,json,svg}; returns the paths. */
export function writeResults(res: Results, svg: string | undefined, outDir = join(ROOT, 'bench/results')): string[] {
  mkdirSync(outDir, { recursive: true });
  const stamp = res.machine.date.replace(/[-:]/g, '').replace(/\..*$/, '').replace('T', '-');
  const written: string[] = [];
  for (const base of [`bench-${stamp}`, 'latest']) {
    const svgName = svg ? `${base}.svg` : undefined;
    if (svg && svgName) {
      writeFileSync(join(outDir, svgName), svg);
      written.push(join(outDir, svgName));
    }
    writeFileSync(join(outDir, `${base}.md`), renderMarkdown(res, svgName));
    writeFileSync(join(outDir, `${base}.json`), JSON.stringify(res, null, 2) + '\n');
    written.push(join(outDir, `${base}.md`), join(outDir, `${base}.json`));
  }
  return written;
}
