// Adoption: podtap died (OOM kill, sidecar restart) while the VMM kept
// running with the TAPs. A new `podtap up` on the same journal checks that
// the namespace is still exactly what the journal says, then takes it over
// without touching the guest's traffic: no teardown, no re-plumbing.

import { run } from '../sys/exec.ts';
import { execute, type Runtime } from './apply.ts';
import { observe } from '../pod/discover.ts';
import { PodtapError } from '../errors.ts';
import { TABLE } from '../plan/guard.ts';
import type { Attachment } from '../plan/attachment.ts';
import type { Journal } from './journal.ts';
import type { Link } from '../pod/model.ts';

/** The options that shape a plan: only a journal written with the same ones can be adopted. */
export type Settings = Record<string, unknown>;

export function settingsMismatch(journal: Journal, now: Settings): string[] {
  return Object.entries(now)
    .filter(([k, v]) => JSON.stringify(journal.state.settings[k]) !== JSON.stringify(v))
    .map(([k, v]) => `${k}: journal ${JSON.stringify(journal.state.settings[k])}, now ${JSON.stringify(v)}`);
}

/** What differs between the live links and one attachment of the journal; empty when adoption is safe. */
export function verifyAttachment(a: Attachment, links: Link[]): string[] {
  const problems: string[] = [];
  const pod = links.find((l) => l.name === a.interface);
  if (!pod) return [`pod interface ${a.interface} is missing`];
  if (a.datapath === 'bridge') {
    const br = links.find((l) => l.name === a.bridge);
    if (!br || br.kind !== 'bridge') problems.push(`bridge ${a.bridge} is missing`);
    else if (br.mac !== a.bridgeMac) problems.push(`bridge ${a.bridge} has MAC ${br.mac}, the journal says ${a.bridgeMac}`);
    if (pod.master !== a.bridge) problems.push(`${a.interface} is not a port of ${a.bridge}`);
    if (pod.mac !== a.portMac) problems.push(`${a.interface} has MAC ${pod.mac}, the journal says ${a.portMac}`);
  } else {
    if (pod.master) problems.push(`${a.interface} is a port of ${pod.master}`);
    if (pod.mac !== a.mac) problems.push(`${a.interface} has MAC ${pod.mac}, the journal says ${a.mac}`);
  }
  const tap = links.find((l) => l.name === a.tap);
  if (tap && (tap.kind !== 'tun' || (a.datapath === 'bridge' ? tap.master !== a.bridge : tap.master !== undefined)))
    problems.push(`${a.tap} exists but is not podtap's tap${a.bridge ? ` on ${a.bridge}` : ''}`);
  return problems;
}

export interface Adopted {
  /** Queue fds per NIC; empty for a NIC whose TAP the running VMM still holds. */
  fds: number[][];
  /** Gets NIC i's queue fds for a new VMM: reattaches (or recreates) the tap once nobody holds it. */
  reattach(nic: number): Promise<number[]>;
}

export async function adopt(journal: Journal, now: Settings, rt: Runtime): Promise<Adopted> {
  const s = journal.state;
  const mismatch = settingsMismatch(journal, now);
  const again = 'run `podtap down` to restore the namespace, then `podtap up` again';
  if (mismatch.length) throw new PodtapError('conflict', `the journal in ${journal.dir} was written with other settings (${mismatch.join('; ')})`, `restart podtap with the same options to adopt the running VM, or ${again}`);
  const links = (await observe()).links;
  const problems = s.attachments.flatMap((a) => verifyAttachment(a, links));
  // A persistent tap is what the VMM opens by name: it must still be there
  // (a plain one goes with its last fd, and is made again below).
  if (s.settings.persistTap === true)
    for (const a of s.attachments) if (!links.some((l) => l.name === a.tap)) problems.push(`the persistent tap ${a.tap} is missing`);
  for (const family of new Set(s.attachments.map((a) => (a.datapath === 'bridge' ? 'bridge' : 'netdev')))) {
    const nft = await run('nft', ['list', 'table', family, TABLE]);
    if (nft.exitCode !== 0) problems.push(`the nftables table ${family} ${TABLE} is missing`);
  }
  if (problems.length) throw new PodtapError('conflict', `cannot adopt the setup in the journal ${journal.path}: ${problems.join('; ')}`, again);

  const persist = s.settings.persistTap === true;
  const queues = typeof s.settings.queues === 'number' ? s.settings.queues : 1;
  let adopting = true;
  let staleGuard = false;
  const reloadGuard = () => execute(s.steps.filter((x) => x.id === 'guard/netdev').map((x) => ({ ...x, background: false })), rt, []);
  const reattach = async (nic: number): Promise<number[]> => {
    const a = s.attachments[nic]!;
    const tap = (await observe()).links.find((l) => l.name === a.tap);
    // Attaching while the VMM holds the queues would either fail (single
    // queue: EBUSY) or add a queue nobody reads (multi-queue): wait.
    // A non-persistent tap exists only while some fd is attached, and ip
    // reports attached queues for multi-queue taps only.
    if (tap?.tun && (tap.tun.attachedQueues > 0 || (!tap.tun.multiQueue && !tap.tun.persist))) return [];
    const fds: number[] = [];
    if (tap) {
      try {
        fds.push(...rt.openTap({ name: a.tap, queues, persist, reattach: true }));
      } catch (e) {
        if (e instanceof PodtapError && e.code === 'conflict') return []; // EBUSY: attached after all
        throw e;
      }
    } else {
      // The VMM left and took the tap with it: make it again, as journaled.
      const steps = s.steps.filter((x) => x.id === `nic${nic}/tap-open` || x.id === `nic${nic}/tap-up`);
      await execute(steps, rt, fds);
      // The redirect path's `fwd to` holds the old tap's ifindex: the
      // journaled table is loaded again (once every tap exists) so that it
      // forwards to the new one.
      if (a.datapath === 'redirect') {
        if (adopting) staleGuard = true;
        else await reloadGuard();
      }
    }
    return fds;
  };
  const fds: number[][] = [];
  for (const a of s.attachments) fds.push(persist ? [] : await reattach(a.nic));
  adopting = false;
  if (staleGuard) await reloadGuard();
  journal.own();
  journal.flush();
  rt.log('info', 'adopted the running setup', { journal: journal.path, nics: s.attachments.length, tapsHeldByVmm: fds.filter((f) => !f.length).length });
  return { fds, reattach };
}
