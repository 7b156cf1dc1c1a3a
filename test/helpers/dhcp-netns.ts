// Namespaces for the DHCP tests, standing for the pod as podtap leaves it:
//
//   node ns                pod ns                                vm ns
//   nveth (gateway) ─veth─ eth0 ─┐                               
//                                br0 (169.254.75.1/32) ─ vmtap ─veth─ eth0 (VM MAC)
//
// with the core's guard table, the /32 route to the VM's address and the
// permanent neighbour entry installed in the pod ns. Nothing is created in
// the root namespace; every name starts with "ptd-" and a random id, and
// everything made is undone by cleanup(), which never throws.

import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { guardRuleset } from '../../src/plan/guard.ts';
import type { DhcpConfig } from '../../src/serve/dhcp4/config.ts';
import type { DhcpStats } from '../../src/serve/dhcp4/server.ts';

export const SERVER_IP = '169.254.75.1';
export const CLEAN_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const NODE = join(import.meta.dirname, '../../node_modules/.bin/node');
const SERVER_CHILD = join(import.meta.dirname, 'dhcp-server-child.ts');

async function sh(cmd: string, args: string[], input?: string): Promise<string> {
  const r = await execa(cmd, args, input === undefined ? {} : { input });
  return r.stdout;
}

/** A started process whose output is kept, and which is stopped by pid. */
export class Proc {
  readonly child: ChildProcess;
  readonly name: string;
  out = '';
  private exited: Promise<number | null>;
  private listeners: (() => void)[] = [];
  exitCode: number | null | undefined = undefined;

  constructor(name: string, argv: string[], opts: { env?: NodeJS.ProcessEnv } = {}) {
    this.name = name;
    this.child = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env });
    const take = (d: Buffer) => {
      this.out += d.toString();
      for (const l of this.listeners.splice(0)) l();
    };
    this.child.stdout!.on('data', take);
    this.child.stderr!.on('data', take);
    this.child.stdin!.on('error', () => {});
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code) => {
        this.exitCode = code;
        for (const l of this.listeners.splice(0)) l();
        resolve(code);
      });
      this.child.on('error', (e) => {
        this.out += `\n[spawn error: ${e.message}]\n`;
        this.exitCode = null;
        resolve(null);
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Resolves when `test` holds for the output so far; rejects on timeout or exit. */
  waitFor(test: (out: string) => boolean, ms: number, what: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (test(this.out)) {
          clearTimeout(timer);
          resolve();
        } else if (this.exitCode !== undefined) {
          clearTimeout(timer);
          reject(new Error(`${this.name} exited (${this.exitCode}) before ${what}; output:\n${this.out.slice(-4000)}`));
        } else this.listeners.push(check);
      };
      const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${this.name}: ${what}; output:\n${this.out.slice(-4000)}`)), ms);
      check();
    });
  }

  wait(): Promise<number | null> {
    return this.exited;
  }

  /** SIGTERM (or the given signal), then SIGKILL if it lingers. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 5000): Promise<void> {
    if (this.exitCode !== undefined || this.child.pid === undefined) return;
    try {
      process.kill(this.child.pid, signal);
    } catch {
      return;
    }
    const done = await Promise.race([this.exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), graceMs))]);
    if (!done) {
      try {
        process.kill(this.child.pid, 'SIGKILL');
      } catch {
        // gone already
      }
      await this.exited;
    }
  }
}

export interface TopologyOptions {
  vmIp: string; // the pod's address, given to the VM
  nodeAddr: string; // CIDR on the node side: the pod's gateway lives here
  vmMac: string; // the MAC on the VM's interface
}

export class Topology {
  readonly id = randomBytes(3).toString('hex');
  readonly pod = `ptd-${this.id}-p`;
  readonly node = `ptd-${this.id}-n`;
  readonly vm = `ptd-${this.id}-v`;
  readonly bridgeMac = `02:70:64:${this.id.slice(0, 2)}:${this.id.slice(2, 4)}:${this.id.slice(4, 6)}`;
  readonly tap = 'vmtap';
  readonly nodeVeth = 'nveth';
  dir = '';
  private undo: (() => Promise<unknown>)[] = [];
  private procs: Proc[] = [];

  static async create(o: TopologyOptions): Promise<Topology> {
    const t = new Topology();
    try {
      await t.build(o);
    } catch (e) {
      await t.cleanup();
      throw e;
    }
    return t;
  }

  private async build(o: TopologyOptions): Promise<void> {
    this.dir = await mkdtemp(join(tmpdir(), `ptd-${this.id}-`));
    this.undo.push(() => rm(this.dir, { recursive: true, force: true }));
    for (const ns of [this.node, this.pod, this.vm]) {
      await sh('ip', ['netns', 'add', ns]);
      this.undo.push(() => this.deleteNetns(ns));
      await sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    }
    const ipp = (...a: string[]) => sh('ip', ['-n', this.pod, ...a]);
    // Links are created inside the pod ns and their peers land directly in
    // the other namespaces: nothing passes through the root namespace.
    await ipp('link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', this.nodeVeth, 'netns', this.node);
    await ipp('link', 'add', 'br0', 'address', this.bridgeMac, 'type', 'bridge');
    await sh('ip', ['netns', 'exec', this.pod, 'sysctl', '-q', '-w', 'net.ipv6.conf.br0.disable_ipv6=1']);
    await ipp('link', 'add', this.tap, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', this.vm);
    await sh('ip', ['-n', this.vm, 'link', 'set', 'eth0', 'address', o.vmMac]);
    await ipp('link', 'set', 'eth0', 'master', 'br0');
    await ipp('link', 'set', this.tap, 'master', 'br0');
    await ipp('addr', 'add', `${SERVER_IP}/32`, 'dev', 'br0');
    for (const l of ['br0', 'eth0', this.tap]) await ipp('link', 'set', l, 'up');
    // What the core installs so unicast replies reach the VM without ARP.
    await ipp('route', 'add', `${o.vmIp}/32`, 'dev', 'br0', 'src', SERVER_IP);
    await ipp('neigh', 'add', o.vmIp, 'lladdr', o.vmMac, 'dev', 'br0', 'nud', 'permanent');
    await sh('ip', ['netns', 'exec', this.pod, 'nft', '-f', '-'], guardRuleset({ veth: 'eth0', tap: this.tap, bridgeMac: this.bridgeMac, serverIp: SERVER_IP }));
    await sh('ip', ['-n', this.node, 'addr', 'add', o.nodeAddr, 'dev', this.nodeVeth]);
    await sh('ip', ['-n', this.node, 'link', 'set', this.nodeVeth, 'up']);
  }

  /** Kill whatever still runs in the namespace (by pid), then delete it. */
  private async deleteNetns(ns: string): Promise<void> {
    try {
      const pids = (await sh('ip', ['netns', 'pids', ns])).split(/\s+/).filter(Boolean).map(Number);
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // exited meanwhile
        }
      }
      if (pids.length > 0) await new Promise((r) => setTimeout(r, 200));
    } catch {
      // the namespace may not exist
    }
    await sh('ip', ['netns', 'del', ns]).catch(() => {});
  }

  /** Runs argv inside a namespace with a clean environment. */
  spawn(name: string, ns: string, argv: string[], env: Record<string, string> = {}): Proc {
    const p = new Proc(name, ['ip', 'netns', 'exec', ns, ...argv], { env: { PATH: CLEAN_PATH, ...env } });
    this.procs.push(p);
    return p;
  }

  exec(ns: string, argv: string[], input?: string): Promise<string> {
    return sh('ip', ['netns', 'exec', ns, ...argv], input);
  }

  async file(name: string, content: string, mode = 0o644): Promise<string> {
    const path = join(this.dir, name);
    await writeFile(path, content, { mode });
    return path;
  }

  async startServer(config: DhcpConfig): Promise<ServerProc> {
    const path = await this.file('dhcp-config.json', JSON.stringify(config));
    const p = this.spawn('dhcp server', this.pod, [NODE, SERVER_CHILD, path]);
    const s = new ServerProc(p);
    await p.waitFor((o) => o.includes('"ready":true'), 20_000, 'the ready line');
    return s;
  }

  /** tcpdump on the node's side of the pod veth: everything that leaves the pod. */
  async startCapture(): Promise<Capture> {
    const pcap = join(this.dir, 'node.pcap');
    const p = this.spawn('tcpdump', this.node, ['tcpdump', '-i', this.nodeVeth, '-n', '-U', '-w', pcap, 'arp or udp port 67 or udp port 68']);
    await p.waitFor((o) => o.includes('listening on'), 10_000, 'tcpdump to listen');
    return new Capture(p, pcap);
  }

  async cleanup(): Promise<void> {
    for (const p of this.procs.reverse()) await p.stop().catch(() => {});
    for (const u of this.undo.reverse()) await u().catch(() => {});
    this.undo = [];
  }
}

export class Capture {
  private readonly proc: Proc;
  readonly pcap: string;
  constructor(proc: Proc, pcap: string) {
    this.proc = proc;
    this.pcap = pcap;
  }
  /** Stops tcpdump and counts what it saw. */
  async stop(): Promise<{ dhcp: string[]; arp: string[] }> {
    await this.proc.stop('SIGINT');
    const read = async (filter: string) =>
      (await sh('tcpdump', ['-r', this.pcap, '-n', filter]).catch((e: { stdout?: string }) => e.stdout ?? '')).split('\n').filter(Boolean);
    return { dhcp: await read('udp port 67 or udp port 68'), arp: await read('arp') };
  }
}

export class ServerProc {
  readonly proc: Proc;
  constructor(proc: Proc) {
    this.proc = proc;
  }

  lines(): Record<string, unknown>[] {
    const out: Record<string, unknown>[] = [];
    for (const l of this.proc.out.split('\n')) {
      if (!l.startsWith('{')) continue;
      try {
        out.push(JSON.parse(l) as Record<string, unknown>);
      } catch {
        // a partial line
      }
    }
    return out;
  }

  logs(): { log: string; msg: string; fields?: Record<string, unknown> }[] {
    return this.lines().filter((l) => typeof l.log === 'string') as { log: string; msg: string; fields?: Record<string, unknown> }[];
  }

  async stats(): Promise<DhcpStats> {
    const before = this.lines().filter((l) => l.stats).length;
    this.proc.child.stdin!.write('stats\n');
    await this.proc.waitFor(() => this.lines().filter((l) => l.stats).length > before, 5000, 'stats');
    return this.lines().filter((l) => l.stats).at(-1)!.stats as DhcpStats;
  }

  alive(): boolean {
    return this.proc.exitCode === undefined;
  }
}

/** Names for temp files and processes the tests can't collide on. */
export async function netnsList(): Promise<string[]> {
  return (await sh('ip', ['netns', 'list'])).split('\n').map((l) => l.split(' ')[0]!).filter(Boolean);
}
