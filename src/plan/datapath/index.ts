// The data path: how one attachment's frames get between the pod interface
// and the VM's TAP (Kata calls this the network model). Each path is a small
// module that turns an attachment into the link steps that join them; the
// guard table (plan/guard.ts) is the same allow-list on both.
//
//   bridge    the pod interface and the TAP are ports of a Linux bridge; the
//             pod interface wears a generated MAC, the VM the original.
//   redirect  no bridge: nftables netdev ingress hooks move frames between
//             the two devices in the kernel, guard included; the pod
//             interface keeps its MAC. Carries macvlan, which demultiplexes
//             by destination MAC and so cannot be bridged under another MAC.

import { PodtapError } from '../../errors.ts';
import type { Link } from '../../pod/model.ts';

export type Datapath = 'bridge' | 'redirect';
export const DATAPATHS: Datapath[] = ['bridge', 'redirect'];

/** What podtap uses when the user does not choose and the kernel can do both. */
export const DEFAULT_DATAPATH: Datapath = 'redirect';

export interface DatapathSupport {
  /** nftables netdev ingress with `fwd` works in this kernel. */
  redirect: boolean;
  /** nftables netdev egress hooks (Linux 5.16+): the pod's own stack can be kept silent. */
  egress?: boolean;
}

/** Chooses one interface's data path, or refuses a choice that cannot work for it. */
export function chooseDatapath(link: Link, wanted: Datapath | undefined, support: DatapathSupport): Datapath {
  const macvlan = link.kind === 'macvlan';
  if (wanted === 'bridge' && macvlan)
    throw new PodtapError('usage', `${link.name} is a macvlan interface, which the bridge data path cannot carry: its parent delivers only frames for ${link.mac}, and a bridge port must wear another MAC`, 'use --datapath redirect (the default for macvlan), or leave --datapath out');
  if (wanted === 'redirect' || (wanted === undefined && (macvlan || DEFAULT_DATAPATH === 'redirect'))) {
    if (support.redirect) return 'redirect';
    if (wanted === 'redirect' || macvlan)
      throw new PodtapError('environment', `the redirect data path${macvlan ? ` (the only one that carries the macvlan ${link.name})` : ''} needs nftables netdev ingress hooks with "fwd", which this kernel or nft lacks`, 'load the nf_tables, nft_fwd_netdev and nf_dup_netdev modules on the node, or use --datapath bridge for veth interfaces');
    return 'bridge';
  }
  return wanted ?? 'bridge';
}
