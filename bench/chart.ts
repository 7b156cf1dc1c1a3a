// The SVG of the set-up / teardown section: podtap's phases (from its ready
// line) next to the floor and the CNI ptp peer, as stacked bars.

import type { SetupData } from './setup.ts';
import { stackedBars, type Bar } from './svg.ts';

export function phaseChart(setup: SetupData | undefined): string | undefined {
  if (!setup) return undefined;
  const m = (k: string) => setup.summaries[k]?.median ?? 0;
  const phases = ['discovery', 'plan', 'apply', 'tapOpen', 'dhcpReady', 'handoff'];
  const inSetUp = phases.reduce((a, p) => a + m(`phase.${p}`), 0);
  const podtapBar: Bar = {
    label: 'podtap up',
    total: m('up'),
    segments: [
      { name: 'exec → setUp (launcher, Node, modules)', ms: m('startup') },
      { name: 'preflight/lock/journal', ms: Math.max(0, m('phase.total') - inSetUp) },
      { name: 'discovery', ms: m('phase.discovery') },
      { name: 'plan', ms: m('phase.plan') },
      { name: 'apply (ip, sysctl, nft)', ms: m('phase.apply') },
      { name: 'TAP open', ms: m('phase.tapOpen') },
      { name: 'DHCP ready', ms: m('phase.dhcpReady') },
      { name: 'hand-off', ms: m('phase.handoff') },
    ],
  };
  const setupBars: Bar[] = [
    podtapBar,
    { label: 'floor', segments: [{ name: 'node -e 0', ms: m('floorNode') }, { name: 'ip -batch', ms: m('floorIp') }] },
    { label: 'floor + nft', segments: [{ name: 'node -e 0', ms: m('floorNode') }, { name: 'ip -batch', ms: m('floorIp') }, { name: 'nft -f', ms: m('floorNft') }] },
    { label: 'CNI ptp ADD', segments: [{ name: 'CNI ptp', ms: m('ptpAdd') }] },
  ];
  const downBars: Bar[] = [
    { label: 'podtap: SIGTERM → exit', segments: [{ name: 'podtap teardown', ms: m('down') }] },
    { label: 'floor: ip -batch', segments: [{ name: 'ip -batch', ms: m('floorDown') }] },
    { label: 'floor + nft', segments: [{ name: 'ip -batch', ms: m('floorDown') }, { name: 'nft -f', ms: m('floorDownNft') - m('floorDown') }] },
    { label: 'CNI ptp DEL', segments: [{ name: 'CNI ptp', ms: m('ptpDel') }] },
  ];
  return stackedBars('podtap up / teardown: where the time goes', `medians of ${setup.podtap.length} runs in fresh CNI ptp pods; podtap phases from its ready line`, [
    { title: 'Set-up (exec → ready)', bars: setupBars },
    { title: 'Teardown', bars: downBars },
  ]);
}
