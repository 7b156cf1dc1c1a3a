// Run inside a pod's network namespace (nsenter --net=...): discovers the pod
// with podtap's own code, plans with `podtap up`'s default options, and prints
// the plan plus the kernel-operation scripts the floor replays:
//
//   setupIp     every `ip` line of the steps' do-actions, in order, with the
//               TAP open replaced by `tuntap add ... mode tap vnet_hdr`
//   teardownIp  every `ip` line of the undo-actions, last step first (as
//               podtap's undo replays them)
//   nftSetup / nftTeardown  the guard table's nft scripts
//   sysctlSetup / sysctlTeardown  the /proc/sys writes podtap makes (not in
//               the ip floor; the benchmark makes them untimed)
//
// Nothing is changed: discovery and planning are read-only.

import { discover } from '../src/pod/discover.ts';
import { plan } from '../src/plan/plan.ts';
import type { Step } from '../src/plan/steps.ts';

const resolvConf = process.argv[2] ?? '/etc/resolv.conf';
const { pod, observed } = await discover({ resolvConf });
const mac = () => '02:' + Array.from({ length: 5 }, () => Math.floor(Math.random() * 256).toString(16).padStart(2, '0')).join(':');
const p = plan(
  pod,
  observed.links,
  { bridge: 'br0', tap: 'tap0', queues: 1, linkLocal: '169.254.75.1/32', linkLocalExplicit: false, antispoof: true, persistTap: false },
  { vethMac: mac(), bridgeMac: mac() },
);

const steps: Step[] = p.steps;
const setupIp: string[] = [];
const nftSetup: string[] = [];
const sysctlSetup: string[] = [];
for (const s of steps) {
  for (const a of s.do) {
    if ('ip' in a) setupIp.push(a.ip);
    else if ('tap' in a) setupIp.push(`tuntap add dev ${a.tap.name} mode tap vnet_hdr${a.tap.queues > 1 ? ' multi_queue' : ''}`);
    else if ('nft' in a) nftSetup.push(a.nft);
    else if ('sysctl' in a) sysctlSetup.push(`${a.sysctl}=${a.value}`);
  }
}
const teardownIp: string[] = [];
const nftTeardown: string[] = [];
const sysctlTeardown: string[] = [];
for (const s of [...steps].reverse()) {
  for (const a of s.undo) {
    if ('ip' in a) teardownIp.push(a.ip);
    else if ('nft' in a) nftTeardown.push(a.nft);
    else if ('sysctl' in a) sysctlTeardown.push(`${a.sysctl}=${a.value}`);
  }
}
process.stdout.write(
  JSON.stringify({ vm: p.vm, linkLocal: p.linkLocal, stepIds: steps.map((s) => s.id), setupIp, teardownIp, nftSetup: nftSetup.join(''), nftTeardown: nftTeardown.join(''), sysctlSetup, sysctlTeardown }) + '\n',
);
