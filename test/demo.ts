// The demo: a throwaway pod network namespace made by the real CNI ptp
// plugin, `podtap run` booting a real guest under QEMU that gets the pod's
// identity by DHCP and pings the node, then teardown and a check that the
// pod namespace is exactly as it was. Run with `npm run demo` as root.

import { Cleanup } from './helpers/netns.ts';
import { makePod } from './helpers/pods.ts';
import { snapshot, diffSnapshots } from './helpers/snapshot.ts';
import { buildGuest, guestQemuArgs, runGuest } from './helpers/guest.ts';
import { PODTAP, podtapIn } from './helpers/podtap.ts';
import { mkdtempSync } from 'node:fs';

const say = (s: string) => process.stdout.write(`\n\x1b[1m== ${s}\x1b[0m\n`);
const cleanup = new Cleanup();
let failed = false;

try {
  say('building the guest (a Debian kernel + busybox initramfs)');
  const guest = await buildGuest();

  say('making a pod: node + pod network namespaces wired by the real CNI ptp plugin');
  const pod = await makePod('ptp', { cleanup, hostname: 'demo-vm' });
  const before = await snapshot(pod.pod);
  const inspect = await podtapIn(pod, ['inspect']);
  const found = JSON.parse(inspect.stdout);
  for (const i of found.interfaces.filter((x: any) => x.vm)) {
    console.log(`pod ${pod.pod}: NIC ${i.nic} = ${i.interface} (${i.kind}) ${i.mac} ${i.vm.ipv4 ? `${i.vm.ipv4.address}/${i.vm.ipv4.prefixlen}` : 'no IPv4'} mtu ${i.mtu}${i.vm.defaultRoute ? ', default route' : ''}`);
    for (const r of i.routes.filter((r: any) => r.table === 'main' && r.family === 'inet')) console.log(`  route ${r.dst}${r.gateway ? ' via ' + r.gateway : ''}`);
  }
  console.log(`  dns ${found.dns.nameservers.join(' ')} search ${found.dns.search.join(' ')}; hostname ${found.hostname}`);

  say('podtap run -- qemu-system-x86_64 ... (the guest runs udhcpc, then pings the node)');
  const stateDir = mkdtempSync('/run/podtap-demo-');
  cleanup.path(stateDir);
  const qemu = [
    ...guestQemuArgs({ guest, net: 'dhcp', ping: [pod.nodeAddr], guestTimeout: 90 }),
    '-netdev', 'tap,id=n0,fds={fds}',
    '-device', 'virtio-net-pci,netdev=n0,mac={mac},romfile=',
  ];
  const run = await runGuest(pod.argv([PODTAP, 'run', '--state-dir', stateDir, '--', ...qemu]), {
    timeoutMs: 150_000,
    onLine: (l) => {
      if (l.startsWith('{"event":"ready"')) console.log(`podtap ready: ${l}`);
    },
  });
  const lease = run.report.lease;
  console.log(`guest lease: ip ${lease?.ip}/${lease?.mask} router ${lease?.router?.join(',')} dns ${lease?.dns?.join(',')} search ${lease?.search?.join(' ')} hostname ${lease?.hostname} mtu ${lease?.mtu}`);
  console.log(`guest routes: ${(run.report.last?.routes ?? []).map((r) => r.raw).join(' | ')}`);
  for (const p of run.report.pings) console.log(`guest ping ${p.target}: ${p.ok ? 'ok' : 'FAILED'}`);
  console.log(`podtap exit status: ${run.exitCode}`);
  process.stderr.write(run.stderr);

  say('after teardown: the pod namespace compared with before');
  const diff = diffSnapshots(before, await snapshot(pod.pod));
  console.log(diff.length ? diff.join('\n') : 'identical: addresses, routes, MAC, MTU, neighbours, rules and sysctls all restored');
  failed = diff.length > 0 || run.exitCode !== 0 || !run.report.pings.every((p) => p.ok) || lease?.ip !== pod.podIP;
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await cleanup.cleanupAll();
}
say(failed ? 'demo FAILED' : 'demo OK');
process.exitCode = failed ? 1 : 0;
