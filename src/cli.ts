// The command line: parse, dispatch, and turn every error into one message
// and an exit status. Logs go to stderr; stdout carries only JSON meant for
// programs (inspect's report, the ready line).

import { spawn } from 'node:child_process';
import { openStateDir, removeStateFile, writeStateFile } from './journal/statedir.ts';
import { Journal } from './journal/journal.ts';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { constants } from 'node:os';
import { PodtapError } from './errors.ts';
import { parseFault } from './journal/apply.ts';
import { createLogger, type Logger } from './log.ts';
import { parseOptions, SPECS, type Options } from './options.ts';
import { CANDIDATE_KINDS, observe, readSysctls, sysctlKeys, interfaceOf, discover } from './pod/discover.ts';
import { ipv4Of, ipv6Of, primaryNic } from './plan/attachment.ts';
import { validIfname } from './net/names.ts';
import { down, restoredMessage, setUp, StoppedBeforeSetup, tearDown, type Session } from './lifecycle.ts';
import { checkVmmArgv, checkVmmWords, describeNic, serve, type Serving } from './serve/serve.ts';
import type { Attachment } from './plan/attachment.ts';

import { VERSION } from './version.ts';

export { VERSION };

function helpText(): string {
  const lines = [
    'podtap: give a VM inside a pod the pod\'s own network',
    '',
    'usage:',
    '  podtap inspect [--interface IF]        print what podtap found, as JSON; changes nothing',
    '  podtap up [options]                    take the pod interfaces over, serve the VM, print a ready line; restore on SIGTERM',
    '  podtap run [options] -- VMM ARGS...    like up, then spawn the VMM with the TAP fds at 3, 4, ...',
    '  podtap down [--state-dir DIR]          restore the namespace from the journal (after a crash)',
    '  podtap exec --fd-socket PATH -- VMM... fetch the TAP fds from `up --fd-socket` and exec the VMM',
    '  podtap status [--json]                 what the running podtap serves, per NIC: DHCP, guard drops, hand-off',
    '',
    'VMM argument placeholders: {fd} {fds} {fds_csv} {mac} {mtu} {tap} {bridge} {interface} {queues} {vectors} {ch_queues}',
    '  each for NIC 0; {name:N} for NIC N (0-based), {name:IFNAME} for the NIC of pod interface IFNAME',
    '  NIC N gets fds after NIC N-1\'s: with --queues 1, NIC 0 has fd 3, NIC 1 fd 4, ...',
    '',
    'options (each also as an environment variable):',
  ];
  for (const s of SPECS) {
    const flag = `--${s.flag}${s.valueName ? ' ' + s.valueName : ''}`;
    lines.push(`  ${flag.padEnd(31)} ${s.env.padEnd(23)} ${s.help}`);
  }
  lines.push('  --help, --version');
  return lines.join('\n') + '\n';
}

function waitForSignal(onSignal: (sig: NodeJS.Signals) => void): () => void {
  const handler = (sig: NodeJS.Signals) => onSignal(sig);
  // SIGHUP too: a closed terminal or a supervisor's hang-up must not leave
  // the namespace half-taken.
  const signals: NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP'];
  for (const s of signals) process.on(s, handler);
  return () => {
    for (const s of signals) process.off(s, handler);
  };
}

/**
 * Every pod interface podtap could take over, what each has, and what the
 * VM would get from the ones chosen (or from the only candidate). Changes
 * nothing.
 */
async function inspect(opts: Options): Promise<number> {
  const observed = await observe();
  const candidates = observed.links.filter((l) => CANDIDATE_KINDS.includes(l.kind) || opts.interfaces?.includes(l.name));
  let chosen: string[] = [];
  let problem: string | undefined;
  let dns = { nameservers: [] as string[], search: [] as string[], options: [] as string[] };
  let hostname = '';
  try {
    const { pod } = await discover({ ...(opts.interfaces ? { interfaces: opts.interfaces } : {}), force: opts.force, resolvConf: opts.resolvConf, resolvConfRequired: opts.resolvConf !== '/etc/resolv.conf' }, observed);
    chosen = pod.interfaces.map((i) => i.link.name);
    dns = pod.dns;
    hostname = pod.hostname;
  } catch (e) {
    // What podtap would refuse about the interfaces is part of the report;
    // anything else (an unreadable resolver file) is an error of its own.
    if (!(e instanceof PodtapError) || e.code !== 'discovery') throw e;
    problem = e.describe();
  }
  const ifaces = candidates.map((l) => interfaceOf(observed, l, validIfname(l.name) ? readSysctls(sysctlKeys(l.name)) : {}));
  const chosenIfaces = chosen.map((n) => ifaces.find((i) => i.link.name === n)!).filter(Boolean);
  const primary = primaryNic(chosenIfaces);
  const report = {
    interfaces: ifaces.map((i) => {
      const nic = chosen.indexOf(i.link.name);
      const isPrimary = nic >= 0 && nic === primary;
      return {
        interface: i.link.name,
        kind: i.link.kind,
        mac: i.link.mac,
        mtu: i.link.mtu,
        ...(nic >= 0 ? { nic } : {}),
        vm: nic >= 0 ? { mac: i.link.mac, ipv4: ipv4Of(i, isPrimary) ?? null, ipv6: ipv6Of(i, isPrimary) ?? null, defaultRoute: isPrimary } : null,
        ipv4: i.addresses.filter((a) => a.family === 'inet'),
        ipv6: i.addresses.filter((a) => a.family === 'inet6'),
        routes: i.routes,
        neighbours: i.neighbours,
        sysctls: i.sysctls,
      };
    }),
    chosen,
    ...(problem ? { problem } : {}),
    dns,
    hostname,
  };
  process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  return problem ? 4 : 0;
}

/** up and run share everything up to the hand-over. */
async function upOrRun(command: 'up' | 'run', opts: Options, vmm: string[], log: Logger): Promise<number> {
  const fault = parseFault(process.env.PODTAP_FAULT);
  // A typo in a placeholder is refused now, not after the namespace was set up.
  if (command === 'run') checkVmmWords(vmm);
  const checkPlan = (attachments: Attachment[]) => {
    if (command === 'run') checkVmmArgv(vmm, attachments, opts.persistTap ? 1 : opts.queues);
    if (opts.qmpBus && opts.qmpBus.length !== attachments.length)
      throw new PodtapError('usage', `${opts.qmpBus.length} --qmp-bus for ${attachments.length} NIC${attachments.length > 1 ? 's' : ''}`, 'give one --qmp-bus per NIC, in NIC order (or none on a machine whose root bus takes hot-plug)');
  };
  let stop: NodeJS.Signals | undefined;
  let child: ReturnType<typeof spawn> | undefined;
  let wake: (() => void) | undefined;
  // Installed before anything changes: a signal during setup is remembered,
  // setup finishes its current step, and everything is torn down. Later
  // signals (a second SIGTERM during teardown) are absorbed, never fatal.
  const unhook = waitForSignal((sig) => {
    if (child && child.exitCode === null && child.signalCode === null) {
      log('info', `forwarding ${sig} to the VMM`, { pid: child.pid });
      child.kill(sig);
      return;
    }
    if (stop) {
      log('info', `${sig} again: teardown is already under way`);
      return;
    }
    stop = sig;
    log('info', `${sig}: tearing down`);
    wake?.();
  });

  // The DHCP modules load while the namespace is being set up.
  if (opts.dhcp) for (const m of [import('./serve/dhcp4/config.ts'), import('./serve/dhcp4/server.ts')]) m.catch(() => {});
  let session: Session | undefined;
  let serving: Serving | undefined;
  let exitCode = 0;
  try {
    try {
      session = await setUp(opts, log, fault, { stopRequested: () => stop !== undefined, checkPlan });
    } catch (e) {
      if (!(e instanceof StoppedBeforeSetup)) throw e;
      log('info', `${stop}: stopped before anything was changed`);
    }
    if (session && !stop) {
      serving = await serve(session, opts, log);
      const queues = opts.persistTap ? 1 : opts.queues;
      const nics = session.attachments.map((a) => describeNic(a, queues));
      const first = nics[0]!;
      // The top-level fields are NIC 0's, as before there were several.
      const ready = {
        event: 'ready',
        mac: first.mac,
        ...(first.ip ? { ip: first.ip } : {}),
        ...(first.gateway ? { gateway: first.gateway } : {}),
        mtu: first.mtu,
        bridge: first.bridge,
        tap: first.tap,
        queues,
        datapath: first.datapath,
        linkLocal: session.serverId,
        nics,
        steps: session.journal.state.steps.length,
        adopted: session.adopted,
        ...serving.readyFields,
        timings: Object.fromEntries(Object.entries(session.timings).map(([k, v]) => [k, Math.round(v * 100) / 100])),
      };
      // For readiness probes: present exactly while the VM's network is up.
      // Written before the ready line: a state dir that can't take it (full,
      // read-only) fails the start, and no "ready" is ever announced.
      try {
        writeStateFile(readyFile(opts), JSON.stringify(ready) + '\n');
      } catch (e) {
        throw new PodtapError('environment', `cannot write the readiness file ${readyFile(opts)}: ${(e as Error).message}`, 'give a writable --state-dir with some free space', e);
      }
      process.stdout.write(JSON.stringify(ready) + '\n');
      log('info', 'ready', { nics: session.attachments.map((a) => `${a.interface}=${[...(a.ipv4 ? [`${a.ipv4.address}/${a.ipv4.prefixlen}`] : []), ...(a.ipv6?.addresses ?? [])].join(',') || 'L2'}`).join(' '), mac: first.mac, datapath: first.datapath, adopted: session.adopted });
    }
    if (!stop && command === 'run') {
      child = serving!.spawnVmm(vmm);
      exitCode = await new Promise<number>((resolve) => {
        child!.on('exit', (code, signal) => resolve(code ?? 128 + (signal ? signalNumber(signal) : 0)));
        child!.on('error', (e) => {
          log('error', `cannot start the VMM ${vmm[0]}: ${e.message}`);
          resolve(127);
        });
      });
      log(exitCode === 0 ? 'info' : 'warn', 'the VMM exited', { status: exitCode });
    } else if (!stop) {
      // Nothing else may hold the event loop open (no DHCP, no sockets):
      // a timer keeps podtap in the foreground until the signal.
      const keepAlive = setInterval(() => {}, 1 << 30);
      await new Promise<void>((resolve) => (wake = resolve));
      clearInterval(keepAlive);
    }
  } finally {
    // Each part of stopping on its own: one that fails (a read-only state
    // dir, a VMM that is gone) must not keep the next from running, and the
    // namespace is restored whatever happened before.
    const attempt = async (what: string, fn: () => unknown) => {
      try {
        await fn();
      } catch (e) {
        if (what === 'restore') throw e;
        log('warn', `${what} failed: ${(e as Error).message}`);
      }
    };
    try {
      if (session) await attempt(`removing ${readyFile(opts)}`, () => removeStateFile(readyFile(opts)));
      if (serving) await attempt('stopping the servers', () => serving!.close());
      if (session) {
        const s = session;
        await attempt('restore', async () => log('info', restoredMessage(await tearDown(s.journal, log, fault))));
      }
    } finally {
      session?.lock.release();
      unhook();
    }
  }
  return exitCode;
}

/** `podtap status`: asks the running podtap; without one, says what the state dir holds. */
async function status(opts: Options): Promise<number> {
  const { connect } = await import('node:net');
  const { statusText } = await import('./serve/status.ts');
  const path = opts.statusSocket ?? join(opts.stateDir, 'status.sock');
  const text = await new Promise<string | Error>((resolve) => {
    const chunks: Buffer[] = [];
    const s = connect(path);
    s.setTimeout(5000, () => s.destroy(new Error('no answer within 5 s')));
    s.on('data', (d) => chunks.push(d));
    s.on('end', () => resolve(Buffer.concat(chunks).toString()));
    s.on('error', (e) => resolve(e));
  });
  if (!(text instanceof Error)) {
    const doc = JSON.parse(text) as Record<string, unknown>;
    process.stdout.write(opts.json ? JSON.stringify(doc, null, 2) + '\n' : statusText(doc));
    return 0;
  }
  // Nobody answers: say what that means.
  let journal: Journal | undefined;
  let why = '';
  const code = (text as NodeJS.ErrnoException).code;
  const meaning =
    code === 'ENOENT'
      ? 'no podtap serves this socket (not started, or stopped)'
      : code === 'ECONNREFUSED'
        ? 'the podtap that served it died (a restarted `podtap up` adopts the running VM)'
        : `${code ?? text.message}`;
  if (!existsSync(opts.stateDir)) why = `${opts.stateDir} is not in this container (ask from podtap's container, or give --state-dir)`;
  else {
    try {
      openStateDir(opts.stateDir, false);
      journal = Journal.load(opts.stateDir);
    } catch (e) {
      why = e instanceof PodtapError ? e.describe() : (e as Error).message;
    }
  }
  const doc = {
    running: false,
    socket: path,
    error: (text as NodeJS.ErrnoException).code ?? text.message,
    journal: journal ? { pid: journal.state.pid, phase: journal.state.phase, createdAt: journal.state.createdAt, nics: journal.state.attachments.map((a) => a.interface) } : null,
    ...(why ? { problem: why } : {}),
  };
  if (opts.json) process.stdout.write(JSON.stringify(doc, null, 2) + '\n');
  else {
    const lines = [`podtap is not answering on ${path}: ${meaning}.`];
    if (journal)
      lines.push(
        `The journal in ${opts.stateDir} says podtap (pid ${journal.state.pid}) set up ${doc.journal!.nics.join(', ')} and died during "${journal.state.phase}".`,
        journal.state.phase === 'ready'
          ? 'The VM may still have its network: start `podtap up` again with the same options to adopt it, or run `podtap down` to restore the pod.'
          : 'The pod is half set up: run `podtap down` to restore it.',
      );
    else if (why) lines.push(why);
    else lines.push(`Nothing is set up: no journal in ${opts.stateDir}.`);
    process.stdout.write(lines.join('\n') + '\n');
  }
  return 1;
}

function readyFile(opts: Options): string {
  return join(opts.stateDir, 'ready');
}

function signalNumber(sig: NodeJS.Signals): number {
  return constants.signals[sig] ?? 0;
}

export async function main(argv: string[]): Promise<number> {
  let log: Logger = createLogger('text');
  try {
    const parsed = parseOptions(argv);
    if (parsed.command === 'help') {
      process.stdout.write(helpText());
      return 0;
    }
    if (parsed.command === 'version') {
      process.stdout.write(`podtap ${VERSION}\n`);
      return 0;
    }
    const opts = parsed.options;
    log = createLogger(opts.logFormat, opts.logLevel);
    switch (parsed.command) {
      case 'inspect':
        return await inspect(opts);
      case 'up':
      case 'run':
        return await upOrRun(parsed.command, opts, parsed.vmm, log);
      case 'down': {
        const result = await down(opts, log, parseFault(process.env.PODTAP_FAULT));
        log('info', result === 'nothing' ? `nothing to restore: no journal in ${opts.stateDir}` : restoredMessage(result));
        return 0;
      }
      case 'exec': {
        const { execFromSocket } = await import('./handoff/exec.ts');
        return await execFromSocket(opts, parsed.vmm, log);
      }
      case 'status':
        return await status(opts);
    }
  } catch (e) {
    if (e instanceof PodtapError) {
      log('error', e.describe());
      return e.exitCode;
    }
    log('error', `internal error: ${(e as Error).stack ?? e}`);
    return 70;
  }
}

