// 6. Data path: packets per second between the VM and the node, through each
// way of joining a pod's veth to a VM, all measured interleaved in one run.
//
// Every contender gets its own fresh CNI ptp pod (pod + node namespace pair,
// made by the test helpers) and keeps its data path up for the whole
// section, so a trial measures a path that is already up and warm:
//
//   bridge        `podtap run [--datapath bridge] -- dpgen agent --fds {fds}
//                 --mac {mac} ...`: br0 + tap0 + the bridge-family guard
//   bridge-noas   the same with --no-antispoof (the anti-spoofing rules' cost)
//   redirect(-noas)  `--datapath redirect` (nftables netdev ingress `fwd`, no
//                 bridge), measured only when `podtap --help` has --datapath;
//                 until then the report says it is not available
//   macvtap       the reference: a bare macvtap in passthru mode on the pod's
//                 eth0, no filtering; dpgen opens its character device
//   passt         Debian's passt in the pod namespace, dpgen on its UNIX
//                 socket (QEMU's stream protocol): the user-space peer
//
// podtap's default path (as its --help states it) is started without
// --datapath, and its ready line must name the path we expect; the targets
// are about that one.
//
// dpgen (bench/tools/dpgen.c, built here into bench/.build/) plays the VMM.
// It connects back to a control socket of ours and runs `tx` / `rx` commands.
//
//   VM → node   dpgen writes Ethernet/IPv4/UDP frames (VM's MAC and address →
//               node veth's MAC, node address 10.22.0.1, UDP port 7777) as
//               fast as it can for S seconds. The node counts what arrives
//               with an nftables netdev ingress counter on its end of the
//               veth, which then drops the frame (so the node's IP stack
//               costs nothing). Delivered/s = counter delta / dpgen's time.
//               The counter is read before and after, once it stops moving
//               (passt may still be draining its socket).
//   node → VM   dpgen pkt-tx in the node namespace sends frames (node veth →
//               the pod's MAC and address, UDP port 7778) through an AF_PACKET
//               socket, bypassing the qdisc, while the VM-side dpgen reads and
//               counts the frames that reach it. Delivered/s = frames counted
//               in the VM-side window / the window.
//
// For tap and macvtap writes the whole forwarding path runs inside dpgen's
// write() (tun/macvtap hand the frame to the stack synchronously and the
// veth's receive side runs in the same softirq), so VM → node measures the
// per-packet CPU cost of the path on one core. Node → VM runs the path in the
// sender's sendmmsg() and dpgen's reads on the other core; drops there are
// queue overflows (tap/macvtap ring, passt's socket buffer), and delivered
// is what the VM really got.
//
// Besides delivered/s (wall clock), each trial records how many CPUs the
// forwarding processes kept busy (their CPU time ÷ wall time), giving
// delivered per CPU-second: on a machine shared with other work, time
// stolen by other processes lowers the first but not the second.
//
// Warm-up: each contender first announces (gratuitous ARPs from the VM's MAC,
// so the bridge learns it on the tap port and passt learns the guest) and
// sends for a while each way (a fresh bridge port can drop frames at
// first; the pod's kernel resolves the node's address for passt); each trial
// then starts with a short unmeasured burst. Trials rotate the contenders'
// order; ratios are against macvtap's median in the same run, with the
// spread of the per-trial (paired) ratios. A contender whose process dies
// leaves the run with the reason in the report; the reference may not.

import { spawnSync } from 'node:child_process';
import { chownSync, existsSync, readFileSync, renameSync, rmSync, statSync, mkdirSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import type { Cleanup } from '../test/helpers/netns.ts';
import type { Pod } from '../test/helpers/pods.ts';
import { makePods, resolvConfOf, tempDir, waitReady, writeFile } from './pods.ts';
import { nsenter, podtapHead, ROOT, Running, sleep, timed } from './proc.ts';
import type { Row, Section } from './report.ts';
import { fmt, fmtSummary, pairedRatios, summarize, type Summary } from './stats.ts';

export interface DatapathOptions {
  cleanup: Cleanup;
  log: (s: string) => void;
  /** Measured trials per contender and case. */
  trials: number;
  /** Length of one measured window, seconds. */
  seconds: number;
  /** Unmeasured burst before each trial, seconds. */
  warmSeconds: number;
  /** Warm-up per contender after it comes up, seconds per direction. */
  startWarmSeconds: number;
  /** TAP queues (podtap --queues, macvtap queues); passt has one. Default 1. */
  queues?: number;
  sizes?: number[];
}

// ------------------------------------------------------------------ dpgen

const DPGEN_SRC = join(ROOT, 'bench/tools/dpgen.c');
const BUILD_DIR = join(ROOT, 'bench/.build');
export const DPGEN = join(BUILD_DIR, 'dpgen');

/** Builds bench/.build/dpgen when it is missing or older than its source. */
export function buildDpgen(log: (s: string) => void): string {
  const srcAt = statSync(DPGEN_SRC).mtimeMs;
  if (existsSync(DPGEN) && statSync(DPGEN).mtimeMs >= srcAt) return DPGEN;
  mkdirSync(BUILD_DIR, { recursive: true });
  const tmp = `${DPGEN}.${process.pid}.tmp`;
  const r = spawnSync('gcc', ['-O2', '-g', '-Wall', '-Wextra', '-std=gnu11', '-pthread', '-o', tmp, DPGEN_SRC], { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    rmSync(tmp, { force: true });
    throw new Error(`building dpgen failed (gcc ${r.error ? r.error.message : `exit ${r.status}`}): ${r.stderr}`);
  }
  renameSync(tmp, DPGEN); // atomic: a concurrent run sees the old or the new binary
  log(`datapath: built ${DPGEN.slice(ROOT.length + 1)}`);
  return DPGEN;
}

// --------------------------------------------------------- podtap options

let helpText: string | undefined;

async function podtapHelp(): Promise<string> {
  helpText ??= (await timed([...podtapHead(), '--help'], { check: false, timeoutMs: 30_000 })).stdout;
  return helpText;
}

/** Whether this podtap can choose its data path (`--datapath bridge|redirect`). */
export async function podtapHasDatapath(): Promise<boolean> {
  return /--datapath\b/.test(await podtapHelp());
}

/**
 * podtap's default data path as its --help states it ("default: redirect
 * where the kernel can, ..."); bridge when it does not say (before
 * --datapath existed, bridge was the only path). The contender started
 * without --datapath then checks it against podtap's ready line.
 */
export async function podtapDefaultDatapath(): Promise<{ path: string; stated: boolean; text: string }> {
  const line = (await podtapHelp()).split('\n').find((l) => l.includes('--datapath')) ?? '';
  const m = /default:?\s*(bridge|redirect)/i.exec(line);
  const text = /\(default[^)]*\)/i.exec(line)?.[0] ?? '';
  return m ? { path: m[1]!.toLowerCase(), stated: true, text } : { path: 'bridge', stated: false, text };
}

// ----------------------------------------------------- the control socket

/** One dpgen agent on the other end of our control socket: one JSON line per command. */
class Ctl {
  readonly hello: Record<string, any>;
  private readonly sock: Socket;
  private buf: string;
  private waiters: { resolve: (v: Record<string, any>) => void; reject: (e: Error) => void }[] = [];
  private closed = false;

  constructor(sock: Socket, hello: Record<string, any>, rest: string) {
    this.sock = sock;
    this.hello = hello;
    this.buf = rest;
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        const w = this.waiters.shift();
        if (!w) continue;
        try {
          w.resolve(JSON.parse(line) as Record<string, any>);
        } catch {
          w.reject(new Error(`dpgen said something that is not JSON: ${line}`));
        }
      }
    });
    const gone = () => {
      this.closed = true;
      for (const w of this.waiters.splice(0)) w.reject(new Error('dpgen closed its control connection'));
    };
    sock.on('close', gone);
    sock.on('error', gone);
  }

  /** Sends one command and waits for its answer. */
  call(cmd: string, timeoutMs: number): Promise<Record<string, any>> {
    if (this.closed) return Promise.reject(new Error('dpgen is gone'));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new Error(`dpgen: no answer to "${cmd}" after ${timeoutMs} ms`));
      }, timeoutMs);
      const w = {
        resolve: (v: Record<string, any>) => (clearTimeout(timer), v.op === 'error' ? reject(new Error(`dpgen refused "${cmd}": ${v.error}`)) : resolve(v)),
        reject: (e: Error) => (clearTimeout(timer), reject(e)),
      };
      this.waiters.push(w);
      this.sock.write(`${cmd}\n`);
    });
  }

  close(): void {
    this.sock.destroy();
  }
}

/** Listens on a UNIX socket for one dpgen agent; rejects if `proc` exits first. */
function listenCtl(path: string, cleanup: Cleanup): { server: Server; accept: (proc: Running, timeoutMs: number) => Promise<Ctl> } {
  let onConn: ((s: Socket) => void) | undefined;
  const pending: Socket[] = [];
  const server = createServer((s) => (onConn ? onConn(s) : pending.push(s)));
  server.listen(path);
  cleanup.defer(`control socket ${path}`, () => new Promise<void>((res) => server.close(() => res())));
  const accept = (proc: Running, timeoutMs: number): Promise<Ctl> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no dpgen agent on ${path} after ${timeoutMs} ms\nstderr: ${proc.stderr().slice(-2000)}`)), timeoutMs);
      void proc.exited.then(() => {
        clearTimeout(timer);
        reject(new Error(`${proc.argv.slice(0, 8).join(' ')} … exited (${proc.exitCode ?? proc.exitSignal}) before its dpgen agent said hello\nstderr: ${proc.stderr().slice(-3000)}`));
      });
      const take = (s: Socket) => {
        let got = '';
        const onData = (d: Buffer) => {
          got += d.toString();
          const nl = got.indexOf('\n');
          if (nl < 0) return;
          s.off('data', onData);
          s.pause();
          clearTimeout(timer);
          try {
            const ctl = new Ctl(s, JSON.parse(got.slice(0, nl)) as Record<string, any>, got.slice(nl + 1));
            s.resume();
            resolve(ctl);
          } catch (e) {
            reject(e as Error);
          }
        };
        s.on('data', onData);
      };
      const first = pending.shift();
      if (first) take(first);
      else onConn = take;
    });
  return { server, accept };
}

// ------------------------------------------------------------- contenders

const TX_PORT = 7777; // VM → node
const RX_PORT = 7778; // node → VM
const COUNTER_TABLE = 'podtap_bench_dp';
/** The VM's MAC behind passt: passt learns it; the pod's own MAC stays passt's. */
const PASST_GUEST_MAC = '52:54:00:12:34:56';

type ContenderId = 'macvtap' | 'bridge' | 'bridge-noas' | 'redirect' | 'redirect-noas' | 'passt';

interface ContenderSpec {
  id: ContenderId;
  label: string;
  /** podtap's extra options; undefined: not podtap */
  podtapArgs?: string[];
  /** the data path podtap must report in its ready line (when it reports one) */
  expectPath?: string;
}

interface Contender extends ContenderSpec {
  pod: Pod;
  nodeMac: string;
  podMac: string;
  /** source MAC of the VM's frames */
  vmMac: string;
  /** destination MAC of the VM's frames (the node veth; for passt, passt's own) */
  toMac: string;
  ctl: Ctl;
  procs: Running[];
  /** podtap run, whose exit (after its VMM's) means the namespace was restored */
  podtap?: Running;
  /** passt, whose CPU time counts towards its path's cost */
  passt?: Running;
  notes: string[];
  /** Why it was taken out of the run (a process died, its VM side broke) */
  retired?: string;
}

interface Trial {
  /** delivered per second */
  pps: number;
  /**
   * CPUs busy on the path during the trial, on average: CPU time ÷ wall time
   * of each process that forwards (VM → node: dpgen's writing threads, whose
   * write() runs the kernel's path; node → VM: the node sender, whose
   * sendmmsg() runs it, plus dpgen's reading threads; passt's process on
   * its path). pps ÷ cores = delivered per CPU-second.
   */
  cores?: number;
  /** offered per second (VM's writes, or the node sender's) */
  offered: number;
  delivered: number;
  sent: number;
  seconds: number;
  /** dpgen's (and the node sender's) error count, and the first error */
  errors: number;
  error?: string;
}

type Dir = 'tx' | 'rx';
interface Case {
  dir: Dir;
  size: number;
}
const caseKey = (c: Case) => `${c.dir}-${c.size}`;
const caseName = (c: Case) => `${c.dir === 'tx' ? 'VM → node' : 'node → VM'}, ${c.size} B frames`;

async function ipJson(ns: string, args: string[]): Promise<Record<string, any>[]> {
  const r = await timed(['ip', '-n', ns, '-j', ...args]);
  return r.stdout.trim() ? (JSON.parse(r.stdout) as Record<string, any>[]) : [];
}

async function linkMac(ns: string, dev: string): Promise<string> {
  const [l] = await ipJson(ns, ['link', 'show', 'dev', dev]);
  if (!l?.address) throw new Error(`${ns}: no link ${dev}`);
  return String(l.address);
}

/** The node's counter: a netdev ingress chain on its end of the pod veth that counts our UDP frames and drops them. */
async function loadCounter(pod: Pod, dir: string): Promise<void> {
  const file = writeFile(dir, `${pod.node}.counter.nft`, `table netdev ${COUNTER_TABLE} {
  counter delivered { }
  chain ingress {
    type filter hook ingress device ${JSON.stringify(pod.hostIfname)} priority -500; policy accept;
    udp dport ${TX_PORT} counter name "delivered" drop
  }
}
`);
  await timed(nsenter(pod.node, ['nft', '-f', file]));
}

async function readCounter(pod: Pod): Promise<number> {
  const r = await timed(nsenter(pod.node, ['nft', '-j', 'list', 'counter', 'netdev', COUNTER_TABLE, 'delivered']));
  const objs = (JSON.parse(r.stdout) as { nftables: Record<string, any>[] }).nftables;
  const c = objs.find((o) => o.counter)?.counter as { packets?: number } | undefined;
  if (typeof c?.packets !== 'number') throw new Error(`${pod.node}: no packet count in ${r.stdout.slice(0, 300)}`);
  return c.packets;
}

/** The counter once it stops moving (frames still queued behind a user-space peer). */
async function settledCounter(pod: Pod, maxMs = 3000): Promise<number> {
  let last = await readCounter(pod);
  const end = Date.now() + maxMs;
  while (Date.now() < end) {
    await sleep(40);
    const v = await readCounter(pod);
    if (v === last) return v;
    last = v;
  }
  return last;
}

function readTail(path: string, n: number): string {
  try {
    return readFileSync(path, 'utf8').slice(-n).trim();
  } catch {
    return '';
  }
}

function nobody(): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith('nobody:'));
  const f = line?.split(':');
  if (!f) throw new Error('no user nobody in /etc/passwd (passt drops to it when started as root)');
  return { uid: Number(f[2]), gid: Number(f[3]) };
}

interface StartCtx {
  cleanup: Cleanup;
  dir: string;
  queues: number;
  log: (s: string) => void;
}

function agentFlow(vmMac: string, toMac: string, pod: Pod): string[] {
  return ['--mac', vmMac, '--ip', pod.podIP, '--peer-mac', toMac, '--peer-ip', pod.nodeAddr, '--port', String(TX_PORT), '--rx-port', String(RX_PORT)];
}

async function startContender(spec: ContenderSpec, pod: Pod, ctx: StartCtx): Promise<Contender> {
  const nodeMac = await linkMac(pod.node, pod.hostIfname);
  const podMac = pod.expect.mac;
  await loadCounter(pod, ctx.dir);
  const ctlPath = join(ctx.dir, `${spec.id}.ctl`);
  const { accept } = listenCtl(ctlPath, ctx.cleanup);
  const notes: string[] = [];
  const procs: Running[] = [];
  const errFile = join(ctx.dir, `${spec.id}.stderr`);

  if (spec.podtapArgs) {
    // podtap hands the VMM the queue fds at 3, 4, …; {mac} is the VM's (= the pod's) MAC.
    const stateDir = tempDir(ctx.cleanup, 'podtap-bench-dp-state-');
    const argv = nsenter(pod.pod, [
      ...podtapHead(), 'run', '--state-dir', stateDir, '--resolv-conf', resolvConfOf(pod), '--queues', String(ctx.queues), ...spec.podtapArgs,
      '--', DPGEN, 'agent', '--ctl', ctlPath, '--fds', '{fds}', ...agentFlow('{mac}', nodeMac, pod),
    ]);
    const run = new Running(argv, { cleanup: ctx.cleanup, stderrFile: errFile });
    procs.push(run);
    const ready = await waitReady(run, 30_000);
    if (String(ready.line.mac).toLowerCase() !== podMac.toLowerCase()) throw new Error(`${spec.id}: podtap gave the VM ${ready.line.mac}, the pod's MAC is ${podMac}`);
    if (spec.expectPath && ready.line.datapath !== undefined && ready.line.datapath !== spec.expectPath)
      throw new Error(`${spec.label}: podtap reports data path ${ready.line.datapath}, expected ${spec.expectPath} (podtap run ${spec.podtapArgs.join(' ')})`);
    notes.push(`${spec.label}: \`podtap run${spec.podtapArgs.length ? ` ${spec.podtapArgs.join(' ')}` : ''}\`, ready line: datapath ${ready.line.datapath ?? '(not reported)'}, queues ${ready.line.queues}`);
    const ctl = await accept(run, 15_000);
    notes[notes.length - 1] += `; dpgen got ${ctl.hello.queues} queue fd(s) with a ${ctl.hello.vnetHdr}-byte virtio-net header`;
    return { ...spec, pod, nodeMac, podMac, vmMac: podMac, toMac: nodeMac, ctl, procs, podtap: run, notes };
  }

  if (spec.id === 'macvtap') {
    // A macvtap's character device is /dev/tapN with N its ifindex, and
    // ifindexes are per network namespace: the /dev/tapN that devtmpfs makes
    // in the root /dev can belong to another namespace's macvtap with the
    // same ifindex (or be replaced when that one goes). The major:minor is
    // global, though, and the pod namespace's own sysfs view (`ip netns exec`
    // remounts /sys for it) names it: /sys/class/net/mvt0/macvtap/tapN/dev.
    // So: read it there, mknod our own node in a private temporary
    // directory, let dpgen open it (one open per queue), and remove the
    // directory once dpgen holds the fds. Nothing named tapN is relied on.
    // Each open of the device is one more queue.
    await timed(['ip', '-n', pod.pod, 'link', 'add', 'link', 'eth0', 'name', 'mvt0', 'type', 'macvtap', 'mode', 'passthru']);
    await timed(['ip', '-n', pod.pod, 'link', 'set', 'mvt0', 'up']);
    const sys = await timed(['ip', 'netns', 'exec', pod.pod, 'sh', '-c', 'i=$(cat /sys/class/net/mvt0/ifindex) && cat /sys/class/net/mvt0/macvtap/tap$i/dev']);
    const m = /^(\d+):(\d+)$/.exec(sys.stdout.trim());
    if (!m) throw new Error(`macvtap: no major:minor in the pod's /sys (${sys.stdout.trim()})`);
    const devDir = tempDir(ctx.cleanup, 'podtap-bench-dp-dev-');
    const dev = join(devDir, 'mvt0');
    await timed(['mknod', '-m', '600', dev, 'c', m[1]!, m[2]!]);
    const mvtMac = await linkMac(pod.pod, 'mvt0'); // passthru: the lower device's, i.e. the pod's
    const devs = Array.from({ length: ctx.queues }, () => ['--dev', dev]).flat();
    const run = new Running(nsenter(pod.pod, [DPGEN, 'agent', '--ctl', ctlPath, ...devs, ...agentFlow(mvtMac, nodeMac, pod)]), { cleanup: ctx.cleanup, stderrFile: errFile });
    procs.push(run);
    const ctl = await accept(run, 15_000);
    rmSync(devDir, { recursive: true, force: true });
    notes.push(`macvtap: /dev node made from ${m[1]}:${m[2]} (the pod netns's /sys), opened ${ctx.queues}× by dpgen, then removed`);
    return { ...spec, pod, nodeMac, podMac, vmMac: mvtMac, toMac: nodeMac, ctl, procs, notes };
  }

  // passt: started as root it drops to nobody before binding its socket
  // (and says "bound" even when that fails), so the socket's directory is
  // nobody's; its log it opens earlier, as uid 0 without capabilities, so
  // that goes in our own directory. It keeps the pod's addresses and MAC;
  // the guest has its own MAC, which passt learns from its frames.
  // --no-map-gw: traffic to the gateway (the node) stays the gateway's.
  // -u RX_PORT forwards that UDP port of the pod to the guest.
  const passtDir = tempDir(ctx.cleanup, 'podtap-bench-dp-passt-');
  const nb = nobody();
  chownSync(passtDir, nb.uid, nb.gid);
  const sock = join(passtDir, 'passt.sock');
  const passt = new Running(nsenter(pod.pod, ['passt', '-f', '-q', '-l', join(ctx.dir, 'passt.log'), '-s', sock, '-u', String(RX_PORT), '--no-map-gw', '-4']), { cleanup: ctx.cleanup, stderrFile: join(ctx.dir, 'passt.stderr') });
  procs.push(passt);
  const end = Date.now() + 10_000;
  while (!existsSync(sock)) {
    if (passt.exitCode !== undefined || Date.now() > end) throw new Error(`passt did not bind ${sock} (exit ${passt.exitCode ?? 'none'}): ${passt.stderr().slice(-2000)}`);
    await sleep(20);
  }
  const run = new Running(nsenter(pod.pod, [DPGEN, 'agent', '--ctl', ctlPath, '--passt', sock, ...agentFlow(PASST_GUEST_MAC, podMac, pod)]), { cleanup: ctx.cleanup, stderrFile: errFile });
  procs.push(run);
  const ctl = await accept(run, 15_000);
  const version = (await timed(['dpkg-query', '-W', '-f', '${Version}', 'passt'], { check: false })).stdout.trim();
  notes.push(`passt ${version || '(version unknown)'} (Debian), run as \`passt -f -s SOCKET -u ${RX_PORT} --no-map-gw -4\` in the pod namespace; it drops to nobody; guest MAC ${PASST_GUEST_MAC}`);
  return { ...spec, pod, nodeMac, podMac, vmMac: PASST_GUEST_MAC, toMac: podMac, ctl, procs, passt, notes };
}

async function stopContender(c: Contender): Promise<{ exit: number | null | undefined }> {
  try {
    await c.ctl.call('quit', 2000).catch(() => {});
  } finally {
    c.ctl.close();
  }
  // podtap tears down once its VMM (the agent) exits, and exits with its status.
  const p = c.podtap;
  if (p) {
    await p.waitExit(30_000).catch(async () => p.stop());
    return { exit: p.exitCode };
  }
  for (const r of [...c.procs].reverse()) await r.stop();
  return { exit: 0 };
}

// --------------------------------------------------------------- measuring

const CLK_TCK = 100; // USER_HZ: the unit of utime/stime in /proc/PID/stat on Linux

/** utime + stime of a process, seconds (0 once it is gone). */
function processCpu(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}

async function measureTx(c: Contender, size: number, seconds: number, warm: number): Promise<Trial> {
  if (warm > 0) await c.ctl.call(`tx ${size} ${warm}`, (warm + 15) * 1000);
  const before = await settledCounter(c.pod);
  const p0 = processCpu(c.passt?.pid);
  const w0 = performance.now();
  const r = await c.ctl.call(`tx ${size} ${seconds}`, (seconds + 15) * 1000);
  const after = await settledCounter(c.pod);
  const p1 = processCpu(c.passt?.pid);
  const w1 = performance.now();
  const delivered = after - before;
  const secs = Number(r.seconds);
  // passt's share over the whole call: it may still be draining when dpgen stops.
  const cores = Number(r.cpu) / secs + (c.passt ? (p1 - p0) / ((w1 - w0) / 1000) : 0);
  return { pps: delivered / secs, offered: Number(r.sent) / secs, delivered, sent: Number(r.sent), seconds: secs, cores, errors: Number(r.errors), ...(r.error ? { error: String(r.error) } : {}) };
}

async function measureRx(c: Contender, size: number, seconds: number, warm: number): Promise<Trial> {
  const lead = Math.max(warm, 0.15); // the sender is running before the window opens
  const sendFor = lead + seconds + 0.15; // and still running when it closes
  const sender = timed(nsenter(c.pod.node, [
    DPGEN, 'pkt-tx', '--ifname', c.pod.hostIfname, '--mac', c.nodeMac, '--ip', c.pod.nodeAddr,
    '--peer-mac', c.podMac, '--peer-ip', c.pod.podIP, '--port', String(RX_PORT), '--size', String(size), '--seconds', String(sendFor),
  ]), { timeoutMs: (sendFor + 15) * 1000 });
  const p0 = processCpu(c.passt?.pid);
  const w0 = performance.now();
  const [r, s] = await Promise.all([c.ctl.call(`rx ${lead} ${seconds}`, (lead + seconds + 15) * 1000), sender]);
  const p1 = processCpu(c.passt?.pid);
  const w1 = performance.now();
  const sent = JSON.parse(s.stdout.trim().split('\n').pop()!) as Record<string, number>;
  const secs = Number(r.seconds);
  const delivered = Number(r.matched);
  const error = [r.error, sent.error].filter(Boolean).join('; ');
  const cores = Number(sent.cpu) / Number(sent.seconds) + Number(r.cpu) / secs + (c.passt ? (p1 - p0) / ((w1 - w0) / 1000) : 0);
  return { pps: delivered / secs, offered: Number(sent.pps), delivered, sent: Number(sent.sent), seconds: secs, cores, errors: Number(r.errors) + Number(sent.errors), ...(error ? { error } : {}) };
}

// ------------------------------------------------------------------ report

const kpps = (s: Summary | undefined) => (s && s.n ? fmtSummary({ ...s, median: s.median / 1000, min: s.min / 1000, max: s.max / 1000 }, 'kpps') : '–');

export interface DatapathData {
  cases: string[];
  contenders: { id: string; label: string; notes: string[] }[];
  missing: { id: string; label: string; why: string }[];
  trials: Record<string, Record<string, Trial[]>>; // contender → case → trials in order
  summaries: Record<string, Record<string, Summary>>; // contender → case → delivered/s
  ratios: Record<string, Record<string, Summary>>; // contender → case → paired ratio vs macvtap
  perCpuSecond: Record<string, Record<string, Summary>>; // contender → tx case → delivered per CPU-second
  seconds: number;
  warmSeconds: number;
  queues: number;
  loadavg: { start: number[]; end: number[] };
  podtapDefault: { path: string; stated: boolean; text: string };
}

export async function benchDatapath(o: DatapathOptions): Promise<Section> {
  const queues = o.queues ?? 1;
  if (!Number.isInteger(queues) || queues < 1 || queues > 64) throw new Error(`datapath: queues must be 1 to 64 (dpgen's limit), not ${queues}`);
  const sizes = o.sizes ?? [64, 1514];
  const startLoad = loadavg();
  buildDpgen(o.log);
  const hasDatapath = await podtapHasDatapath();
  const def = await podtapDefaultDatapath();
  const passtThere = (await timed(['sh', '-c', 'command -v passt'], { check: false })).code === 0;

  // podtap's default path runs without --datapath (so it is podtap's
  // default for real, checked against the ready line); the other path with it.
  const flags = (path: string): string[] => (hasDatapath && path !== def.path ? ['--datapath', path] : []);
  const tag = (path: string) => (!hasDatapath ? ' (its only path)' : path === def.path ? ' (default)' : '');
  const specs: ContenderSpec[] = [
    { id: 'macvtap', label: 'macvtap passthru (no filtering)' },
    { id: 'bridge', label: `podtap bridge${tag('bridge')}, guard on`, podtapArgs: flags('bridge'), expectPath: 'bridge' },
    { id: 'bridge-noas', label: 'podtap bridge, --no-antispoof', podtapArgs: [...flags('bridge'), '--no-antispoof'], expectPath: 'bridge' },
  ];
  const missing: DatapathData['missing'] = [];
  if (hasDatapath) {
    specs.push(
      { id: 'redirect', label: `podtap redirect${tag('redirect')}, guard on`, podtapArgs: flags('redirect'), expectPath: 'redirect' },
      { id: 'redirect-noas', label: 'podtap redirect, --no-antispoof', podtapArgs: [...flags('redirect'), '--no-antispoof'], expectPath: 'redirect' },
    );
  } else {
    missing.push({ id: 'redirect', label: 'podtap redirect (--datapath redirect)', why: 'not available: `podtap --help` has no --datapath yet, so it is not measured' });
    o.log('datapath: podtap has no --datapath option yet: the redirect path is not available and is not measured');
  }
  if (passtThere) specs.push({ id: 'passt', label: 'passt (user-space peer)' });
  else {
    missing.push({ id: 'passt', label: 'passt', why: 'not installed (Debian package passt; test/install.sh installs it)' });
    o.log('datapath: passt is not installed: not measured');
  }

  o.log(`datapath: making ${specs.length} ptp pods (one per contender)`);
  const pods = await makePods(specs.length, o.cleanup, 4);
  const dir = tempDir(o.cleanup, 'podtap-bench-dp-');
  const ctx: StartCtx = { cleanup: o.cleanup, dir, queues, log: o.log };
  const contenders: Contender[] = [];
  for (const [i, spec] of specs.entries()) {
    o.log(`datapath: starting ${spec.label}`);
    contenders.push(await startContender(spec, pods[i]!, ctx));
  }

  // Warm-up: announce, then both directions for a while; a path that
  // delivers nothing here is broken, not slow.
  // The reference must work; another contender that fails here leaves the run.
  for (const c of contenders) {
    let why: string | undefined;
    try {
      await c.ctl.call('announce', 5000);
      const t = await measureTx(c, 64, o.startWarmSeconds, 0);
      const r = await measureRx(c, 64, o.startWarmSeconds, 0.2);
      o.log(`datapath: warm-up ${c.id}: VM → node ${fmt(t.pps / 1000)} kpps, node → VM ${fmt(r.pps / 1000)} kpps`);
      if (t.delivered === 0 || r.delivered === 0) why = `nothing delivered in the warm-up (VM → node ${t.delivered} of ${t.sent}, node → VM ${r.delivered} of ${r.sent}); stderr: ${c.procs.map((p) => p.stderr().slice(-1500)).join('\n')}`;
    } catch (e) {
      why = `warm-up failed: ${(e as Error).message}`;
    }
    if (!why) continue;
    if (c.id === 'macvtap') throw new Error(`${c.label}: ${why}`);
    c.retired = `left the run in the warm-up: ${why}`;
    o.log(`datapath: ${c.label} ${c.retired}`);
  }

  const cases: Case[] = (['tx', 'rx'] as const).flatMap((dir) => sizes.map((size) => ({ dir, size })));
  const trials: DatapathData['trials'] = Object.fromEntries(contenders.map((c) => [c.id, Object.fromEntries(cases.map((k) => [caseKey(k), [] as Trial[]]))]));
  let rot = 0;
  for (let t = 0; t < o.trials; t++) {
    for (const k of cases) {
      const order = contenders.map((_, i) => contenders[(i + rot) % contenders.length]!);
      rot++;
      const line: string[] = [];
      for (const c of order) {
        if (c.retired) continue;
        let r: Trial | undefined;
        let why: string | undefined;
        try {
          r = k.dir === 'tx' ? await measureTx(c, k.size, o.seconds, o.warmSeconds) : await measureRx(c, k.size, o.seconds, o.warmSeconds);
        } catch (e) {
          why = (e as Error).message.split('\n')[0];
        }
        // A contender whose process died, or whose VM side stopped moving
        // frames with an error, is broken, not slow: it leaves the run, and
        // its figures are the trials it completed.
        const dead = c.procs.find((p) => p.exitCode !== undefined);
        if (dead) why = `${dead.argv.find((a) => /passt|podtap|dpgen/.test(a))?.split('/').pop() ?? dead.argv[0]} exited (${dead.exitCode ?? dead.exitSignal})${why ? `; ${why}` : ''}`;
        else if (r && r.delivered === 0 && r.errors > 0) why = `nothing delivered, error: ${r.error ?? '?'}`;
        if (why || !r) {
          c.retired = `left the run in trial ${t + 1} (${caseName(k)}): ${why ?? 'no result'}`;
          const log = c.passt ? readTail(join(dir, 'passt.log'), 600) : '';
          if (log) c.retired += `; passt's log ends: ${log.replace(/\s+/g, ' ')}`;
          o.log(`datapath: ${c.label} ${c.retired}`);
          continue;
        }
        trials[c.id]![caseKey(k)]!.push(r);
        line.push(`${c.id} ${fmt(r.pps / 1000)}${r.errors ? ` (${r.errors} errors: ${r.error})` : ''}`);
      }
      o.log(`datapath: trial ${t + 1}/${o.trials} ${caseName(k)} (kpps): ${line.join(', ')}`);
    }
  }

  const exits: string[] = [];
  for (const c of contenders) {
    const e = await stopContender(c);
    if (c.podtapArgs && e.exit !== 0) exits.push(`${c.id}: podtap exited ${e.exit}`);
  }

  // ---- summaries
  const summaries: DatapathData['summaries'] = {};
  const ratios: DatapathData['ratios'] = {};
  for (const c of contenders) {
    summaries[c.id] = {};
    ratios[c.id] = {};
    for (const k of cases) {
      const mine = trials[c.id]![caseKey(k)]!.map((x) => x.pps);
      summaries[c.id]![caseKey(k)] = summarize(mine);
      const base = trials.macvtap?.[caseKey(k)]?.map((x) => x.pps) ?? [];
      ratios[c.id]![caseKey(k)] = summarize(pairedRatios(mine, base));
    }
  }

  const rows: Row[] = [];
  // Delivered per CPU-second of the forwarding processes, per trial.
  const perCpuSeries = (id: string, k: Case) => trials[id]?.[caseKey(k)]?.map((x) => (x.cores && x.cores > 0 ? x.pps / x.cores : NaN)) ?? [];
  const k0: Case = { dir: 'tx', size: Math.min(...sizes) };
  const cpuOf = (id: string) => perCpuSeries(id, k0);
  const share = summarize(contenders.flatMap((c) => (c.id === 'passt' ? [] : trials[c.id]![caseKey(k0)]!.map((x) => (x.cores ?? NaN) / queues))));
  // On a busy machine a wall-clock verdict says more about the neighbours.
  const busy = share.n && share.median < 0.9 ? ` — machine busy (the writer ran ${fmt(share.median * 100)} % of the time): see the per-CPU-second row` : '';
  const defaultId = def.path === 'redirect' && hasDatapath ? 'redirect' : 'bridge';
  const ratioText = (id: string, k: Case) => {
    const a = summaries[id]?.[caseKey(k)];
    const b = summaries.macvtap?.[caseKey(k)];
    const pr = ratios[id]?.[caseKey(k)];
    if (!a || !b || !a.n || !b.n) return '';
    const r = a.median / b.median;
    return pr && pr.n > 1 ? `${fmt(r)}× (${fmt(pr.min)}–${fmt(pr.max)})` : `${fmt(r)}×`;
  };
  for (const k of cases) {
    const base = summaries.macvtap?.[caseKey(k)];
    rows.push({ metric: `${caseName(k)}: macvtap passthru (the reference)`, podtap: kpps(base), target: 'info' });
    for (const c of contenders) {
      if (c.id === 'macvtap') continue;
      const s = summaries[c.id]![caseKey(k)]!;
      const row: Row = { metric: `${caseName(k)}: ${c.label}`, podtap: kpps(s), baseline: 'macvtap passthru', baselineValue: kpps(base), ratio: ratioText(c.id, k), target: 'info', ...(c.retired ? { margin: `${s.n} trials: ${c.retired.slice(0, 200)}` } : {}) };
      if (c.id === defaultId && k.dir === 'tx' && k.size === Math.min(...sizes) && base && base.n && s.n) {
        const r = s.median / base.median;
        const limit = 0.9;
        row.target = `≥ ${limit}× (podtap's default path)`;
        row.met = r >= limit;
        row.margin = row.met
          ? `met with ${fmt((r / limit - 1) * 100, 2)}% headroom`
          : `missed: reaches ${fmt(r, 3)}×; needs +${fmt((limit * base.median - s.median) / 1000)} kpps (to ≥ ${fmt((limit * base.median) / 1000)} kpps in this run)`;
        row.margin += busy;
      }
      rows.push(row);
    }
    for (const m of missing) rows.push({ metric: `${caseName(k)}: ${m.label}`, podtap: 'not measured', target: 'info', margin: m.why });
    // The anti-spoofing rules' cost, per podtap path: guard on vs --no-antispoof.
    for (const path of ['bridge', 'redirect'] as const) {
      const on = summaries[path]?.[caseKey(k)];
      const off = summaries[`${path}-noas`]?.[caseKey(k)];
      if (!on || !off || !on.n || !off.n) continue;
      const cost = 1 - on.median / off.median;
      const pr = summarize(pairedRatios(trials[path]![caseKey(k)]!.map((x) => x.pps), trials[`${path}-noas`]![caseKey(k)]!.map((x) => x.pps)));
      const row: Row = {
        metric: `${caseName(k)}: anti-spoofing cost, podtap ${path} (guard on vs --no-antispoof)`,
        podtap: `${fmt(cost * 100)} %`,
        baseline: '--no-antispoof',
        baselineValue: kpps(off),
        ratio: pr.n > 1 ? `${fmt(on.median / off.median)}× (${fmt(pr.min)}–${fmt(pr.max)})` : `${fmt(on.median / off.median)}×`,
        target: 'info',
      };
      if (path === defaultId && k.dir === 'tx' && k.size === Math.min(...sizes)) {
        row.target = '≤ 10 %';
        row.met = cost <= 0.1;
        row.margin = (row.met ? `met with ${fmt((0.1 - cost) * 100, 2)} percentage points to spare` : `missed by ${fmt((cost - 0.1) * 100, 2)} percentage points`) + busy;
      }
      rows.push(row);
    }
  }

  // Companions of the two targets, per CPU-second of the path (see the
  // second overview table): what the wall-clock ratio would be on a quiet
  // machine, where the writer has its core to itself.
  if (summaries[defaultId] && summaries.macvtap) {
    const a = summarize(cpuOf(defaultId));
    const b = summarize(cpuOf('macvtap'));
    const pr = summarize(pairedRatios(cpuOf(defaultId), cpuOf('macvtap')));
    rows.push({ metric: `${caseName(k0)}, per CPU-second of the path: podtap ${defaultId} (default), guard on`, podtap: kpps(a), baseline: 'macvtap passthru, per CPU-second', baselineValue: kpps(b), ratio: `${fmt(a.median / b.median)}×${pr.n > 1 ? ` (${fmt(pr.min)}–${fmt(pr.max)})` : ''}`, target: 'info', margin: `the writer had its CPU ${fmt(share.median * 100)} % of the time (median over tap/macvtap trials)` });
  }
  if (summaries[defaultId] && summaries[`${defaultId}-noas`]) {
    const on = summarize(cpuOf(defaultId));
    const off = summarize(cpuOf(`${defaultId}-noas`));
    rows.push({ metric: `${caseName(k0)}, per CPU-second of the path: anti-spoofing cost, podtap ${defaultId}`, podtap: `${fmt((1 - on.median / off.median) * 100)} %`, baseline: '--no-antispoof, per CPU-second', baselineValue: kpps(off), ratio: `${fmt(on.median / off.median)}×`, target: 'info' });
  }

  // The overview: one line per contender, one column per case.
  const head = `| Data path | ${cases.map(caseName).join(' | ')} |\n|---|${cases.map(() => '---|').join('')}\n`;
  const body = contenders.map((c) => `| ${c.label} | ${cases.map((k) => {
    const s = summaries[c.id]![caseKey(k)]!;
    const tr = trials[c.id]![caseKey(k)]!;
    const offered = summarize(tr.map((x) => x.offered)).median;
    const loss = offered > 0 ? 1 - s.median / offered : 0;
    const r = c.id === 'macvtap' ? '' : ` · ${ratioText(c.id, k)}`;
    return `${fmt(s.median / 1000)} kpps${r}${loss > 0.02 ? ` · offered ${fmt(offered / 1000)}` : ''}`;
  }).join(' | ')} |`).join('\n');
  // Per CPU-second: robust against time stolen by other processes on a
  // shared machine (only the path's own CPU time counts).
  const cpuSummaries: Record<string, Record<string, Summary>> = {};
  for (const c of contenders) cpuSummaries[c.id] = Object.fromEntries(cases.map((k) => [caseKey(k), summarize(perCpuSeries(c.id, k))]));
  const cpuHead = `| Data path | ${cases.map((k) => `${caseName(k)}, per CPU-second`).join(' | ')} |\n|---|${cases.map(() => '---|').join('')}\n`;
  const cpuBody = contenders.map((c) => `| ${c.label} | ${cases.map((k) => {
    const s = cpuSummaries[c.id]![caseKey(k)]!;
    const b = cpuSummaries.macvtap?.[caseKey(k)];
    const pr = summarize(pairedRatios(perCpuSeries(c.id, k), perCpuSeries('macvtap', k)));
    const r = c.id === 'macvtap' || !b?.n ? '' : ` · ${fmt(s.median / b.median)}×${pr.n > 1 ? ` (${fmt(pr.min)}–${fmt(pr.max)})` : ''}`;
    return `${kpps(s)}${r}`;
  }).join(' | ')} |`).join('\n');
  const extraMarkdown = `Delivered packets per second, median of ${o.trials} trials · ratio to macvtap (paired per-trial min–max) · the rate offered when more than 2 % of it was lost:\n\n${head}${body}\n\n` +
    `Delivered per CPU-second of the processes that forward (VM → node: dpgen's writing thread, whose write() runs the whole tap/macvtap path; node → VM: the node's sender, whose sendmmsg() runs the path into the pod, plus dpgen's reading thread; passt's process on its path) · ratio to macvtap. Time other processes take from these cores does not count here, so these ratios move much less than the wall-clock ones on a shared machine; softirq work the kernel defers to ksoftirqd is not counted:\n\n${cpuHead}${cpuBody}\n`;

  const endLoad = loadavg();
  const notes = [
    `${o.trials} trials per contender and case, ${o.seconds} s each after a ${o.warmSeconds} s unmeasured burst; contenders' order rotates every case; each contender warmed up ${o.startWarmSeconds} s per direction after it came up. Frame sizes are the Ethernet frame without FCS (${sizes.join(', ')} B). ${queues} queue${queues > 1 ? 's (one dpgen thread each; passt has one)' : ''}. Load average at start ${startLoad.map((x) => x.toFixed(2)).join(' / ')}, at end ${endLoad.map((x) => x.toFixed(2)).join(' / ')}: the 2 cores are shared, so absolute rates move with other load; the ratios are between contenders measured in the same minutes.`,
    'VM → node: dpgen writes into the tap queue fd (podtap run hands it over), the macvtap device or passt\'s socket; delivered = an nftables netdev ingress counter (that drops) on the node\'s end of the veth ÷ dpgen\'s sending time. Node → VM: an AF_PACKET sender (qdisc bypass) on the node\'s end of the veth; delivered = frames dpgen read in its window ÷ the window.',
    'tap/macvtap writes run the whole path synchronously in the writer (the kernel hands the frame on inside write()), so VM → node is the per-packet CPU cost of the path on one core; passt forwards on its own core and drops what it cannot take (the "offered" figure in the overview).',
    `Targets are for podtap's default path (${def.path}${def.stated ? `, podtap --help: ${def.text}; started without --datapath and checked against its ready line` : ', assumed: podtap --help does not say'}), VM → node with ${Math.min(...sizes)} B frames.`,
    ...contenders.flatMap((c) => c.notes),
    ...contenders.filter((c) => c.retired).map((c) => `${c.label} ${c.retired}`),
    ...(share.n && share.median < 0.9 ? [`The machine was busy: dpgen's writer had its CPU only ${fmt(share.median * 100)} % of the time it ran (median); the wall-clock figures carry that noise, the per-CPU-second ones much less of it.`] : []),
    ...missing.map((m) => `${m.label}: ${m.why}.`),
    ...(exits.length ? [`podtap exit status at the end: ${exits.join('; ')}`] : []),
  ];
  const data: DatapathData = {
    cases: cases.map(caseKey),
    contenders: contenders.map((c) => ({ id: c.id, label: c.label, notes: c.notes })),
    missing,
    trials,
    summaries,
    ratios,
    perCpuSecond: cpuSummaries,
    seconds: o.seconds,
    warmSeconds: o.warmSeconds,
    queues,
    loadavg: { start: startLoad, end: endLoad },
    podtapDefault: def,
  };
  return { name: 'Data path', rows, notes, data, extraMarkdown };
}
