// Adoption: podtap died (OOM kill, sidecar restart) while the VMM kept
// running with the TAP. A new `podtap up` on the same journal checks that
// the namespace is still exactly what the journal says, then takes it over
// without touching the guest's traffic: no teardown, no re-plumbing.

import { run } from '../sys/exec.ts';
import { execute, type Runtime } from './apply.ts';
import { observe } from '../pod/discover.ts';
import { PodtapError } from '../errors.ts';
import { GUARD_TABLE } from '../plan/guard.ts';
import type { Journal } from './journal.ts';
import type { Link } from '../pod/model.ts';
import type { Options } from '../options.ts';

/** Only a journal written for the same settings can be adopted. */
export function settingsMismatch(journal: Journal, opts: Options): string[] {
  const want: Record<string, unknown> = { bridge: opts.bridge, tap: opts.tap, queues: opts.queues, persistTap: opts.persistTap, antispoof: opts.antispoof };
  return Object.entries(want)
    .filter(([k, v]) => journal.state.settings[k] !== v)
    .map(([k, v]) => `${k}: journal ${JSON.stringify(journal.state.settings[k])}, now ${JSON.stringify(v)}`);
}

/** What differs between the live namespace and the journal; empty when adoption is safe. */
export function verifyLinks(journal: Journal, links: Link[], opts: Pick<Options, 'bridge' | 'tap'>): string[] {
  const s = journal.state;
  const problems: string[] = [];
  const bridge = links.find((l) => l.name === opts.bridge);
  if (!bridge || bridge.kind !== 'bridge') problems.push(`bridge ${opts.bridge} is missing`);
  else if (bridge.mac !== s.bridgeMac) problems.push(`bridge ${opts.bridge} has MAC ${bridge.mac}, the journal says ${s.bridgeMac}`);
  const veth = links.find((l) => l.name === s.pod.link.name);
  if (!veth) problems.push(`veth ${s.pod.link.name} is missing`);
  else {
    if (veth.master !== opts.bridge) problems.push(`veth ${veth.name} is not a port of ${opts.bridge}`);
    if (veth.mac !== s.vethMac) problems.push(`veth ${veth.name} has MAC ${veth.mac}, the journal says ${s.vethMac}`);
  }
  const tap = links.find((l) => l.name === opts.tap);
  if (tap && (tap.kind !== 'tun' || tap.master !== opts.bridge)) problems.push(`${opts.tap} exists but is not podtap's tap on ${opts.bridge}`);
  return problems;
}

export interface Adopted {
  fds: number[];
  /** Gets queue fds for a new VMM: reattaches (or recreates) the tap once nobody holds it. */
  reattach(): Promise<number[]>;
}

export async function adopt(journal: Journal, opts: Options, rt: Runtime): Promise<Adopted> {
  const mismatch = settingsMismatch(journal, opts);
  const again = 'run `podtap down` to restore the namespace, then `podtap up` again';
  if (mismatch.length) throw new PodtapError('conflict', `the journal in ${opts.stateDir} was written with other settings (${mismatch.join('; ')})`, `restart podtap with the same options to adopt the running VM, or ${again}`);
  const problems = verifyLinks(journal, (await observe()).links, opts);
  const nft = await run('nft', ['list', 'table', 'bridge', GUARD_TABLE]);
  if (nft.exitCode !== 0) problems.push(`the nftables table bridge ${GUARD_TABLE} is missing`);
  if (problems.length) throw new PodtapError('conflict', `cannot adopt the setup in the journal ${journal.path}: ${problems.join('; ')}`, again);

  const tapSteps = journal.state.steps.filter((s) => s.id === 'tap-open' || s.id === 'tap-enslave');
  const reattach = async (): Promise<number[]> => {
    const tap = (await observe()).links.find((l) => l.name === opts.tap);
    // Attaching while the VMM holds the queues would either fail (single
    // queue: EBUSY) or add a queue nobody reads (multi-queue): wait.
    // A non-persistent tap exists only while some fd is attached, and ip
    // reports attached queues for multi-queue taps only.
    if (tap?.tun && (tap.tun.attachedQueues > 0 || (!tap.tun.multiQueue && !tap.tun.persist))) return [];
    const fds: number[] = [];
    if (tap) {
      try {
        fds.push(...rt.openTap({ name: opts.tap, queues: opts.queues, persist: opts.persistTap, reattach: true }));
      } catch (e) {
        if (e instanceof PodtapError && e.code === 'conflict') return []; // EBUSY: attached after all
        throw e;
      }
    }
    else await execute(tapSteps, rt, fds); // the VMM left and took the tap with it: make it again, as journaled
    return fds;
  };
  const fds = opts.persistTap ? [] : await reattach();
  journal.own();
  journal.flush();
  rt.log('info', 'adopted the running setup', { journal: journal.path, tapHeldByVmm: fds.length === 0 });
  return { fds, reattach };
}
