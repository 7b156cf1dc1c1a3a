// The redirect data path: no bridge. The guard table's netdev ingress chains
// (plan/guard.ts) move each frame from the TAP to the pod interface and back
// in the kernel; here only the devices are made ready. The pod interface
// keeps its MAC, which the VM shares.

import type { Step } from '../../journal/actions.ts';
import type { Attachment } from '../attachment.ts';

export function redirectSteps(a: Attachment, wasUp: boolean): Step[] {
  const p = `nic${a.nic}`;
  const steps: Step[] = [];
  if (!wasUp) steps.push({ id: `${p}/port-up`, do: [{ op: 'link-set', name: a.interface, up: true }], undo: [{ op: 'link-set', name: a.interface, up: false }] });
  // Address generation off before the tap goes up: the pod's stack must
  // say nothing to the guest (no link-local address, no RS, no MLD).
  steps.push({ id: `${p}/tap-up`, do: [{ op: 'link-set', name: a.tap, addrGenMode: 'none' }, { op: 'link-set', name: a.tap, mtu: a.mtu, up: true }], undo: [] });
  return steps;
}
