// The SVG of the set-up / teardown section: podtap's phases (from its ready
// line) next to the floor and the CNI ptp peer, as stacked bars, for each
// data path measured (podtap's default first).

import type { PathData, SetupData } from './setup.ts';
import { stackedBars, type Bar } from './svg.ts';

export function phaseChart(setup: SetupData | undefined): string | undefined {
  if (!setup) return undefined;
  const paths: PathData[] = setup.paths?.length ? setup.paths : [{ path: '', isDefault: true, podtap: setup.podtap, floor: setup.floor, plan: setup.plan, summaries: setup.summaries }];
  const phases = ['discovery', 'plan', 'apply', 'tapOpen', 'dhcpReady', 'handoff'];
  const setupBars: Bar[] = [];
  const downBars: Bar[] = [];
  for (const d of paths) {
    const m = (k: string) => d.summaries[k]?.median ?? 0;
    const tag = d.path ? ` (${d.path})` : '';
    const inSetUp = phases.reduce((a, p) => a + m(`phase.${p}`), 0);
    setupBars.push(
      {
        label: `podtap up${tag}`,
        total: m('up'),
        segments: [
          { name: 'exec → setUp (launcher, Node, modules)', ms: m('startup') },
          { name: 'preflight/lock/journal', ms: Math.max(0, m('phase.total') - inSetUp) },
          { name: 'discovery (ip read, nft -c probe)', ms: m('phase.discovery') },
          { name: 'plan', ms: m('phase.plan') },
          { name: 'apply (ip -batch ∥ nft -f)', ms: m('phase.apply') },
          { name: 'TAP open', ms: m('phase.tapOpen') },
          { name: 'DHCP ready', ms: m('phase.dhcpReady') },
          { name: 'hand-off', ms: m('phase.handoff') },
        ],
      },
      { label: `floor${tag}`, segments: [{ name: 'node -e 0', ms: m('floorNode') }, { name: 'ip -batch', ms: m('floorIp') }] },
      { label: `floor + nft${tag}`, segments: [{ name: 'node -e 0', ms: m('floorNode') }, { name: 'ip -batch', ms: m('floorIp') }, { name: 'nft -f', ms: m('floorNft') }] },
    );
    downBars.push(
      { label: `podtap${tag}: SIGTERM → exit`, segments: [{ name: 'podtap teardown', ms: m('down') }] },
      { label: `floor${tag}: ip -batch`, segments: [{ name: 'ip -batch', ms: m('floorDown') }] },
      { label: `floor + nft${tag}`, segments: [{ name: 'ip -batch', ms: m('floorDown') }, { name: 'nft -f', ms: m('floorDownNft') - m('floorDown') }] },
    );
  }
  const m0 = (k: string) => paths[0]!.summaries[k]?.median ?? 0;
  setupBars.push({ label: 'CNI ptp ADD', segments: [{ name: 'CNI ptp', ms: m0('ptpAdd') }] });
  downBars.push({ label: 'CNI ptp DEL', segments: [{ name: 'CNI ptp', ms: m0('ptpDel') }] });
  return stackedBars('podtap up / teardown: where the time goes', `medians of ${paths[0]!.podtap.length} runs per data path in fresh CNI ptp pods; podtap phases from its ready line`, [
    { title: 'Set-up (exec → ready)', bars: setupBars },
    { title: 'Teardown', bars: downBars },
  ]);
}
