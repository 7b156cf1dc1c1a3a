// The command line: parse, dispatch, and turn every error into one message
// and an exit status. Logs go to stderr; stdout carries only JSON meant for
// programs (inspect's report, the ready line).

import { spawn } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { constants } from 'node:os';
import { PodtapError } from './errors.ts';
import { parseFault } from './journal/apply.ts';
import { createLogger, type Logger } from './log.ts';
import { parseOptions, SPECS, type Options } from './options.ts';
import { discover } from './pod/discover.ts';
import { primaryIpv4 } from './plan/plan.ts';
import { down, setUp, StoppedBeforeSetup, tearDown, type Session } from './lifecycle.ts';
import { checkVmmArgv, serve, type Serving } from './serve/serve.ts';

export const VERSION = '0.1.0';

function helpText(): string {
  const lines = [
    'podtap: give a VM inside a pod the pod\'s own network',
    '',
    'usage:',
    '  podtap inspect [--interface IF]        print what podtap found, as JSON; changes nothing',
    '  podtap up [options]                    set up br0 + tap0 + DHCP, print a ready line, serve until SIGTERM',
    '  podtap run [options] -- VMM ARGS...    like up, then spawn the VMM with the TAP fds at 3, 4, ...',
    '  podtap down [--state-dir DIR]          restore the namespace from the journal (after a crash)',
    '  podtap exec --fd-socket PATH -- VMM... fetch the TAP fds from `up --fd-socket` and exec the VMM',
    '',
    'VMM argument placeholders: {fd} {fds} {fds_csv} {mac} {mtu} {tap} {bridge} {queues} {vectors} {ch_queues}',
    '',
    'options (each also as an environment variable):',
  ];
  for (const s of SPECS) {
    const flag = `--${s.flag}${s.valueName ? ' ' + s.valueName : ''}`;
    lines.push(`  ${flag.padEnd(28)} ${s.env.padEnd(24)} ${s.help}`);
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

async function inspect(opts: Options): Promise<number> {
  const { pod } = await discover({ ...(opts.interface ? { interface: opts.interface } : {}), resolvConf: opts.resolvConf, resolvConfRequired: opts.resolvConf !== '/etc/resolv.conf' });
  const v4 = primaryIpv4(pod.addresses);
  const report = {
    interface: pod.link.name,
    mac: pod.link.mac,
    mtu: pod.link.mtu,
    vm: v4 ? { mac: pod.link.mac, ip: `${v4.local}/${v4.prefixlen}` } : null,
    ipv4: pod.addresses.filter((a) => a.family === 'inet'),
    ipv6: pod.addresses.filter((a) => a.family === 'inet6'),
    routes: pod.routes,
    neighbours: pod.neighbours,
    dns: pod.dns,
    hostname: pod.hostname,
    sysctls: pod.sysctls,
  };
  process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  return 0;
}

/** up and run share everything up to the hand-over. */
async function upOrRun(command: 'up' | 'run', opts: Options, vmm: string[], log: Logger): Promise<number> {
  const fault = parseFault(process.env.PODTAP_FAULT);
  // A typo in a placeholder is refused now, not after the namespace was set up.
  if (command === 'run') checkVmmArgv(vmm, opts);
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
      session = await setUp(opts, log, fault, { stopRequested: () => stop !== undefined });
    } catch (e) {
      if (!(e instanceof StoppedBeforeSetup)) throw e;
      log('info', `${stop}: stopped before anything was changed`);
    }
    if (session && !stop) {
      serving = await serve(session, opts, log);
      const ready = {
        event: 'ready',
        mac: session.vm.mac,
        ip: session.vm.ip,
        ...(session.vm.gateway ? { gateway: session.vm.gateway } : {}),
        mtu: session.vm.mtu,
        bridge: opts.bridge,
        tap: opts.tap,
        queues: opts.queues,
        linkLocal: session.linkLocal,
        steps: session.journal.state.steps.length,
        adopted: session.adopted,
        ...serving.readyFields,
        timings: Object.fromEntries(Object.entries(session.timings).map(([k, v]) => [k, Math.round(v * 100) / 100])),
      };
      process.stdout.write(JSON.stringify(ready) + '\n');
      // For readiness probes: present exactly while the VM's network is up.
      writeFileSync(readyFile(opts), JSON.stringify(ready) + '\n');
      log('info', 'ready', { vm: session.vm.ip, mac: session.vm.mac, adopted: session.adopted });
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
    try {
      if (session) rmSync(readyFile(opts), { force: true });
      if (serving) await serving.close();
      if (session) {
        await tearDown(session.journal, log, fault);
        log('info', 'namespace restored');
      }
    } finally {
      session?.lock.release();
      unhook();
    }
  }
  return exitCode;
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
        log('info', result === 'nothing' ? `nothing to restore: no journal in ${opts.stateDir}` : 'namespace restored');
        return 0;
      }
      case 'exec': {
        const { execFromSocket } = await import('./handoff/exec.ts');
        return await execFromSocket(opts, parsed.vmm, log);
      }
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

