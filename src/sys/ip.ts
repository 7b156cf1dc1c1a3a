// iproute2 at the edge: `ip -j` to read, `ip -batch` to apply many changes in
// one process. Everything podtap does to links, addresses, routes and
// neighbours goes through here as batch lines.

import { run } from './exec.ts';
import { PodtapError } from '../errors.ts';

export const IP = process.env.PODTAP_IP_BIN ?? 'ip';

/** Runs read-only commands in one `ip -j -d -batch` and returns one JSON array per command. */
export async function ipJsonBatch(commands: string[]): Promise<any[][]> {
  const r = await run(IP, ['-j', '-d', '-batch', '-'], commands.join('\n') + '\n');
  if (r.exitCode !== 0) {
    if (r.spawnError === 'ENOENT')
      throw new PodtapError('environment', 'the `ip` command (iproute2) is not installed', 'install iproute2 in the container image');
    throw new PodtapError('discovery', `reading the namespace with ip failed: ${r.stderr.trim()}`, 'check that iproute2 is installed and podtap runs in the pod network namespace');
  }
  return r.stdout
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l));
}

export interface BatchFailure {
  line: number; // 0-based index into the lines given
  command: string;
  message: string;
}

/**
 * Applies lines with `ip -batch`. Without `force` ip stops at the first
 * failure; with it every line is tried. Either way the failures come back with
 * the line they belong to, so the caller knows exactly what was applied.
 */
export async function ipBatch(lines: string[], opts: { force?: boolean } = {}): Promise<BatchFailure[]> {
  if (lines.length === 0) return [];
  const args = [...(opts.force ? ['-force'] : []), '-batch', '-'];
  const r = await run(IP, args, lines.join('\n') + '\n');
  if (r.exitCode === 0) return [];
  if (r.spawnError === 'ENOENT') throw new PodtapError('environment', 'the `ip` command (iproute2) is not installed', 'install iproute2 in the container image');
  return parseBatchErrors(r.stderr, lines);
}

/** ip prints each failure's message, then "Command failed -:N" (1-based). */
export function parseBatchErrors(stderr: string, lines: string[]): BatchFailure[] {
  const out: BatchFailure[] = [];
  let pending: string[] = [];
  for (const raw of stderr.split('\n')) {
    const m = /^Command failed -:(\d+)\s*$/.exec(raw);
    if (m) {
      const line = Number(m[1]) - 1;
      out.push({ line, command: lines[line] ?? '', message: pending.join(' ').trim() || 'failed' });
      pending = [];
    } else if (raw.trim()) pending.push(raw.trim());
  }
  if (out.length === 0) out.push({ line: -1, command: '', message: stderr.trim() || 'ip -batch failed' });
  return out;
}
