// Options come from flags or PODTAP_* environment variables (flags win), so a
// container spec can configure podtap without arguments. Everything is checked
// here, before anything touches the namespace: a bad value is refused with
// the value, what would be accepted, and where it came from.

import { usage } from './errors.ts';
import { contains, formatIpv4, parseIfaceCidr, parseIpv4 } from './net/ipv4.ts';
import { IFNAME_RULE, validIfname } from './net/names.ts';
import { DATAPATHS, type Datapath } from './plan/datapath/index.ts';

export type Command = 'inspect' | 'up' | 'run' | 'down' | 'exec' | 'status';

export interface Options {
  /** Pod interfaces in the VM's NIC order; undefined = the only candidate. */
  interfaces?: string[];
  datapath?: Datapath;
  force: boolean;
  bridge: string;
  tap: string;
  queues: number;
  stateDir: string;
  tapOwner?: { uid: number; gid?: number };
  logFormat: 'text' | 'json';
  logLevel: 'debug' | 'info' | 'warn' | 'error';
  linkLocal: string; // CIDR on the bridge, also the DHCP server identifier
  leaseTime: number;
  dhcp: boolean;
  antispoof: boolean;
  qmp?: string;
  qmpBus?: string[]; // one per NIC, in NIC order
  chApi?: string;
  fdSocket?: string;
  fdSocketMode: number;
  persistTap: boolean;
  resolvConf: string;
  /** Ports of the VM reachable at 127.0.0.1:PORT in the pod namespace (kubectl port-forward, exec probes). */
  forwardPorts: { port: number; proto: 'tcp' | 'udp' }[];
  statusSocket?: string;
  json: boolean;
}

interface Spec {
  flag: string; // long flag without dashes
  env: string;
  boolean?: boolean;
  /** May be given several times (and as a comma list in the environment); the values accumulate. */
  repeatable?: boolean;
  commands: Command[];
  help: string;
  valueName?: string;
}

const SETUP: Command[] = ['up', 'run'];
const ALL: Command[] = ['inspect', 'up', 'run', 'down', 'exec', 'status'];

export const SPECS: Spec[] = [
  { flag: 'interface', env: 'PODTAP_INTERFACE', repeatable: true, commands: ['inspect', ...SETUP], valueName: 'IF', help: "a pod interface to give the VM; repeat for several NICs, in NIC order (env: comma list; default: the only veth or macvlan)" },
  { flag: 'datapath', env: 'PODTAP_DATAPATH', commands: SETUP, valueName: 'bridge|redirect', help: 'how frames get between pod interface and tap (default: redirect where the kernel can, bridge otherwise; macvlan needs redirect)' },
  { flag: 'force', env: 'PODTAP_FORCE', boolean: true, commands: ['inspect', ...SETUP], help: "take over interfaces no CNI plugin creates (a host NIC), even in the host's network namespace" },
  { flag: 'bridge', env: 'PODTAP_BRIDGE', commands: SETUP, valueName: 'NAME', help: 'bridge for NIC 0 with --datapath bridge (default br0; NIC i counts on: br1, ...)' },
  { flag: 'tap', env: 'PODTAP_TAP', commands: SETUP, valueName: 'NAME', help: 'tap for NIC 0 (default tap0; NIC i counts on: tap1, ...)' },
  { flag: 'queues', env: 'PODTAP_QUEUES', commands: SETUP, valueName: 'N', help: 'queues per TAP, one fd each; >1 uses IFF_MULTI_QUEUE (default 1, max 256)' },
  { flag: 'state-dir', env: 'PODTAP_STATE_DIR', commands: ['up', 'run', 'down', 'status'], valueName: 'DIR', help: 'where the journal lives (default /run/podtap)' },
  { flag: 'forward-port', env: 'PODTAP_FORWARD_PORTS', repeatable: true, commands: SETUP, valueName: 'PORT[/tcp|/udp]', help: "make 127.0.0.1:PORT in the pod namespace reach the VM's PORT (kubectl port-forward, exec probes); repeatable" },
  { flag: 'status-socket', env: 'PODTAP_STATUS_SOCKET', commands: ['up', 'run', 'status'], valueName: 'PATH', help: 'where podtap answers `podtap status` (default STATE_DIR/status.sock; put it in a volume shared with the VMM container to ask from there)' },
  { flag: 'json', env: 'PODTAP_STATUS_JSON', boolean: true, commands: ['status'], help: 'status as JSON, for programs' },
  { flag: 'tap-owner', env: 'PODTAP_TAP_OWNER', commands: SETUP, valueName: 'UID[:GID]', help: 'owner of the tap, for a VMM that runs as another user' },
  { flag: 'log-format', env: 'PODTAP_LOG_FORMAT', commands: ALL, valueName: 'text|json', help: 'log format on stderr (default text)' },
  { flag: 'log-level', env: 'PODTAP_LOG_LEVEL', commands: ALL, valueName: 'LEVEL', help: 'debug, info, warn or error (default info)' },
  { flag: 'link-local', env: 'PODTAP_LINK_LOCAL', commands: SETUP, valueName: 'CIDR', help: 'DHCPv4 server identifier, and podtap\'s own address towards the VM for --forward-port (default 169.254.75.1/32)' },
  { flag: 'lease-time', env: 'PODTAP_LEASE_TIME', commands: SETUP, valueName: 'SECONDS', help: 'DHCP lease time (default 3600; renewals are answered)' },
  { flag: 'no-dhcp', env: 'PODTAP_NO_DHCP', boolean: true, commands: SETUP, help: 'serve no DHCPv4, router advertisements or DHCPv6 (the guest is configured some other way)' },
  { flag: 'no-antispoof', env: 'PODTAP_NO_ANTISPOOF', boolean: true, commands: SETUP, help: "let the guest send from any MAC or address (default: only the pod's; the ethertype allow-list and the DHCP/router guard stay)" },
  { flag: 'qmp', env: 'PODTAP_QMP', commands: ['up'], valueName: 'PATH', help: 'hot-plug the NICs into a running QEMU through this QMP socket' },
  { flag: 'qmp-bus', env: 'PODTAP_QMP_BUS', repeatable: true, commands: ['up'], valueName: 'BUS', help: 'hot-pluggable bus for a NIC (q35: a pcie-root-port id); repeat for several NICs, in NIC order' },
  { flag: 'ch-api', env: 'PODTAP_CH_API', commands: ['up'], valueName: 'PATH', help: 'hot-plug the NICs into a running Cloud Hypervisor through this API socket' },
  { flag: 'fd-socket', env: 'PODTAP_FD_SOCKET', commands: ['up', 'exec'], valueName: 'PATH', help: 'serve (up) or fetch (exec) the TAP fds on this Unix socket' },
  { flag: 'fd-socket-mode', env: 'PODTAP_FD_SOCKET_MODE', commands: ['up'], valueName: 'MODE', help: 'permissions of the fd socket, octal (default 0600)' },
  { flag: 'persist-tap', env: 'PODTAP_PERSIST_TAP', boolean: true, commands: ['up'], help: 'make persistent single-queue taps (one per NIC) a VMM opens by name (Firecracker)' },
  { flag: 'resolv-conf', env: 'PODTAP_RESOLV_CONF', commands: ['inspect', ...SETUP], valueName: 'PATH', help: 'resolver file to hand to the guest (default /etc/resolv.conf)' },
];

export interface Parsed {
  command: Command | 'help' | 'version';
  options: Options;
  vmm: string[]; // after `--` for run and exec
}

export { validIfname };

function truthy(raw: string, where: string): boolean {
  if (/^(1|true|yes|on)$/i.test(raw)) return true;
  if (/^(0|false|no|off|)$/i.test(raw)) return false;
  throw usage(`${where} is ${JSON.stringify(raw)}, which is not a boolean`, 'use 1/true/yes or 0/false/no');
}

function int(raw: string, where: string, min: number, max: number, what: string): number {
  if (!/^\d+$/.test(raw)) throw usage(`${where} is ${JSON.stringify(raw)}, not a whole number`, `give ${what} from ${min} to ${max}`);
  const n = Number(raw);
  if (n < min || n > max) throw usage(`${where} is ${raw}, out of range`, `give ${what} from ${min} to ${max}`);
  return n;
}

/** Parses argv (without node and script) and the environment; throws PodtapError('usage') on anything wrong. */
export function parseOptions(argv: string[], env: NodeJS.ProcessEnv = process.env): Parsed {
  const dash = argv.indexOf('--');
  const head = dash < 0 ? argv : argv.slice(0, dash);
  const vmm = dash < 0 ? [] : argv.slice(dash + 1);
  const raw = new Map<string, { values: string[]; where: string }>();
  const give = (spec: Spec, value: string, where: string) => {
    const had = raw.get(spec.flag);
    if (had && !spec.repeatable) throw usage(`--${spec.flag} is given twice (${had.where} and ${where})`, `give --${spec.flag} once`);
    if (had) had.values.push(value);
    else raw.set(spec.flag, { values: [value], where });
  };
  let command: Command | undefined;

  for (let i = 0; i < head.length; i++) {
    const arg = head[i]!;
    if (arg === '--help' || arg === '-h') return { command: 'help', options: defaults(), vmm: [] };
    if (arg === '--version' || arg === '-V') return { command: 'version', options: defaults(), vmm: [] };
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      const name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
      const spec = SPECS.find((s) => s.flag === name);
      if (!spec) throw usage(`unknown option --${name}`, `run \`podtap --help\` for the options`);
      if (spec.boolean) {
        if (eq >= 0) throw usage(`--${name} takes no value`, `write --${name} alone`);
        give(spec, '1', `--${name}`);
      } else {
        let value: string | undefined = eq < 0 ? head[++i] : arg.slice(eq + 1);
        if (value === undefined) throw usage(`--${name} needs a value`, `write --${name} ${spec.valueName ?? 'VALUE'}`);
        give(spec, value, `--${name}`);
      }
      continue;
    }
    if (command === undefined && (ALL as string[]).includes(arg)) {
      command = arg as Command;
      continue;
    }
    throw usage(`unexpected argument ${JSON.stringify(arg)}`, command === 'run' || command === 'exec' ? 'put the VMM command after `--`' : 'commands are inspect, up, run, down, exec and status');
  }
  if (!command) throw usage('no command given', 'use one of: podtap inspect | up | run -- VMM... | down | exec -- VMM... | status');

  for (const spec of SPECS) {
    if (raw.has(spec.flag)) {
      if (!spec.commands.includes(command)) throw usage(`--${spec.flag} does not apply to \`podtap ${command}\``, `it is for: ${spec.commands.join(', ')}`);
      continue;
    }
    const fromEnv = env[spec.env];
    // Environment variables are shared by every command of a container, so an
    // option that doesn't apply to this command is simply ignored.
    if (fromEnv !== undefined && spec.commands.includes(command))
      raw.set(spec.flag, { values: spec.repeatable ? fromEnv.split(',').map((v) => v.trim()) : [fromEnv], where: spec.env });
  }

  if ((command === 'run' || command === 'exec') && vmm.length === 0) throw usage(`\`podtap ${command}\` needs a VMM command`, `write: podtap ${command} [options] -- qemu-system-x86_64 ...`);
  if (command !== 'run' && command !== 'exec' && dash >= 0) throw usage(`\`podtap ${command}\` takes no command after --`, 'use `podtap run -- VMM...` to spawn a VMM');

  const o = defaults();
  for (const [flag, { values, where }] of raw) for (const value of values) apply(o, flag, value, where);
  crossCheck(o, command, raw);
  return { command, options: o, vmm };
}

export function defaults(): Options {
  return {
    bridge: 'br0',
    tap: 'tap0',
    queues: 1,
    stateDir: '/run/podtap',
    logFormat: 'text',
    logLevel: 'info',
    linkLocal: '169.254.75.1/32',
    leaseTime: 3600,
    dhcp: true,
    antispoof: true,
    fdSocketMode: 0o600,
    persistTap: false,
    resolvConf: '/etc/resolv.conf',
    force: false,
    forwardPorts: [],
    json: false,
  };
}

function ifname(value: string, where: string): string {
  if (!validIfname(value))
    throw usage(`${where} is ${JSON.stringify(value)}, not a valid interface name`, IFNAME_RULE);
  return value;
}

function path(value: string, where: string): string {
  if (value === '' || value.includes('\0')) throw usage(`${where} is empty or not a path`, 'give a file system path');
  return value;
}

function apply(o: Options, flag: string, value: string, where: string): void {
  switch (flag) {
    case 'interface': {
      const name = ifname(value, where);
      if (o.interfaces?.includes(name)) throw usage(`${where} names ${name} twice`, "name each pod interface once; the order is the VM's NIC order");
      (o.interfaces ??= []).push(name);
      break;
    }
    case 'datapath':
      if (!(DATAPATHS as string[]).includes(value)) throw usage(`${where} is ${JSON.stringify(value)}, not a data path`, `use ${DATAPATHS.join(' or ')}`);
      o.datapath = value as Datapath;
      break;
    case 'force': o.force = truthy(value, where); break;
    case 'bridge': o.bridge = ifname(value, where); break;
    case 'tap': o.tap = ifname(value, where); break;
    case 'queues': o.queues = int(value, where, 1, 256, 'a queue count'); break;
    case 'state-dir': o.stateDir = path(value, where); break;
    case 'tap-owner': {
      const m = /^(\d+)(?::(\d+))?$/.exec(value);
      if (!m) throw usage(`${where} is ${JSON.stringify(value)}, not UID or UID:GID`, 'give numeric ids, e.g. 107 or 107:107');
      o.tapOwner = { uid: int(m[1]!, where, 0, 4294967294, 'a uid'), ...(m[2] ? { gid: int(m[2], where, 0, 4294967294, 'a gid') } : {}) };
      break;
    }
    case 'log-format':
      if (value !== 'text' && value !== 'json') throw usage(`${where} is ${JSON.stringify(value)}, not a log format`, 'use text or json');
      o.logFormat = value;
      break;
    case 'log-level':
      if (!['debug', 'info', 'warn', 'error'].includes(value)) throw usage(`${where} is ${JSON.stringify(value)}, not a log level`, 'use debug, info, warn or error');
      o.logLevel = value as Options['logLevel'];
      break;
    case 'link-local': o.linkLocal = linkLocal(value, where); break;
    case 'lease-time': o.leaseTime = int(value, where, 10, 365 * 86400, 'seconds'); break;
    case 'no-dhcp': o.dhcp = !truthy(value, where); break;
    case 'no-antispoof': o.antispoof = !truthy(value, where); break;
    case 'qmp': o.qmp = path(value, where); break;
    case 'qmp-bus':
      if (!/^[A-Za-z][A-Za-z0-9_.-]*$/.test(value)) throw usage(`${where} is ${JSON.stringify(value)}, not a QEMU device id`, 'give the id of a pcie-root-port or pci-bridge, e.g. rp1');
      (o.qmpBus ??= []).push(value);
      break;
    case 'ch-api': o.chApi = path(value, where); break;
    case 'fd-socket': o.fdSocket = path(value, where); break;
    case 'fd-socket-mode':
      if (!/^0?[0-7]{3}$/.test(value)) throw usage(`${where} is ${JSON.stringify(value)}, not an octal mode`, 'use e.g. 0600 or 0660');
      o.fdSocketMode = parseInt(value, 8);
      break;
    case 'persist-tap': o.persistTap = truthy(value, where); break;
    case 'resolv-conf': o.resolvConf = path(value, where); break;
    case 'forward-port': {
      const m = /^(\d{1,5})(?:\/(tcp|udp))?$/.exec(value);
      if (!m) throw usage(`${where} is ${JSON.stringify(value)}, not PORT[/tcp|/udp]`, 'give a port number, e.g. 8080 or 53/udp');
      const port = int(m[1]!, where, 1, 65535, 'a port');
      const proto = (m[2] ?? 'tcp') as 'tcp' | 'udp';
      if (o.forwardPorts.some((f) => f.port === port && f.proto === proto)) throw usage(`${where} gives ${port}/${proto} twice`, 'give each port once');
      o.forwardPorts.push({ port, proto });
      break;
    }
    case 'status-socket': o.statusSocket = path(value, where); break;
    case 'json': o.json = truthy(value, where); break;
  }
}

// 169.254.1.1 is the Calico-style gateway and 169.254.169.254 the cloud
// metadata address: the guest must still reach both through the pod's routes.
const RESERVED_LL = ['169.254.1.1', '169.254.169.254'];

const LINK_LOCAL_NET = parseIpv4('169.254.0.0')!;

function linkLocal(value: string, where: string): string {
  const c = parseIfaceCidr(value);
  const hint = 'give an address in 169.254.0.0/16 with a prefix of /16 to /32, such as 169.254.75.1/32';
  if (!c) throw usage(`${where} is ${JSON.stringify(value)}, not an IPv4 address or CIDR`, hint);
  const address = formatIpv4(c.addr);
  if (!contains(LINK_LOCAL_NET, 16, c.addr) || c.prefixlen < 16) throw usage(`${where} is ${value}, which is not inside 169.254.0.0/16`, hint);
  const host = c.addr & 0xffff;
  if (c.prefixlen < 31 && (host === 0 || host === 0xffff)) throw usage(`${where} is ${value}, a network or broadcast address`, hint);
  if (RESERVED_LL.includes(address)) throw usage(`${where} is ${address}, which pods use as a gateway or metadata address`, hint);
  return `${address}/${c.prefixlen}`;
}

function crossCheck(o: Options, command: Command, raw: Map<string, { values: string[]; where: string }>): void {
  if (o.bridge === o.tap) throw usage(`the bridge and the tap are both named ${o.bridge}`, 'give --bridge and --tap different names');
  for (const i of o.interfaces ?? [])
    if (i === o.bridge || i === o.tap) throw usage(`--interface ${i} is also the bridge or tap name`, 'the bridge and tap must be new names');
  if (o.persistTap && o.fdSocket) throw usage('--persist-tap and --fd-socket both given: a persistent tap is opened by name, so podtap holds no fds to serve', 'use --persist-tap for Firecracker, or --fd-socket for a VMM that takes fds');
  if (o.persistTap && o.queues > 1) throw usage('--persist-tap makes a single-queue tap (Firecracker opens it without IFF_MULTI_QUEUE)', 'drop --queues or --persist-tap');
  if (o.qmp && o.chApi) throw usage('--qmp and --ch-api both given', 'hot-plug into one VMM: choose one');
  if (command === 'exec' && !o.fdSocket) throw usage('`podtap exec` needs --fd-socket PATH', 'point it at the socket `podtap up --fd-socket` serves');
  if (raw.has('qmp-bus') && !o.qmp) throw usage(`${raw.get('qmp-bus')!.where} without --qmp`, 'add --qmp PATH (or PODTAP_QMP)');
  if (raw.has('fd-socket-mode') && !o.fdSocket) throw usage(`${raw.get('fd-socket-mode')!.where} without --fd-socket`, 'add --fd-socket PATH (or PODTAP_FD_SOCKET)');
}
