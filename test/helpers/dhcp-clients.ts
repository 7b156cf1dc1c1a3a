// The three real DHCP clients (busybox udhcpc, ISC dhclient, dhcpcd) in a
// guest namespace behind the real podtap (test/helpers/guest-ns.ts), each
// with the scripts a guest distribution would run, contained:
//
//   dhclient  the real /sbin/dhclient-script with its enter and exit hooks
//             (rfc3442-classless-routes, timesyncd, debug)
//   dhcpcd    the real dhcpcd-run-hooks (20-resolv.conf, 30-hostname, the
//             NTP hooks)
//   udhcpc    busybox ships no script on Debian; ours does what the usual
//             default.script does: address, MTU, routes, resolv.conf,
//             hostname
//
// Each script is wrapped so that, after the real one has run, it prints the
// event, every variable it was handed, and the guest's hostname afterwards,
// between "EVENT x" and "END x" (events() reads that back).
//
// What the scripts would do to the machine, and how it is kept in the guest:
//   - /etc/resolv.conf: dhclient-script writes a temporary file *next to it*
//     (/etc/resolv.conf.dhclient-new.PID) and copies it over; dhcpcd's hook
//     writes it in place. `ip netns exec` only bind-mounts the file, so the
//     temporary file would land in the machine's /etc. Each client runs in a
//     private mount namespace with an overlay over /etc whose upper layer is
//     a scratch directory: every write to /etc lands there (the test reads
//     the guest's resolv.conf from it) and the machine's /etc is untouched.
//   - the hostname: set with `hostname` or /proc/sys/kernel/hostname, both
//     per UTS namespace; guest-ns gives every command its own, and the
//     wrapper sets it to "localhost" first, which is what makes both scripts
//     set the one from DHCP.
//   - /run: the timesyncd hooks write /run/systemd/timesyncd.conf.d and call
//     systemctl when /run/systemd/system exists; dhcpcd keeps its pid file,
//     control socket and resolv.conf pieces under /run/dhcpcd. A tmpfs over
//     /run hides the machine's (so no systemctl) and takes those files.
//   - leases: dhclient gets -lf/-pf in the scratch directory; tmpfs over
//     /var/lib/dhcp and /var/lib/dhcpcd takes anything else.
//
// startContained() runs any other client invocation the same way (the IPv6
// clients in test/ns/ipv6-clients.test.ts), with reportingScript() around
// its real script.

import { execa } from 'execa';
import { execFileSync } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { HELPER_MARK, killPid, pidsIn, processStartTime, type Cleanup } from './netns.ts';
import { UDHCPC_ROUTES, type GuestNs } from './guest-ns.ts';

export type ClientName = 'udhcpc' | 'dhclient' | 'dhcpcd';
export const CLIENTS: readonly ClientName[] = ['udhcpc', 'dhclient', 'dhcpcd'];

/** Prints the event and what the script was given, then the state the script left. */
const REPORT = `report() {
  echo "EVENT $1"
  env | grep -v -E '^(PATH|PWD|SHLVL|_|HOME|TERM|LANG|${HELPER_MARK})=' | sort | sed 's/^/  /'
  echo "  GUEST_HOSTNAME=$(hostname)"
  echo "END $1"
}
`;

// udhcpc leaves all configuring to its script.
const UDHCPC_SCRIPT = `#!/bin/sh
${REPORT}
ev=$1
case "$ev" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up ;;
  bound|renew)
    ip addr replace "$ip/$mask" dev "$interface" \${broadcast:+broadcast $broadcast}
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
${UDHCPC_ROUTES.replace(/^/gm, '    ')}
    {
      [ -n "$search" ] && echo "search $search" || { [ -n "$domain" ] && echo "search $domain"; }
      for ns in $dns; do echo "nameserver $ns"; done
    } > /etc/resolv.conf
    [ -n "$hostname" ] && hostname "$hostname" ;;
esac
report "$ev"
`;

/** A client script that runs the real one, `real`, then prints the report for the event ($reason). */
export function reportingScript(real: string): string {
  return `#!/bin/sh
${REPORT}
${real} "$@"
rc=$?
report "$reason"
exit $rc
`;
}

const DHCLIENT_WRAPPER = reportingScript('/sbin/dhclient-script');
const DHCPCD_WRAPPER = reportingScript('/usr/lib/dhcpcd/dhcpcd-run-hooks');

// dhclient hands option 121 to its script as decimal bytes only when the
// option is declared.
const DHCLIENT_CONF = `option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
request subnet-mask, broadcast-address, routers, domain-name-servers, domain-name,
  domain-search, host-name, interface-mtu, rfc3442-classless-static-routes,
  dhcp-lease-time, dhcp-renewal-time, dhcp-rebinding-time;
`;

const DHCPCD_CONF = `ipv4only
noarp
noipv4ll
option subnet_mask, routers, domain_name_servers, domain_name, domain_search, host_name, interface_mtu, broadcast_address, classless_static_routes
`;

/**
 * Runs "$@" in a private mount namespace with /etc overlaid (upper layer
 * $1/etc-upper) and /run, /var/lib/dhcp, /var/lib/dhcpcd on tmpfs, after
 * naming the guest "localhost" in its own UTS namespace.
 */
const CONTAIN = `set -e
dir=$1; shift
hostname localhost
exec unshare --mount --propagation private -- sh -c '
  set -e
  dir=$1; shift
  mount -t overlay overlay -o lowerdir=/etc,upperdir=$dir/etc-upper,workdir=$dir/etc-work /etc
  mount -t tmpfs tmpfs /run
  for d in /var/lib/dhcp /var/lib/dhcpcd; do [ -d $d ] && mount -t tmpfs tmpfs $d; done
  exec "$@"
' contain "$dir" "$@"
`;

export interface ClientOptions {
  /** Extra arguments (udhcpc: e.g. -n -t 3). */
  args?: string[];
  /** A dhclient lease file to start from, as after a reboot. */
  leases?: string;
}

/** A process started contained in the guest (startContained); output is stdout and stderr together. */
export interface ContainedProc<N extends string = string> {
  readonly name: N;
  /** Where its contained files live; `${dir}/etc-upper` holds whatever it wrote to /etc. */
  readonly dir: string;
  out(): string;
  /** Resolves when `test` holds for the output; rejects on exit or timeout. */
  waitFor(test: (out: string) => boolean, ms: number, what: string): Promise<void>;
  /** The exit status once it has exited by itself. */
  exited: Promise<number>;
  /** SIGTERM, then SIGKILL; resolves once it has gone. */
  stop(): Promise<void>;
}

/** A DHCP client started in the guest. */
export type ClientProc = ContainedProc<ClientName>;

let serial = 0;

/**
 * Starts `argv(dir)` in the guest, contained (CONTAIN), with its own
 * directory `dir` under `scratch` (a directory of the test's own) holding
 * `files` (the one named "script" executable). `name` names the directory
 * and the process in errors.
 */
export async function startContained<N extends string>(
  g: GuestNs,
  name: N,
  scratch: string,
  files: Record<string, string>,
  argv: (dir: string) => string[],
  cleanup: Cleanup,
): Promise<ContainedProc<N>> {
  const dir = join(scratch, `${name}-${++serial}`);
  await mkdir(join(dir, 'etc-upper'), { recursive: true });
  await mkdir(join(dir, 'etc-work'), { recursive: true });
  for (const [f, text] of Object.entries(files)) await writeFile(join(dir, f), text, { mode: f === 'script' ? 0o755 : 0o644 });
  const command = argv(dir);
  const [file0, ...args] = g.argv(['sh', '-c', CONTAIN, 'contain', dir, ...command]);
  const proc = execa(file0!, args, {
    reject: false,
    stdin: 'ignore',
    all: true,
    env: { [HELPER_MARK]: '1', PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' },
    extendEnv: false,
  });
  const pid = proc.pid!;
  const start = processStartTime(pid);
  const unregister = cleanup.pid(pid);
  let out = '';
  let code: number | undefined;
  const waiters = new Set<() => void>();
  proc.all?.on('data', (d: Buffer) => {
    out += d.toString();
    for (const w of [...waiters]) w();
  });
  const exited = proc.then((r) => {
    code = r.exitCode ?? 128;
    unregister();
    for (const w of [...waiters]) w();
    return code;
  });
  const gone = (ms: number): Promise<boolean> => Promise.race([exited.then(() => true), sleep(ms, false)]);
  return {
    name,
    dir,
    out: () => out,
    exited,
    waitFor(test, ms, what) {
      return new Promise((resolve, reject) => {
        const check = () => {
          if (test(out)) finish();
          else if (code !== undefined) finish(new Error(`${name} exited (${code}) before ${what}; output:\n${out.slice(-8000)}`));
        };
        const finish = (err?: Error) => {
          clearTimeout(timer);
          waiters.delete(check);
          if (err) reject(err);
          else resolve();
        };
        const timer = setTimeout(() => finish(new Error(`no ${what} from ${name} within ${ms} ms; output:\n${out.slice(-8000)}`)), ms);
        waiters.add(check);
        check();
      });
    },
    async stop() {
      await killPid(pid, start, 5000);
      // dhcpcd's privilege-separated helpers are its children: should one
      // outlive the main process it keeps the output pipe open. They are
      // this client's, in this guest, so end them by pid.
      if (!(await gone(5000))) {
        const left = await leftovers(g.ns, basename(command[0]!));
        await Promise.all(left.map((p) => killPid(p, processStartTime(p))));
        if (!(await gone(5000))) throw new Error(`${name} will not go (left: ${left.join(' ')})`);
      }
    },
  };
}

/** Pids of the processes named `comm` in the guest's namespace. */
async function leftovers(ns: string, comm: string): Promise<number[]> {
  const out: number[] = [];
  for (const p of await pidsIn(ns)) {
    const c = await readFile(`/proc/${p}/comm`, 'utf8').catch(() => '');
    if (c.trim() === comm) out.push(p);
  }
  return out;
}

/** Starts `name` on the guest's eth0; `scratch` is a directory of the test's own. */
export async function startClient(g: GuestNs, name: ClientName, scratch: string, cleanup: Cleanup, opts: ClientOptions = {}): Promise<ClientProc> {
  let files: Record<string, string>;
  let argv: (dir: string) => string[];
  switch (name) {
    case 'udhcpc':
      files = { script: UDHCPC_SCRIPT };
      argv = (dir) => ['busybox', 'udhcpc', '-f', '-i', 'eth0', '-s', join(dir, 'script'), '-O', 'staticroutes', '-O', 'search', '-O', 'mtu', ...(opts.args ?? [])];
      break;
    case 'dhclient':
      files = { 'dhclient.conf': DHCLIENT_CONF, script: DHCLIENT_WRAPPER, ...(opts.leases !== undefined ? { leases: opts.leases } : {}) };
      argv = (dir) => ['dhclient', '-d', '-v', '-4', '-cf', join(dir, 'dhclient.conf'), '-sf', join(dir, 'script'), '-lf', join(dir, 'leases'), '-pf', join(dir, 'pid'), 'eth0'];
      break;
    case 'dhcpcd':
      files = { 'dhcpcd.conf': DHCPCD_CONF, script: DHCPCD_WRAPPER };
      argv = (dir) => ['dhcpcd', '-B', '-d', '-f', join(dir, 'dhcpcd.conf'), '-c', join(dir, 'script'), 'eth0'];
      break;
  }
  return startContained(g, name, scratch, files, argv, cleanup);
}

/** What the client wrote to the guest's /etc/resolv.conf, if anything. */
export async function writtenResolvConf(c: { dir: string }): Promise<string | undefined> {
  try {
    return await readFile(join(c.dir, 'etc-upper', 'resolv.conf'), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

export interface ClientEvent {
  event: string;
  vars: Record<string, string>;
}

/** The complete "EVENT x" ... "END x" blocks the scripts print, with their variables. */
export function events(out: string): ClientEvent[] {
  const list: ClientEvent[] = [];
  let open: ClientEvent | undefined;
  for (const line of out.split('\n')) {
    const ev = /^EVENT (\S+)$/.exec(line);
    if (ev) {
      open = { event: ev[1]!, vars: {} };
      continue;
    }
    if (open && line === `END ${open.event}`) {
      list.push(open);
      open = undefined;
      continue;
    }
    const kv = /^ {2}([A-Za-z0-9_]+)=(.*)$/.exec(line);
    if (kv && open) open.vars[kv[1]!] = kv[2]!;
  }
  return list;
}

/** What a client says it was given, in one shape for all three. */
export interface Reported {
  ip: string;
  prefix: number;
  routes: { dst: string; gateway: string }[];
  router?: string;
  dns: string[];
  domain?: string;
  search: string[];
  hostname?: string;
  mtu?: number;
  broadcast?: string;
  serverId?: string;
  lease?: number;
}

function prefixOf(mask: string): number {
  return mask.split('.').reduce((n, o) => n + (Number(o) >>> 0).toString(2).replace(/0/g, '').length, 0);
}

const words = (s: string | undefined) => (s ?? '').split(/\s+/).filter(Boolean);

/** "dst/len gw dst/len gw ..." as udhcpc and dhcpcd print option 121. */
function pairRoutes(s: string | undefined): { dst: string; gateway: string }[] {
  const w = words(s);
  const out: { dst: string; gateway: string }[] = [];
  for (let i = 0; i + 1 < w.length; i += 2) out.push({ dst: w[i]!, gateway: w[i + 1]! });
  return out;
}

/** dhclient's decimal bytes, decoded independently of the server's codec. */
function byteRoutes(s: string | undefined): { dst: string; gateway: string }[] {
  const b = words(s).map(Number);
  const out: { dst: string; gateway: string }[] = [];
  let i = 0;
  while (i < b.length) {
    const width = b[i++]!;
    const n = Math.ceil(width / 8);
    const d = [0, 0, 0, 0].map((_, k) => (k < n ? b[i + k]! : 0));
    i += n;
    out.push({ dst: `${d.join('.')}/${width}`, gateway: b.slice(i, i + 4).join('.') });
    i += 4;
  }
  return out;
}

const num = (s: string | undefined) => (s === undefined ? undefined : Number(s));
const strip = (o: Reported): Reported => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as unknown as Reported;
const undot = (s: string) => s.replace(/\.$/, '');

export function reported(client: ClientName, v: Record<string, string>): Reported {
  switch (client) {
    case 'udhcpc':
      return strip({
        ip: v.ip ?? '',
        prefix: Number(v.mask),
        routes: pairRoutes(v.staticroutes),
        router: v.router,
        dns: words(v.dns),
        domain: v.domain,
        search: words(v.search),
        hostname: v.hostname,
        mtu: num(v.mtu),
        broadcast: v.broadcast,
        serverId: v.serverid,
        lease: num(v.lease),
      });
    case 'dhclient':
      return strip({
        ip: v.new_ip_address ?? '',
        prefix: prefixOf(v.new_subnet_mask ?? ''),
        routes: byteRoutes(v.new_rfc3442_classless_static_routes),
        router: v.new_routers,
        dns: words(v.new_domain_name_servers),
        domain: v.new_domain_name,
        search: words(v.new_domain_search).map(undot),
        hostname: v.new_host_name,
        mtu: num(v.new_interface_mtu),
        broadcast: v.new_broadcast_address,
        serverId: v.new_dhcp_server_identifier,
        lease: num(v.new_dhcp_lease_time),
      });
    case 'dhcpcd':
      return strip({
        ip: v.new_ip_address ?? '',
        prefix: Number(v.new_subnet_cidr),
        routes: pairRoutes(v.new_classless_static_routes),
        router: v.new_routers,
        dns: words(v.new_domain_name_servers),
        domain: v.new_domain_name,
        search: words(v.new_domain_search),
        hostname: v.new_host_name,
        mtu: num(v.new_interface_mtu),
        broadcast: v.new_broadcast_address,
        serverId: v.new_dhcp_server_identifier,
        lease: num(v.new_dhcp_lease_time),
      });
  }
}

/** The event names each client's script gets for a first lease and a renewal. */
export const BOUND_EVENT: Record<ClientName, string> = { udhcpc: 'bound', dhclient: 'BOUND', dhcpcd: 'BOUND' };
export const RENEW_EVENT: Record<ClientName, string> = { udhcpc: 'renew', dhclient: 'RENEW', dhcpcd: 'RENEW' };

/** Clients whose binary is missing (test/install.sh installs them all). */
export function missingClients(): ClientName[] {
  const have = (cmd: string, args: string[], test: (out: string) => boolean = () => true): boolean => {
    try {
      return test(execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }));
    } catch {
      return false;
    }
  };
  const missing: ClientName[] = [];
  if (!have('busybox', ['--list'], (o) => o.split('\n').includes('udhcpc'))) missing.push('udhcpc');
  if (!have('dhclient', ['--version'])) missing.push('dhclient');
  if (!have('dhcpcd', ['--version'])) missing.push('dhcpcd');
  return missing;
}
