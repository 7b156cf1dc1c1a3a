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
//   peer    the real CNI ptp plugin: ADD (exec → exit) into an empty netns,
//           then DEL.
//
// Each data path podtap has (redirect, bridge) gets its own podtap and floor
// trials in every iteration, all interleaved: the floor replays that path's
// plan. podtap's default path is started without --datapath (and its ready
// line must name it); the other with --datapath.

import { performance } from 'node:perf_hooks';
import type { Cleanup } from '../test/helpers/netns.ts';
import { createNetns, nsStateDir } from '../test/helpers/netns.ts';
import type { Pod } from '../test/helpers/pods.ts';
import { diffSnapshots, snapshot, type Snapshot } from '../test/helpers/snapshot.ts';
import { makePods, planFor, startUp, tempDir, waitNoTentative, waitReady, writeFile, type PodPlan } from './pods.ts';
import { CNI_BIN, NODE, nsenter, podtapHead, ROOT, sleep, timed } from './proc.ts';
import { ratioTarget, type Row, type Section } from './report.ts';
import { addSeries, fmt, fmtSummary, summarize, type Summary } from './stats.ts';

export interface SetupOptions {
  iterations: number;
  warmup: number;
  cleanup: Cleanup;
  log: (s: string) => void;
  /**
   * The data paths to measure, podtap's default first; `defaultPath` is
   * started without --datapath (its ready line must name it), the others
   * with `--datapath VALUE`.
   */
  datapaths: string[];
  defaultPath: string;
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
  batchErrors: string[];
}

interface PeerTrial {
  addMs: number;
  delMs: number;
}

const GAP_MS = 300; // quiet time between ready and SIGTERM, and between trials

async function podtapTrial(pod: Pod, before: Snapshot, cleanup: Cleanup, stateDir: string, path: string, flag: boolean): Promise<PodtapTrial> {
  const run = startUp(pod, { stateDir, cleanup, ...(flag ? { args: ['--datapath', path] } : {}) });
  try {
    const ready = await waitReady(run, 30_000);
    const got = ready.line.datapath ?? ready.line.nics?.[0]?.datapath;
    if (got !== path) throw new Error(`podtap up${flag ? ` --datapath ${path}` : ''} reports data path ${got}, expected ${path}`);
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
  const nftU = await timed(nsenter(pod.pod, ['nft', '-f', nftUp]));
  await sleep(GAP_MS);
  const nftD = await timed(nsenter(pod.pod, ['nft', '-f', nftDown]));
  const t0 = performance.now();
  // One batch with -force, as podtap's undo. A line podtap would retry once
  // IPv6 duplicate address detection is over (a route whose source or
  // gateway is a re-added, still tentative address) is reported, and the
  // snapshot check says whether the end state is right.
  const ipDown = await timed(['ip', '-n', pod.pod, '-force', '-batch', down], { check: false });
  const batchErrors = ipDown.code === 0 ? [] : ipDown.stderr.split('\n').filter((l) => l.trim() && !/^Command failed/.test(l));
  await waitNoTentative(pod.pod, 10_000);
  const dadSettledMs = performance.now() - t0;
  const after = await snapshot(pod.pod);
  const diff = diffSnapshots(before, after);
  return { nodeMs: node.ms, ipUpMs: ipUp.ms, nftUpMs: nftU.ms, nftDownMs: nftD.ms, ipDownMs: ipDown.ms, dadSettledMs, restored: diff.length === 0, diff, batchErrors };
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

/** One data path's trials and figures. */
export interface PathData {
  path: string;
  isDefault: boolean;
  podtap: PodtapTrial[];
  floor: FloorTrial[];
  plan: PodPlan;
  summaries: Record<string, Summary>;
}

export interface SetupData {
  /** The default path's figures (the phase chart shows these). */
  podtap: PodtapTrial[];
  floor: FloorTrial[];
  peer: PeerTrial[];
  plan: PodPlan;
  summaries: Record<string, Summary>;
  paths: PathData[];
}

type Which = { kind: 'podtap' | 'floor'; path: string } | { kind: 'peer' };

export async function benchSetup(o: SetupOptions): Promise<Section> {
  const total = o.iterations + o.warmup;
  const paths = o.datapaths;
  const perIter = 2 * paths.length;
  o.log(`setup: making ${perIter * total} fresh ptp pods (${paths.join(', ')})`);
  const pods = await makePods(perIter * total, o.cleanup, 4);
  const peer = await makePeer(o.cleanup);
  const dir = tempDir(o.cleanup);
  o.log('setup: snapshots and plans');
  const before = new Map<string, Snapshot>();
  const plans = new Map<string, PodPlan>();
  // Pod (i, path k): podtap in pods[i*perIter + 2k], the floor in the next one.
  for (let i = 0; i < total; i++) {
    for (const [k, path] of paths.entries()) {
      const a = pods[i * perIter + 2 * k]!;
      const b = pods[i * perIter + 2 * k + 1]!;
      before.set(a.pod, await snapshot(a.pod));
      before.set(b.pod, await snapshot(b.pod));
      const pl = await planFor(b, path);
      if (pl.datapath !== path) throw new Error(`setup: podtap's plan for ${b.pod} with --datapath ${path} uses ${pl.datapath}`);
      plans.set(b.pod, pl);
    }
  }
  await sleep(1000); // let the kernel's deferred work from creating pods finish

  const pt = new Map(paths.map((p) => [p, [] as PodtapTrial[]]));
  const fl = new Map(paths.map((p) => [p, [] as FloorTrial[]]));
  const pe: PeerTrial[] = [];
  const kinds: Which[] = [...paths.flatMap((path): Which[] => [{ kind: 'podtap', path }, { kind: 'floor', path }]), { kind: 'peer' }];
  for (let i = 0; i < total; i++) {
    // Rotate the order every iteration, so each trial kind runs in each position equally often.
    const order = kinds.map((_, j) => kinds[(j + i) % kinds.length]!);
    const r1 = new Map<string, PodtapTrial>();
    const r2 = new Map<string, FloorTrial>();
    let r3: PeerTrial | undefined;
    for (const w of order) {
      if (w.kind === 'peer') r3 = await peerTrial(peer, i);
      else {
        const k = paths.indexOf(w.path);
        const a = pods[i * perIter + 2 * k]!;
        const b = pods[i * perIter + 2 * k + 1]!;
        if (w.kind === 'podtap') r1.set(w.path, await podtapTrial(a, before.get(a.pod)!, o.cleanup, tempDir(o.cleanup, 'podtap-bench-state-'), w.path, w.path !== o.defaultPath));
        else r2.set(w.path, await floorTrial(b, plans.get(b.pod)!, before.get(b.pod)!, dir));
      }
      await sleep(GAP_MS);
    }
    const warm = i < o.warmup;
    const per = paths.map((p) => {
      const a = r1.get(p)!;
      const b = r2.get(p)!;
      return `${p}: podtap up ${a.setupMs.toFixed(0)} / down ${a.teardownMs.toFixed(0)} ms${a.restored ? '' : ' NOT RESTORED'}, floor ${(b.nodeMs + b.ipUpMs).toFixed(0)} / ${b.ipDownMs.toFixed(0)} ms${b.restored ? '' : ' NOT RESTORED'}`;
    });
    o.log(`setup: ${warm ? 'warm-up' : `iteration ${i - o.warmup + 1}/${o.iterations}`}: ${per.join('; ')}; ptp ADD ${r3!.addMs.toFixed(0)} ms`);
    if (!warm) {
      for (const p of paths) {
        pt.get(p)!.push(r1.get(p)!);
        fl.get(p)!.push(r2.get(p)!);
      }
      pe.push(r3!);
    }
  }

  const s = (xs: number[]) => summarize(xs);
  const ptpAdd = s(pe.map((t) => t.addMs));
  const ptpDel = s(pe.map((t) => t.delMs));
  const rows: Row[] = [];
  const notes: string[] = [
    `${o.iterations} measured iterations (+${o.warmup} warm-up discarded). Per iteration and data path (${paths.join(', ')}), two fresh CNI ptp pods: podtap in one, the floor in the other; plus one CNI ptp ADD/DEL. All ${kinds.length} trials of an iteration run one after the other, in an order that rotates by one every iteration.`,
    `Everything is launched the same way: \`nsenter --net=/run/netns/POD -- argv\` (podtap: \`${podtapHead().map((a) => (a.startsWith(ROOT) ? a.slice(ROOT.length + 1) : a)).join(' ')} up --state-dir D --resolv-conf /etc/netns/POD/resolv.conf\`${podtapHead().length === 1 ? ', so its sh launcher is included' : ''}; podtap's default path, ${o.defaultPath}, without --datapath, the other with it), except \`ip -n POD -batch FILE\` which enters the netns itself. Times are spawn() → ready line / exit as seen by the benchmark process.`,
  ];
  const pathData: PathData[] = [];
  for (const path of paths) {
    const P = pt.get(path)!;
    const F = fl.get(path)!;
    const plan = plans.get(pods[2 * paths.indexOf(path) + 1]!.pod)!;
    const isDefault = path === o.defaultPath;
    const tag = `${path}${isDefault ? ', default' : ''}`;
    const up = s(P.map((t) => t.setupMs));
    const floorNode = s(F.map((t) => t.nodeMs));
    const floorIp = s(F.map((t) => t.ipUpMs));
    const floorNft = s(F.map((t) => t.nftUpMs));
    const floorUp = s(addSeries(F.map((t) => t.nodeMs), F.map((t) => t.ipUpMs)));
    const floorUpNft = s(addSeries(F.map((t) => t.nodeMs), F.map((t) => t.ipUpMs), F.map((t) => t.nftUpMs)));
    const floorUpPar = s(F.map((t) => t.nodeMs + Math.max(t.ipUpMs, t.nftUpMs)));
    const down = s(P.map((t) => t.teardownMs));
    const floorDown = s(F.map((t) => t.ipDownMs));
    const floorDownNft = s(addSeries(F.map((t) => t.ipDownMs), F.map((t) => t.nftDownMs)));
    const floorDad = s(addSeries(F.map((t) => t.dadSettledMs), F.map((t) => t.nftDownMs)));
    const phases: Record<string, Summary> = {};
    for (const k of [...PHASES, 'total'] as const) phases[k] = s(P.map((t) => t.timings[k] ?? NaN));
    const startup = s(P.map((t) => t.setupMs - (t.timings.total ?? NaN)));
    const restored = P.filter((t) => t.restored).length;
    const floorRestored = F.filter((t) => t.restored).length;
    const n = P.length;
    rows.push(
      { metric: `set-up (${tag}): exec → ready line`, podtap: fmtSummary(up, 'ms'), baseline: 'floor: node -e 0 + one ip -batch', baselineValue: fmtSummary(floorUp, 'ms'), ...ratioTarget(up, floorUp, 1.5) },
      { metric: `set-up (${tag}) vs floor incl. nft -f guard`, podtap: fmtSummary(up, 'ms'), baseline: 'node -e 0 + ip -batch + nft -f', baselineValue: fmtSummary(floorUpNft, 'ms'), ratio: `${fmt(up.median / floorUpNft.median)}×`, target: 'info' },
      { metric: `set-up (${tag}) vs floor with ip and nft side by side`, podtap: fmtSummary(up, 'ms'), baseline: 'node -e 0 + max(ip -batch, nft -f)', baselineValue: fmtSummary(floorUpPar, 'ms'), ratio: `${fmt(up.median / floorUpPar.median)}×`, target: 'info' },
      { metric: `set-up (${tag}) vs peer`, podtap: fmtSummary(up, 'ms'), baseline: 'CNI ptp ADD (exec → exit)', baselineValue: fmtSummary(ptpAdd, 'ms'), ratio: `${fmt(up.median / ptpAdd.median)}×`, target: 'info' },
      { metric: `teardown (${tag}): SIGTERM → exit, restored`, podtap: fmtSummary(down, 'ms'), baseline: 'ip -force -batch of the inverse ops', baselineValue: fmtSummary(floorDown, 'ms'), ...ratioTarget(down, floorDown, 2) },
      { metric: `teardown (${tag}) vs floor incl. nft`, podtap: fmtSummary(down, 'ms'), baseline: 'ip -batch + nft delete table', baselineValue: fmtSummary(floorDownNft, 'ms'), ratio: `${fmt(down.median / floorDownNft.median)}×`, target: 'info' },
      { metric: `teardown (${tag}) vs floor until DAD settled`, podtap: fmtSummary(down, 'ms'), baseline: 'ip + nft + wait until no tentative addr', baselineValue: fmtSummary(floorDad, 'ms'), ratio: `${fmt(down.median / floorDad.median)}×`, target: 'info' },
      { metric: `teardown (${tag}) vs peer`, podtap: fmtSummary(down, 'ms'), baseline: 'CNI ptp DEL (exec → exit)', baselineValue: fmtSummary(ptpDel, 'ms'), ratio: `${fmt(down.median / ptpDel.median)}×`, target: 'info' },
      { metric: `namespace restored after teardown (${tag})`, podtap: `${restored}/${n}`, baseline: 'floor restored', baselineValue: `${floorRestored}/${n}`, target: `${n}/${n}`, met: restored === n },
    );
    const firstDiff = P.find((t) => !t.restored);
    const floorDiff = F.find((t) => !t.restored);
    const floorErr = F.find((t) => t.batchErrors.length);
    notes.push(
      `${path}: floor set-up = \`node -e 0\` + \`ip -n POD -batch\` of the ${plan.setupIp.length} ip lines of podtap's plan for that pod (steps ${plan.stepIds.join(', ')}), with the TAP open replaced by \`tuntap add dev tap0 mode tap vnet_hdr\`; \`nft -f\` of the guard table${plan.stepIds.filter((x) => x.startsWith('guard/')).length > 1 ? 's (both families, one nft process)' : ''} timed separately (${fmtSummary(floorNft, 'ms')}). node -e 0 alone: ${fmtSummary(floorNode, 'ms')}; ip -batch alone: ${fmtSummary(floorIp, 'ms')}. podtap loads its guard alongside its ip batch, hence the "side by side" floor.`,
      `${path}: floor teardown = \`ip -n POD -force -batch\` of the ${plan.teardownIp.length} undo lines in podtap's replay order; nft table removal timed separately. Informational "until DAD settled": from the batch's start until \`ip addr show tentative\` is empty, i.e. the veth's IPv6 link-local address, put back, has finished duplicate address detection.`,
      `${path}: podtap's own phases (from its ready line, median ms): ${[...PHASES, 'total'].map((k) => `${k} ${fmtSummary(phases[k])}`).join(', ')}; exec → setUp start (launcher, Node start-up, module loading, option parsing) = ready − total = ${fmtSummary(startup, 'ms')}.`,
      ...(firstDiff ? [`${path}: first non-restored namespace diff: ${firstDiff.diff.slice(0, 10).join('; ')} (exit ${firstDiff.exitCode})`] : []),
      ...(floorDiff ? [`${path}: the floor left a namespace different: ${floorDiff.diff.slice(0, 10).join('; ')}`] : []),
      ...(floorErr ? [`${path}: the floor's undo batch reported: ${floorErr.batchErrors.slice(0, 4).join(' | ')}`] : []),
    );
    const summaries: Record<string, Summary> = { up, floorNode, floorIp, floorNft, floorUp, floorUpNft, floorUpPar, ptpAdd, down, floorDown, floorDownNft, floorDad, ptpDel, startup, ...Object.fromEntries(Object.entries(phases).map(([k, v]) => [`phase.${k}`, v])) };
    pathData.push({ path, isDefault, podtap: P, floor: F, plan, summaries });
  }
  const main = pathData.find((d) => d.isDefault) ?? pathData[0]!;
  return {
    name: paths.length === 1 ? `Set-up & teardown (${paths[0]})` : 'Set-up & teardown',
    rows,
    notes,
    data: { podtap: main.podtap, floor: main.floor, peer: pe, plan: main.plan, summaries: main.summaries, paths: pathData } satisfies SetupData,
  };
}
