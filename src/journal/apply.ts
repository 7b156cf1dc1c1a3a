// Carrying out steps. Set-up journals steps before running them and batches
// consecutive iproute2 actions into one `ip -batch`; teardown runs undo
// actions in reverse, taking "already undone" as done, so replaying it any
// number of times, or after a crash half-way, is always safe.

import { run } from '../sys/exec.ts';
import { PodtapError } from '../errors.ts';
import { ipBatch, ipJsonBatch, type BatchFailure } from '../sys/ip.ts';
import { removalScript, renderTable } from '../plan/guard.ts';
import type { Journal } from './journal.ts';
import type { Logger } from '../log.ts';
import { describeAction, ipLines, type Action, type Step, type TapSpec } from './actions.ts';

/** The kernel-facing effects, injectable so ordering is unit-tested without root. */
export interface Effects {
  ipBatch(lines: string[], opts?: { force?: boolean }): Promise<BatchFailure[]>;
  nft(script: string): Promise<string | undefined>; // error text, or undefined on success
  /** Waits until no IPv6 address is tentative (duplicate address detection done); returns how many still are. */
  settle(timeoutMs?: number): Promise<number>;
}

export interface Runtime {
  /** Opens the TAP queues; the fds stay with podtap until teardown. */
  openTap(spec: TapSpec): number[];
  log: Logger;
  effects?: Effects;
}

/** Set by tests only: PODTAP_FAULT=setup:K:before|after or teardown:K:before|after kills podtap at step K. */
export interface Fault {
  phase: 'setup' | 'teardown';
  step: number;
  when: 'before' | 'after';
}

export function parseFault(raw: string | undefined): Fault | undefined {
  if (!raw) return undefined;
  const m = /^(setup|teardown):(\d+):(before|after)$/.exec(raw);
  if (!m) throw new PodtapError('usage', `PODTAP_FAULT is ${JSON.stringify(raw)}`, 'use setup:K:before|after or teardown:K:before|after (tests only)');
  return { phase: m[1] as Fault['phase'], step: Number(m[2]), when: m[3] as Fault['when'] };
}

function die(): never {
  // The point is to die without any cleanup, as a kill -9 or OOM kill would.
  process.kill(process.pid, 'SIGKILL');
  throw new Error('unreachable');
}

export class StepFailure extends PodtapError {
  readonly stepId: string;
  constructor(stepId: string, detail: string, cause?: unknown) {
    super('apply', `setting up failed at step ${stepId}: ${detail}`, 'nothing was left changed; fix the cause above and retry', cause);
    this.stepId = stepId;
  }
}

async function runNft(script: string): Promise<string | undefined> {
  const r = await run('nft', ['-f', '-'], script);
  if (r.spawnError === 'ENOENT') return 'the `nft` command (nftables) is not installed';
  return r.exitCode === 0 ? undefined : r.stderr.trim() || `nft exited ${r.exitCode}`;
}

export const kernel: Effects = {
  ipBatch,
  nft: runNft,
  async settle(timeoutMs = 5000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const [tentative = []] = await ipJsonBatch(['addr show tentative']);
      const n = tentative.reduce((k: number, l: any) => k + (l.addr_info ?? []).filter((a: any) => a.family === 'inet6' && a.tentative).length, 0);
      if (n === 0 || Date.now() >= deadline) return n;
      await new Promise((r) => setTimeout(r, 50));
    }
  },
};

/** The nft script of an nftables action. */
function nftScript(a: Action): string | undefined {
  if (a.op === 'nft-load') return renderTable(a.table);
  if (a.op === 'nft-delete') return removalScript(a.family);
  return undefined;
}

/** Runs one background step's actions (nftables only). */
async function runBackground(step: Step, fx: Effects): Promise<void> {
  for (const a of step.do) {
    const script = nftScript(a);
    if (script === undefined) throw new StepFailure(step.id, `${a.op} cannot run in the background`);
    const err = await fx.nft(script);
    if (err) throw new StepFailure(step.id, `nft: ${err}`);
  }
}

/**
 * Runs the do-actions of steps in order, one `ip -batch` per run of
 * consecutive iproute2 actions. A background step starts when it is reached
 * and runs alongside the rest; every one is waited for before this returns
 * or throws, so a rollback never races them, and none can reject unobserved.
 */
export async function execute(steps: Step[], rt: Runtime, tapFds: number[]): Promise<void> {
  const fx = rt.effects ?? kernel;
  const background: Promise<void>[] = [];
  let lines: { line: string; step: Step }[] = [];
  const flush = async () => {
    if (!lines.length) return;
    const batch = lines;
    lines = [];
    const failures = await fx.ipBatch(batch.map((l) => l.line));
    if (failures.length) {
      const f = failures[0]!;
      const step = batch[f.line]?.step ?? batch[0]!.step;
      throw new StepFailure(step.id, `ip ${f.command}: ${f.message}`);
    }
  };
  let error: unknown;
  try {
    for (const step of steps) {
      if (step.background && steps.length > 1) {
        const p = runBackground(step, fx);
        p.catch(() => {}); // observed below, with allSettled; never an unhandled rejection
        background.push(p);
        continue;
      }
      for (const a of step.do) {
        const ip = ipLines(a);
        if (ip) {
          for (const line of ip) lines.push({ line, step });
          continue;
        }
        await flush();
        try {
          if (a.op === 'tap-open') tapFds.push(...rt.openTap(a.tap));
          else {
            const script = nftScript(a);
            if (script === undefined) throw new StepFailure(step.id, `${a.op} is not an action podtap applies`);
            const err = await fx.nft(script);
            if (err) throw new StepFailure(step.id, `nft: ${err}`);
          }
        } catch (e) {
          if (e instanceof PodtapError) throw e;
          throw new StepFailure(step.id, (e as Error).message, e);
        }
      }
    }
    await flush();
  } catch (e) {
    error = e;
  }
  const settled = await Promise.allSettled(background);
  // A foreground failure is the one to report; otherwise a background one.
  if (error) throw error;
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

/**
 * Applies the plan, journaled write-ahead. Normally the whole plan is
 * recorded in one write and run with as few processes as possible; with a
 * fault injected, each step is recorded and applied alone so a crash can land
 * between any two.
 */
export async function applyPlan(steps: Step[], journal: Journal, rt: Runtime, fds: number[], fault?: Fault): Promise<void> {
  if (!fault || fault.phase !== 'setup') {
    journal.record(steps);
    await execute(steps, rt, fds);
    return;
  }
  for (let k = 0; k < steps.length; k++) {
    journal.record([steps[k]!]);
    if (k === fault.step && fault.when === 'before') die();
    await execute([steps[k]!], rt, fds);
    if (k === fault.step && fault.when === 'after') die();
  }
}

// Messages that mean the undo has nothing left to do: the thing is already
// gone or already as the undo wants it. Anything else is a real failure.
const ALREADY = /Cannot find device|No such device|No such process|No such file or directory|Cannot assign requested address|does not exist|not enslaved/i;

// A re-added IPv6 address is tentative until duplicate address detection
// ends, and the kernel refuses it as a route's source meanwhile. Such lines
// are retried once addresses have settled.
const AFTER_DAD = /Invalid source address|Nexthop has invalid gateway|No route to host|Network is unreachable/i;

export interface UndoReport {
  failures: string[];
  /** IPv6 addresses still running duplicate address detection when undo returned. */
  tentative: number;
}

/** Replays the undo actions of steps, last step first. Safe to run any number of times. */
export async function undoSteps(steps: Step[], rt: Pick<Runtime, 'log' | 'effects'>, fault?: Fault): Promise<UndoReport> {
  const fx = rt.effects ?? kernel;
  const failures: string[] = [];
  const deferred: { line: string; step: Step }[] = [];
  let lines: { line: string; step: Step }[] = [];
  let restoredV6 = false;
  const flush = async () => {
    if (!lines.length) return;
    const batch = lines;
    lines = [];
    for (const f of await fx.ipBatch(batch.map((l) => l.line), { force: true })) {
      const entry = batch[f.line];
      if (ALREADY.test(f.message)) rt.log('debug', 'already undone', { command: f.command, message: f.message });
      else if (entry && AFTER_DAD.test(f.message)) deferred.push(entry);
      else failures.push(`${entry?.step.id ?? '?'}: ip ${f.command}: ${f.message}`);
    }
  };
  const nft = async (step: Step, a: Action) => {
    const err = await fx.nft(nftScript(a)!);
    if (err) failures.push(`${step.id}: ${describeAction(a)}: ${err}`);
  };
  const reversed = [...steps].reverse();
  // Background steps' undo (the guard) runs alongside the rest, except when a
  // fault is injected: then every step must land in its exact place.
  const background = fault
    ? []
    : reversed.filter((s) => s.background).map(async (step) => {
        for (const a of step.undo) if (nftScript(a) !== undefined) await nft(step, a);
      });
  for (let k = 0; k < reversed.length; k++) {
    const step = reversed[k]!;
    if (step.background && !fault) continue;
    const faulty = fault?.phase === 'teardown' && fault.step === k;
    if (faulty) await flush();
    if (faulty && fault.when === 'before') die();
    for (const a of step.undo) {
      if (a.op === 'addr-add' && a.addr.family === 'inet6') restoredV6 = true;
      const ip = ipLines(a);
      if (ip) {
        for (const line of ip) lines.push({ line, step });
        continue;
      }
      await flush();
      if (nftScript(a) !== undefined) await nft(step, a);
      else failures.push(`${step.id}: ${describeAction(a)} is not an undo action`);
    }
    if (faulty) {
      await flush();
      die();
    }
  }
  await flush();
  await Promise.all(background);
  let tentative = 0;
  if (deferred.length) {
    await fx.settle();
    for (const f of await fx.ipBatch(deferred.map((l) => l.line), { force: true })) {
      if (!ALREADY.test(f.message)) failures.push(`${deferred[f.line]?.step.id ?? '?'}: ip ${f.command}: ${f.message}`);
    }
  }
  // Report, without waiting for it, how much duplicate address detection is
  // still running on the restored IPv6 addresses.
  if (restoredV6) tentative = await fx.settle(0);
  return { failures, tentative };
}
