// ARP for the DHCPv4 server identifier. A client renewing on a NIC whose
// routes don't reach the server identifier (a secondary network without a
// gateway) takes it as on-link and asks for it there; nothing but podtap
// can answer, and the guard keeps the question from the node.

import { ETHERTYPE_ARP as ARP, formatMac, macBytes } from './frames.ts';

/** The reply to the VM's request for `serverId`, or undefined when the frame is anything else. */
export function answerArp(frame: Buffer, s: { serverId: number; serverMac: string; vmMac: string }): Buffer | undefined {
  if (frame.length < 42 || frame.readUInt16BE(12) !== ARP) return undefined;
  const a = 14;
  // Ethernet/IPv4, a request, for the server identifier, from the VM itself.
  if (frame.readUInt16BE(a) !== 1 || frame.readUInt16BE(a + 2) !== 0x0800 || frame[a + 4] !== 6 || frame[a + 5] !== 4) return undefined;
  if (frame.readUInt16BE(a + 6) !== 1 || frame.readUInt32BE(a + 24) !== s.serverId >>> 0) return undefined;
  const sha = frame.subarray(a + 8, a + 14);
  if (formatMac(sha) !== s.vmMac || formatMac(frame, 6) !== s.vmMac) return undefined;
  const out = Buffer.alloc(42);
  const me = macBytes(s.serverMac)!;
  out.set(sha, 0);
  out.set(me, 6);
  out.writeUInt16BE(ARP, 12);
  out.writeUInt16BE(1, a);
  out.writeUInt16BE(0x0800, a + 2);
  out[a + 4] = 6;
  out[a + 5] = 4;
  out.writeUInt16BE(2, a + 6); // reply
  out.set(me, a + 8);
  out.writeUInt32BE(s.serverId >>> 0, a + 14);
  out.set(sha, a + 18);
  frame.copy(out, a + 24, a + 14, a + 18); // the asker's address
  return out;
}
