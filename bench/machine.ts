// What the numbers were measured on, and the preconditions for measuring.

import { existsSync, readFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, release, totalmem } from 'node:os';
import { CNI_BIN, NODE, ROOT, timed } from './proc.ts';

export interface Machine {
  cpuModel: string;
  cores: number;
  kernel: string;
  node: string; // the Node podtap runs on
  benchNode: string;
  memoryGiB: number;
  loadAvgAtStart: number[];
  tools: Record<string, string>;
  git: string;
  date: string;
}

async function firstLine(argv: string[]): Promise<string> {
  try {
    const r = await timed(argv, { check: false, timeoutMs: 10_000 });
    return (r.stdout + r.stderr).split('\n').find((l) => l.trim())?.trim() ?? '?';
  } catch {
    return '?';
  }
}

export async function describeMachine(): Promise<Machine> {
  let cpuModel = cpus()[0]?.model ?? '';
  if (!cpuModel) {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    cpuModel = m?.[1] ?? 'unknown';
  }
  const [node, ip, nft, perfdhcp, dnsmasq, ptp, gitHead, gitDirty] = await Promise.all([
    firstLine([NODE, '--version']),
    firstLine(['ip', '-V']),
    firstLine(['nft', '--version']),
    firstLine(['perfdhcp', '-v']),
    firstLine(['dnsmasq', '--version']),
    firstLine([`${CNI_BIN}/ptp`, 'version']),
    firstLine(['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD']),
    timed(['git', '-C', ROOT, 'status', '--porcelain', '--', 'src'], { check: false }).then((r) => (r.stdout.trim() ? ' + uncommitted changes in src/' : ''), () => ''),
  ]);
  return {
    cpuModel,
    cores: availableParallelism(),
    kernel: release(),
    node,
    benchNode: process.version,
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    loadAvgAtStart: loadavg().map((x) => Math.round(x * 100) / 100),
    tools: { ip, nft, perfdhcp, dnsmasq, ptp },
    git: gitHead + gitDirty,
    date: new Date().toISOString(),
  };
}

/** Refuses early, with the fix, when something the benchmark needs is missing. */
export async function preflight(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench: run as root (it creates network namespaces); `sudo npm run bench`');
  const need: [string, string][] = [
    ['ip', 'iproute2'],
    ['nft', 'nftables'],
    ['nsenter', 'util-linux'],
    ['perfdhcp', 'kea-admin'],
    ['dnsmasq', 'dnsmasq-base'],
  ];
  const missing: string[] = [];
  for (const [cmd, pkg] of need) {
    const r = await timed(['sh', '-c', `command -v ${cmd}`], { check: false });
    if (r.code !== 0) missing.push(`${cmd} (${pkg})`);
  }
  if (!existsSync(`${CNI_BIN}/ptp`)) missing.push(`${CNI_BIN}/ptp (containernetworking-plugins)`);
  if (!existsSync('/dev/net/tun')) missing.push('/dev/net/tun');
  if (!existsSync(NODE)) missing.push(`${NODE} (npm install)`);
  if (missing.length) throw new Error(`bench: missing ${missing.join(', ')}; run sh test/install.sh`);
}
