// 1. Set-up latency and 2. teardown latency, in fresh CNI ptp pods.
//
// Per iteration, three trials in a rotating order (so drift and cache effects
// fall on each side equally):
//
//   podtap  `podtap up` in pod A: spawn → ready line; then SIGTERM → exit;
//           the namespace snapshot must equal the one taken before.
//   floor   in pod B (fresh, same shape), the same kernel operations with the
//           least user-space cost: `node -e 0` (Node 24's start-up) + one
//           `ip -batch` of the plan's ip lines (TAP open → `tuntap add ...
//           vnet_hdr`); `nft -f` of the guard separately. Teardown: one
//           `ip -force -batch` of the undo lines (reverse order), nft removal
//           separately, and — informational — until IPv6 DAD has settled.
//           sysctl writes are made untimed (a few µs each).
//   peer    the real CNI ptp plugin: ADD (exec → exit) into an empty netns,
//           then DEL.

import { performance } from 'node:perf_hooks';
import type { Cleanup } from '../test/helpers/netns.ts';
import { createNetns, nsStateDir } from '../test/helpers/netns.ts';
import type { Pod } from '../test/helpers/pods.ts';
import { diffSnapshots, snapshot, type Snapshot } from '../test/helpers/snapshot.ts';
import { makePods, nsSh, planFor, startUp, tempDir, waitNoTentative, waitReady, writeFile, type PodPlan } from './pods.ts';
import { CNI_BIN, NODE, nsenter, podtapHead, ROOT, sleep, timed } from './proc.ts';
import { ratioTarget, type Row, type Section } from './report.ts';
import { addSeries, fmtSummary, summarize, type Summary } from './stats.ts';

export interface SetupOptions {
  iterations: number;
  warmup: number;
  cleanup: Cleanup;
  log: (s: string) => void;
  /**
   * Hook for the data-path choice: when set, podtap is started with
   * `--datapath VALUE` (only for a podtap that has the option; see
   * bench/datapath.ts). Unset: podtap's default, exactly as before. The floor
   * still replays the default plan.
   */
  datapath?: string;
}

interface PodtapTrial {
  setupMs: number;
  timings: Record<string, number>;
  teardownMs: number;
  exitCode: number | null | undefined;
  restored: boolean;
  diff: string[];
}

interface FloorTrial {
  nodeMs: number;
  ipUpMs: number;
  nftUpMs: number;
  nftDownMs: number;
  ipDownMs: number;
  dadSettledMs: number; // from the teardown batch's start to no tentative address
  restored: boolean;
  diff: string[];
}

interface PeerTrial {
  addMs: number;
  delMs: number;
}

const GAP_MS = 300; // quiet time between ready and SIGTERM, and between trials

const sysctlScript = (kv: string[]): string => kv.map((s) => {
  const [k, v] = s.split('=');
  return `echo ${v} > /proc/sys/${k}`;
}).join('; ');

async function podtapTrial(pod: Pod, before: Snapshot, cleanup: Cleanup, stateDir: string, datapath?: string): Promise<PodtapTrial> {
  const run = startUp(pod, { stateDir, cleanup, ...(datapath !== undefined ? { args: ['--datapath', datapath] } : {}) });
  try {
    const ready = await waitReady(run, 30_000);
    await sleep(GAP_MS);
    const teardownMs = await run.signalAndWait('SIGTERM', 30_000);
    const after = await snapshot(pod.pod);
    const diff = diffSnapshots(before, after);
    return { setupMs: ready.ms, timings: ready.line.timings ?? {}, teardownMs, exitCode: run.exitCode, restored: diff.length === 0 && run.exitCode === 0, diff };
  } finally {
    await run.stop();
  }
}

async function floorTrial(pod: Pod, plan: PodPlan, before: Snapshot, dir: string): Promise<FloorTrial> {
  const up = writeFile(dir, `${pod.pod}.up.batch`, plan.setupIp.join('\n') + '\n');
  const down = writeFile(dir, `${pod.pod}.down.batch`, plan.teardownIp.join('\n') + '\n');
  const nftUp = writeFile(dir, `${pod.pod}.up.nft`, plan.nftSetup);
  const nftDown = writeFile(dir, `${pod.pod}.down.nft`, plan.nftTeardown);
  const node = await timed(nsenter(pod.pod, [NODE, '-e', '0']));
  const ipUp = await timed(['ip', '-n', pod.pod, '-batch', up]);
  if (plan.sysctlSetup.length) await nsSh(pod.pod, sysctlScript(plan.sysctlSetup));
  const nftU = await timed(nsenter(pod.pod, ['nft', '-f', nftUp]));
  await sleep(GAP_MS);
  const nftD = await timed(nsenter(pod.pod, ['nft', '-f', nftDown]));
  const t0 = performance.now();
  // One batch with -force, as podtap's undo: lines that need IPv6 back on the
  // veth (podtap re-enables it between its two batches) fail harmlessly here,
  // and the kernel restores what they would (fe80::/64) when the sysctl below
  // turns IPv6 on again; the snapshot check confirms the end state.
  const ipDown = await timed(['ip', '-n', pod.pod, '-force', '-batch', down], { check: false });
  const unexpected = ipDown.stderr.split('\n').filter((l) => l.trim() && !/^Command failed/.test(l) && !/IPv6 is disabled/.test(l));
  if (ipDown.code !== 0 && unexpected.length) throw new Error(`floor teardown batch failed: ${ipDown.stderr}`);
  if (plan.sysctlTeardown.length) await nsSh(pod.pod, sysctlScript(plan.sysctlTeardown));
  await waitNoTentative(pod.pod, 10_000);
  const dadSettledMs = performance.now() - t0;
  const after = await snapshot(pod.pod);
  const diff = diffSnapshots(before, after);
  return { nodeMs: node.ms, ipUpMs: ipUp.ms, nftUpMs: nftU.ms, nftDownMs: nftD.ms, ipDownMs: ipDown.ms, dadSettledMs, restored: diff.length === 0, diff };
}

interface Peer {
  node: string;
  target: string;
  conf: string;
}

async function makePeer(cleanup: Cleanup): Promise<Peer> {
  const node = await createNetns({ prefix: 'ptb-cni-', cleanup });
  const target = await createNetns({ prefix: 'ptb-cnipod-', cleanup });
  const conf = JSON.stringify({
    cniVersion: '1.0.0',
    name: `podtap-bench-${node}`,
    type: 'ptp',
    ipMasq: false,
    mtu: 1500,
    ipam: { type: 'host-local', dataDir: `${nsStateDir(node)}/cni`, ranges: [[{ subnet: '10.22.0.0/16' }]], routes: [{ dst: '0.0.0.0/0' }] },
  });
  return { node, target, conf };
}

async function peerTrial(peer: Peer, id: number): Promise<PeerTrial> {
  const env = (cmd: string) => ({ ...process.env, CNI_COMMAND: cmd, CNI_CONTAINERID: `bench-${id}`, CNI_NETNS: `/run/netns/${peer.target}`, CNI_IFNAME: 'eth0', CNI_PATH: CNI_BIN });
  const add = await timed(nsenter(peer.node, [`${CNI_BIN}/ptp`]), { input: peer.conf, env: env('ADD'), timeoutMs: 30_000 });
  await sleep(GAP_MS);
  const del = await timed(nsenter(peer.node, [`${CNI_BIN}/ptp`]), { input: peer.conf, env: env('DEL'), timeoutMs: 30_000 });
  return { addMs: add.ms, delMs: del.ms };
}

const PHASES = ['discovery', 'plan', 'apply', 'tapOpen', 'dhcpReady', 'handoff'] as const;

export interface SetupData {
  podtap: PodtapTrial[];
  floor: FloorTrial[];
  peer: PeerTrial[];
  plan: PodPlan;
  summaries: Record<string, Summary>;
}

export async function benchSetup(o: SetupOptions): Promise<Section> {
  const total = o.iterations + o.warmup;
  o.log(`setup: making ${2 * total} fresh ptp pods`);
  const pods = await makePods(2 * total, o.cleanup, 4);
  const peer = await makePeer(o.cleanup);
  const dir = tempDir(o.cleanup);
  o.log('setup: snapshots and plans');
  const before = new Map<string, Snapshot>();
  const plans = new Map<string, PodPlan>();
  for (const [i, p] of pods.entries()) {
    before.set(p.pod, await snapshot(p.pod));
    if (i % 2 === 1) plans.set(p.pod, await planFor(p));
  }
  await sleep(1000); // let the kernel's deferred work from creating pods finish

  const pt: PodtapTrial[] = [];
  const fl: FloorTrial[] = [];
  const pe: PeerTrial[] = [];
  const orders = [['podtap', 'floor', 'peer'], ['floor', 'peer', 'podtap'], ['peer', 'podtap', 'floor']] as const;
  for (let i = 0; i < total; i++) {
    const a = pods[2 * i]!;
    const b = pods[2 * i + 1]!;
    let r1: PodtapTrial | undefined;
    let r2: FloorTrial | undefined;
    let r3: PeerTrial | undefined;
    for (const which of orders[i % 3]!) {
      if (which === 'podtap') r1 = await podtapTrial(a, before.get(a.pod)!, o.cleanup, tempDir(o.cleanup, 'podtap-bench-state-'), o.datapath);
      else if (which === 'floor') r2 = await floorTrial(b, plans.get(b.pod)!, before.get(b.pod)!, dir);
      else r3 = await peerTrial(peer, i);
      await sleep(GAP_MS);
    }
    const warm = i < o.warmup;
    o.log(`setup: ${warm ? 'warm-up' : `iteration ${i - o.warmup + 1}/${o.iterations}`}: podtap up ${r1!.setupMs.toFixed(0)} ms / down ${r1!.teardownMs.toFixed(0)} ms${r1!.restored ? '' : ' NOT RESTORED'}; floor ${(r2!.nodeMs + r2!.ipUpMs).toFixed(0)} / ${r2!.ipDownMs.toFixed(0)} ms; ptp ADD ${r3!.addMs.toFixed(0)} ms`);
    if (!warm) {
      pt.push(r1!);
      fl.push(r2!);
      pe.push(r3!);
    }
  }

  const s = (xs: number[]) => summarize(xs);
  const up = s(pt.map((t) => t.setupMs));
  const floorNode = s(fl.map((t) => t.nodeMs));
  const floorIp = s(fl.map((t) => t.ipUpMs));
  const floorNft = s(fl.map((t) => t.nftUpMs));
  const floorUp = s(addSeries(fl.map((t) => t.nodeMs), fl.map((t) => t.ipUpMs)));
  const floorUpNft = s(addSeries(fl.map((t) => t.nodeMs), fl.map((t) => t.ipUpMs), fl.map((t) => t.nftUpMs)));
  const ptpAdd = s(pe.map((t) => t.addMs));
  const down = s(pt.map((t) => t.teardownMs));
  const floorDown = s(fl.map((t) => t.ipDownMs));
  const floorDownNft = s(addSeries(fl.map((t) => t.ipDownMs), fl.map((t) => t.nftDownMs)));
  const floorDad = s(addSeries(fl.map((t) => t.dadSettledMs), fl.map((t) => t.nftDownMs)));
  const ptpDel = s(pe.map((t) => t.delMs));
  const phases: Record<string, Summary> = {};
  for (const k of [...PHASES, 'total'] as const) phases[k] = s(pt.map((t) => t.timings[k] ?? NaN));
  const startup = s(pt.map((t) => t.setupMs - (t.timings.total ?? NaN)));
  const restored = pt.filter((t) => t.restored).length;
  const floorRestored = fl.filter((t) => t.restored).length;
  const n = pt.length;

  const rows: Row[] = [
    { metric: 'set-up: exec → ready line', podtap: fmtSummary(up, 'ms'), baseline: 'floor: node -e 0 + one ip -batch', baselineValue: fmtSummary(floorUp, 'ms'), ...ratioTarget(up, floorUp, 1.5) },
    { metric: 'set-up vs floor incl. nft -f guard', podtap: fmtSummary(up, 'ms'), baseline: 'node -e 0 + ip -batch + nft -f', baselineValue: fmtSummary(floorUpNft, 'ms'), ratio: `${(up.median / floorUpNft.median).toFixed(2)}×`, target: 'info' },
    { metric: 'set-up vs peer', podtap: fmtSummary(up, 'ms'), baseline: 'CNI ptp ADD (exec → exit)', baselineValue: fmtSummary(ptpAdd, 'ms'), ratio: `${(up.median / ptpAdd.median).toFixed(2)}×`, target: 'info' },
    { metric: 'teardown: SIGTERM → exit, restored', podtap: fmtSummary(down, 'ms'), baseline: 'ip -force -batch of the inverse ops', baselineValue: fmtSummary(floorDown, 'ms'), ...ratioTarget(down, floorDown, 2) },
    { metric: 'teardown vs floor incl. nft', podtap: fmtSummary(down, 'ms'), baseline: 'ip -batch + nft delete table', baselineValue: fmtSummary(floorDownNft, 'ms'), ratio: `${(down.median / floorDownNft.median).toFixed(2)}×`, target: 'info' },
    { metric: 'teardown vs floor until DAD settled', podtap: fmtSummary(down, 'ms'), baseline: 'ip + nft + wait until no tentative addr', baselineValue: fmtSummary(floorDad, 'ms'), ratio: `${(down.median / floorDad.median).toFixed(2)}×`, target: 'info' },
    { metric: 'teardown vs peer', podtap: fmtSummary(down, 'ms'), baseline: 'CNI ptp DEL (exec → exit)', baselineValue: fmtSummary(ptpDel, 'ms'), ratio: `${(down.median / ptpDel.median).toFixed(2)}×`, target: 'info' },
    { metric: 'namespace restored after teardown', podtap: `${restored}/${n}`, baseline: 'floor restored', baselineValue: `${floorRestored}/${n}`, target: `${n}/${n}`, met: restored === n },
  ];
  const firstDiff = pt.find((t) => !t.restored);
  const notes = [
    `${n} measured iterations (+${o.warmup} warm-up discarded), each in two fresh CNI ptp pods (podtap in one, the floor in the other) plus one CNI ptp ADD/DEL; trial order rotates podtap→floor→peer, floor→peer→podtap, peer→podtap→floor.`,
    `Everything is launched the same way: \`nsenter --net=/run/netns/POD -- argv\` (podtap: \`${podtapHead().map((a) => (a.startsWith(ROOT) ? a.slice(ROOT.length + 1) : a)).join(' ')} up --state-dir D --resolv-conf /etc/netns/POD/resolv.conf\`${podtapHead().length === 1 ? ', so its sh launcher is included' : ''}), except \`ip -n POD -batch FILE\` which enters the netns itself. Times are spawn() → ready line / exit as seen by the benchmark process.`,
    `Floor set-up = \`node -e 0\` + \`ip -n POD -batch\` of the ${plan0(plans).setupIp.length} ip lines of podtap's plan for that pod (steps ${plan0(plans).stepIds.join(', ')}), with the TAP open replaced by \`tuntap add dev tap0 mode tap vnet_hdr\`. The plan's sysctl writes (${plan0(plans).sysctlSetup.join(', ') || 'none'}) are made untimed (µs each); \`nft -f\` of the guard table is timed separately (${fmtSummary(floorNft, 'ms')}). node -e 0 alone: ${fmtSummary(floorNode, 'ms')}; ip -batch alone: ${fmtSummary(floorIp, 'ms')}.`,
    `Floor teardown = \`ip -n POD -force -batch\` of the ${plan0(plans).teardownIp.length} undo lines in podtap's replay order; nft table removal timed separately; the sysctl restore (${plan0(plans).sysctlTeardown.join(', ') || 'none'}) untimed. Informational "until DAD settled": from the batch's start until \`ip addr show tentative\` is empty, i.e. the kernel has re-created the veth's IPv6 link-local address and finished duplicate address detection.`,
    `podtap's own phases (from its ready line, median ms): ${[...PHASES, 'total'].map((k) => `${k} ${fmtSummary(phases[k])}`).join(', ')}; exec → setUp start (launcher, Node start-up, module loading, option parsing) = ready − total = ${fmtSummary(startup, 'ms')}.`,
    ...(o.datapath !== undefined ? [`podtap ran with --datapath ${o.datapath}; the floor replays the default plan's ip lines.`] : []),
    ...(firstDiff ? [`First non-restored namespace diff: ${firstDiff.diff.slice(0, 10).join('; ')} (exit ${firstDiff.exitCode})`] : []),
  ];
  const summaries: Record<string, Summary> = { up, floorNode, floorIp, floorNft, floorUp, floorUpNft, ptpAdd, down, floorDown, floorDownNft, floorDad, ptpDel, startup, ...Object.fromEntries(Object.entries(phases).map(([k, v]) => [`phase.${k}`, v])) };
  return { name: o.datapath !== undefined ? `Set-up & teardown (--datapath ${o.datapath})` : 'Set-up & teardown', rows, notes, data: { podtap: pt, floor: fl, peer: pe, plan: plan0(plans), summaries } satisfies SetupData };
}

function plan0(plans: Map<string, PodPlan>): PodPlan {
  return plans.values().next().value!;
}
