// Run inside a pod's network namespace (nsenter --net=...): discovers the pod
// with podtap's own code, plans with `podtap up`'s default options (or
// `--datapath` as given), and prints the plan plus the kernel-operation
// scripts the floor replays:
//
//   setupIp     every iproute2 line of the steps' do-actions, in order, with
//               the TAP open replaced by `tuntap add ... mode tap vnet_hdr`
//               (podtap opens it itself with the same flags)
//   teardownIp  every iproute2 line of the undo-actions, last step first (as
//               podtap's undo replays them)
//   nftSetup / nftTeardown  the guard tables' nft scripts (podtap loads them
//               alongside the ip batch)
//
//   node bench/plan-helper.ts RESOLV_CONF [bridge|redirect]
//
// Nothing is changed: discovery and planning are read-only. The data-path
// support podtap would probe for (nft -c) is taken as present: the floor
// replays what podtap does on this kernel, where both paths work.

import { discover } from '../src/pod/discover.ts';
import { plan } from '../src/plan/plan.ts';
import { ipLines, type Step } from '../src/journal/actions.ts';
import { removalScript, renderTable } from '../src/plan/guard.ts';
import type { Datapath } from '../src/plan/datapath/index.ts';

const resolvConf = process.argv[2] ?? '/etc/resolv.conf';
const datapath = process.argv[3] as Datapath | undefined;
if (datapath !== undefined && datapath !== 'bridge' && datapath !== 'redirect') throw new Error(`plan-helper: data path ${datapath}?`);
const { pod, observed } = await discover({ resolvConf, resolvConfRequired: true });
const mac = () => '02:' + Array.from({ length: 5 }, () => Math.floor(Math.random() * 256).toString(16).padStart(2, '0')).join(':');
const p = plan(
  pod,
  observed.links,
  {
    bridge: 'br0',
    tap: 'tap0',
    queues: 1,
    linkLocal: '169.254.75.1/32',
    linkLocalExplicit: false,
    antispoof: true,
    persistTap: false,
    ...(datapath ? { datapath } : {}),
    support: { redirect: true, egress: true },
  },
  () => ({ serverMac: mac(), portMac: mac(), bridgeMac: mac() }),
);

const steps: Step[] = p.steps;
const setupIp: string[] = [];
const nftSetup: string[] = [];
for (const s of steps) {
  for (const a of s.do) {
    const ip = ipLines(a);
    if (ip) setupIp.push(...ip);
    else if (a.op === 'tap-open') setupIp.push(`tuntap add dev ${a.tap.name} mode tap vnet_hdr${a.tap.queues > 1 ? ' multi_queue' : ''}`);
    else if (a.op === 'nft-load') nftSetup.push(renderTable(a.table));
    else throw new Error(`plan-helper: no floor for ${a.op}`);
  }
}
const teardownIp: string[] = [];
const nftTeardown: string[] = [];
for (const s of [...steps].reverse()) {
  for (const a of s.undo) {
    const ip = ipLines(a);
    if (ip) teardownIp.push(...ip);
    else if (a.op === 'nft-delete') nftTeardown.push(removalScript(a.family));
    else throw new Error(`plan-helper: no floor for undo ${a.op}`);
  }
}
const a0 = p.attachments[0]!;
process.stdout.write(
  JSON.stringify({
    vm: { mac: a0.mac, ip: a0.ipv4 ? `${a0.ipv4.address}/${a0.ipv4.prefixlen}` : '', address: a0.ipv4?.address ?? '', prefixlen: a0.ipv4?.prefixlen ?? 0, mtu: a0.mtu, ...(a0.ipv4?.gateway ? { gateway: a0.ipv4.gateway } : {}) },
    datapath: a0.datapath,
    linkLocal: p.serverId,
    stepIds: steps.map((s) => s.id),
    setupIp,
    teardownIp,
    nftSetup: nftSetup.join(''),
    nftTeardown: nftTeardown.join(''),
  }) + '\n',
);
