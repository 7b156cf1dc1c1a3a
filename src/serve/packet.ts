// Where podtap's servers meet the wire: a packet socket per device, with a
// classic BPF filter so the kernel hands podtap only the few frames it
// serves (DHCPv4, DHCPv6, router and neighbour solicitations) and never the
// guest's data traffic.
//
// On a TAP, the socket sees what the guest sends before any bridge or
// nftables hook does, and what podtap sends on it goes straight to the
// guest's queues: the servers need no address on any device, nothing in the
// pod namespace can reach them, and their replies cannot leak towards the
// node. Each NIC's servers see only their own TAP.

import type { BpfInsn } from '../sys/native.ts';

/** A device's frames, as the servers use them; an in-memory one stands in for tests. */
export interface FramePort {
  readonly name: string;
  /** The device's index when the port was opened: a TAP made again gets another. */
  readonly ifindex?: number;
  send(frame: Buffer): void;
  onFrame(handler: (frame: Buffer) => void): void;
  close(): void;
}

// ------------------------------------------------------------- BPF filters

const LDW_ABS = 0x20; // A = u32 at [k]; with k in the ancillary range, a property of the frame
const LDH_ABS = 0x28; // A = u16 at [k]
const LDB_ABS = 0x30; // A = u8 at [k]
const LDH_IND = 0x48; // A = u16 at [X + k]
const LDXB_MSH = 0xb1; // X = 4 * ([k] & 0xf): the IPv4 header length
const JEQ = 0x15;
const JSET = 0x45;
const RET = 0x06;

type Op = { op: number; k: number; t?: string; f?: string } | { label: string };

/** A few lines of assembler: jumps name labels, resolved to forward offsets. */
function assemble(ops: Op[]): BpfInsn[] {
  const at = new Map<string, number>();
  const code: Exclude<Op, { label: string }>[] = [];
  for (const o of ops) {
    if ('label' in o) at.set(o.label, code.length);
    else code.push(o);
  }
  return code.map((o, i) => {
    const off = (l: string | undefined) => {
      if (l === undefined) return 0;
      const target = at.get(l);
      if (target === undefined || target <= i) throw new Error(`bpf: bad jump to ${l}`);
      return target - i - 1;
    };
    return [o.op, off(o.t), off(o.f), o.k];
  });
}

const ACCEPT = [{ label: 'accept' }, { op: RET, k: 0x40000 }, { label: 'reject' }, { op: RET, k: 0 }];

// SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT: the kernel takes a frame's outer
// VLAN tag off before packet sockets see it, so a tagged frame's ethertype
// reads as its payload's; only this flag tells.
const VLAN_TAG_PRESENT = 0xfffff000 + 48;
const UNTAGGED = [{ op: LDW_ABS, k: VLAN_TAG_PRESENT }, { op: JEQ, k: 0, f: 'reject' }];

/**
 * A TAP's server traffic: IPv4 UDP to port 67 (not fragments), IPv6 UDP to
 * port 547, ICMPv6 router and neighbour solicitations, and, given the DHCPv4
 * server identifier, ARP requests for it (a client renewing on a NIC without
 * a route to the server asks for it there). VLAN-tagged frames never match:
 * the guest's identity is served untagged only.
 */
export function serverFilter(serverId?: number): BpfInsn[] {
  return assemble([
    ...UNTAGGED,
    { op: LDH_ABS, k: 12 },
    { op: JEQ, k: 0x0800, t: 'v4' },
    { op: JEQ, k: 0x86dd, t: 'v6', f: serverId === undefined ? 'reject' : 'arp' },
    { label: 'v4' },
    { op: LDB_ABS, k: 23 },
    { op: JEQ, k: 17, f: 'reject' },
    { op: LDH_ABS, k: 20 },
    { op: JSET, k: 0x3fff, t: 'reject' }, // more fragments, or an offset: a fragment
    { op: LDXB_MSH, k: 14 },
    { op: LDH_IND, k: 16 },
    { op: JEQ, k: 67, t: 'accept', f: 'reject' },
    { label: 'v6' },
    { op: LDB_ABS, k: 20 },
    { op: JEQ, k: 17, f: 'icmp6' },
    { op: LDH_ABS, k: 56 },
    { op: JEQ, k: 547, t: 'accept', f: 'reject' },
    { label: 'icmp6' },
    { op: JEQ, k: 58, f: 'reject' },
    { op: LDB_ABS, k: 54 },
    { op: JEQ, k: 133, t: 'accept' },
    { op: JEQ, k: 135, t: 'accept', f: 'reject' },
    ...(serverId === undefined
      ? []
      : [
          { label: 'arp' },
          { op: JEQ, k: 0x0806, f: 'reject' },
          { op: LDH_ABS, k: 20 }, // operation: a request
          { op: JEQ, k: 1, f: 'reject' },
          { op: LDW_ABS, k: 38 }, // the address asked for
          { op: JEQ, k: serverId >>> 0, t: 'accept', f: 'reject' },
        ]),
    ...ACCEPT,
  ]);
}

export const SERVER_FILTER: BpfInsn[] = serverFilter();

/** A pod interface's neighbour advertisements: how podtap learns the IPv6 gateway's MAC. */
export const ADVERT_FILTER: BpfInsn[] = assemble([
  ...UNTAGGED,
  { op: LDH_ABS, k: 12 },
  { op: JEQ, k: 0x86dd, f: 'reject' },
  { op: LDB_ABS, k: 20 },
  { op: JEQ, k: 58, f: 'reject' },
  { op: LDB_ABS, k: 54 },
  { op: JEQ, k: 136, t: 'accept', f: 'reject' },
  ...ACCEPT,
]);

/**
 * Runs a filter over a frame as the kernel would; for tests of the filters
 * themselves. `vlanTagged`: the kernel had taken an outer tag off the frame.
 */
export function runFilter(prog: readonly BpfInsn[], frame: Buffer, meta: { vlanTagged?: boolean } = {}): number {
  let a = 0;
  let x = 0;
  for (let pc = 0; pc < prog.length; pc++) {
    const [op, jt, jf, k] = prog[pc]!;
    const u8 = (o: number) => (o < frame.length ? frame[o]! : undefined);
    const u16 = (o: number) => (o + 1 < frame.length ? frame.readUInt16BE(o) : undefined);
    switch (op) {
      case LDW_ABS:
        if (k === VLAN_TAG_PRESENT) a = meta.vlanTagged ? 1 : 0;
        else if (k >= 0xfffff000) throw new Error(`bpf: unmodelled load at ${k}`);
        else if (k + 3 < frame.length) a = frame.readUInt32BE(k);
        else return 0;
        break;
      case LDH_ABS:
      case LDH_IND: {
        const v = u16(op === LDH_IND ? x + k : k);
        if (v === undefined) return 0;
        a = v;
        break;
      }
      case LDB_ABS: {
        const v = u8(k);
        if (v === undefined) return 0;
        a = v;
        break;
      }
      case LDXB_MSH: {
        const v = u8(k);
        if (v === undefined) return 0;
        x = 4 * (v & 0xf);
        break;
      }
      case JEQ:
        pc += a === k ? jt : jf;
        break;
      case JSET:
        pc += (a & k) !== 0 ? jt : jf;
        break;
      case RET:
        return k;
      default:
        throw new Error(`bpf: unknown op ${op}`);
    }
  }
  return 0;
}

/** A packet socket on a device as a FramePort. */
export async function openDevicePort(ifname: string, filter: readonly BpfInsn[]): Promise<FramePort> {
  const { openPacketSocket } = await import('../sys/native.ts');
  const sock = openPacketSocket(ifname, filter);
  return {
    name: ifname,
    ifindex: sock.ifindex,
    send: (frame) => sock.send(frame),
    onFrame: (handler) => sock.watch(handler),
    close: () => sock.close(),
  };
}
