// The bridge data path: pod interface and TAP become ports of a new bridge.
// The VM takes the pod interface's MAC; the interface wears a generated one,
// so the bridge never sees one MAC on two ports.

import type { Step } from '../../journal/actions.ts';
import type { Attachment } from '../attachment.ts';

export function bridgeSteps(a: Attachment, wasUp: boolean): Step[] {
  const p = `nic${a.nic}`;
  const dev = a.interface;
  const br = a.bridge!;
  const steps: Step[] = [
    { id: `${p}/port-mac`, do: [{ op: 'link-set', name: dev, mac: a.portMac! }], undo: [{ op: 'link-set', name: dev, mac: a.mac }] },
    { id: `${p}/bridge-add`, do: [{ op: 'bridge-add', name: br, mac: a.bridgeMac!, mtu: a.mtu }], undo: [{ op: 'link-del', name: br }] },
    {
      id: `${p}/port-enslave`,
      // Learning off on the pod port: frames reflected from the node side
      // with the VM's source MAC must never move the VM's FDB entry away
      // from the tap (the Flannel/Weave failure). Unknown destinations still
      // flood to the tap.
      do: [{ op: 'link-set', name: dev, master: br }, { op: 'port-set', name: dev, learning: false }],
      undo: [{ op: 'link-set', name: dev, master: null }],
    },
  ];
  if (!wasUp) steps.push({ id: `${p}/port-up`, do: [{ op: 'link-set', name: dev, up: true }], undo: [{ op: 'link-set', name: dev, up: false }] });
  steps.push(
    // Address generation off before the tap goes up (in one message the
    // kernel would bring it up first and give it a link-local address).
    { id: `${p}/tap-up`, do: [{ op: 'link-set', name: a.tap, addrGenMode: 'none' }, { op: 'link-set', name: a.tap, mtu: a.mtu, master: br, up: true }], undo: [] },
    { id: `${p}/bridge-up`, do: [{ op: 'link-set', name: br, up: true }], undo: [] },
  );
  return steps;
}
