// Client-side packets for the DHCP unit tests, built with our own encoder so
// each test states only the fields that matter to it.

import { BOOTREQUEST, encodePacket, parseMac } from '../../src/serve/dhcp4/codec.ts';
import type { OptionList } from '../../src/serve/dhcp4/codec.ts';
import type { DhcpConfig } from '../../src/serve/dhcp4/config.ts';
import { ipv4 } from '../../src/net/ipv4.ts';
import { MSG, OPT } from '../../src/serve/dhcp4/options.ts';

export const VM_MAC = '52:54:00:12:34:56';
export const OTHER_MAC = '52:54:00:65:43:21';
export const SERVER_ID = '169.254.75.1';

export interface ClientPacket {
  type?: number; // option 53; omit for a BOOTP-style request
  mac?: string;
  xid?: number;
  ciaddr?: string;
  giaddr?: string;
  flags?: number;
  requested?: string; // option 50
  serverId?: string; // option 54
  prl?: number[]; // option 55
  maxSize?: number; // option 57
  clientId?: Uint8Array; // option 61
  extra?: OptionList; // appended after the above
  htype?: number;
  hlen?: number;
  op?: number;
}

export function clientPacket(p: ClientPacket): Buffer {
  const opts: [number, Uint8Array][] = [];
  if (p.type !== undefined) opts.push([OPT.MESSAGE_TYPE, Buffer.from([p.type])]);
  if (p.requested) opts.push([OPT.REQUESTED_IP, ip4(p.requested)]);
  if (p.serverId) opts.push([OPT.SERVER_ID, ip4(p.serverId)]);
  if (p.prl) opts.push([OPT.PARAM_REQUEST_LIST, Buffer.from(p.prl)]);
  if (p.maxSize !== undefined) {
    const b = Buffer.alloc(2);
    b.writeUInt16BE(p.maxSize);
    opts.push([OPT.MAX_MESSAGE_SIZE, b]);
  }
  if (p.clientId) opts.push([OPT.CLIENT_ID, p.clientId]);
  for (const [code, data] of p.extra ?? []) opts.push([code, data]);
  return encodePacket(
    {
      op: p.op ?? BOOTREQUEST,
      htype: p.htype ?? 1,
      hlen: p.hlen ?? 6,
      hops: 0,
      xid: p.xid ?? 0x12345678,
      secs: 0,
      flags: p.flags ?? 0,
      ciaddr: p.ciaddr ? ipv4(p.ciaddr) : 0,
      yiaddr: 0,
      siaddr: 0,
      giaddr: p.giaddr ? ipv4(p.giaddr) : 0,
      chaddr: parseMac(p.mac ?? VM_MAC)!,
    },
    opts,
    0,
  );
}

export function ip4(s: string): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(ipv4(s));
  return b;
}

/** The Calico shape: a /32 pod address, its gateway on-link through a host route. */
export function calicoConfig(over: Partial<DhcpConfig> = {}): DhcpConfig {
  return {
    vmMac: VM_MAC,
    ip: '10.23.5.7',
    prefixlen: 32,
    router: '169.254.1.1',
    routes: [
      { dst: '169.254.1.1/32', gateway: '0.0.0.0' },
      { dst: '0.0.0.0/0', gateway: '169.254.1.1' },
    ],
    dns: ['10.96.0.10'],
    domain: 'default.svc.cluster.local',
    search: ['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local'],
    hostname: 'web-7d4b9c',
    mtu: 1450,
    serverId: SERVER_ID,
    leaseSeconds: 3600,
    ...over,
  };
}

/** The CNI ptp shape: a /16 whose subnet route goes through the gateway. */
export function ptpConfig(over: Partial<DhcpConfig> = {}): DhcpConfig {
  return {
    vmMac: VM_MAC,
    ip: '10.22.0.5',
    prefixlen: 16,
    router: '10.22.0.1',
    routes: [
      { dst: '10.22.0.1/32', gateway: '0.0.0.0' },
      { dst: '10.22.0.0/16', gateway: '10.22.0.1' },
      { dst: '0.0.0.0/0', gateway: '10.22.0.1' },
    ],
    dns: ['10.96.0.10', '10.96.0.11'],
    domain: 'ns1.svc.cluster.local',
    search: ['ns1.svc.cluster.local', 'svc.cluster.local', 'cluster.local'],
    hostname: 'pod-a',
    mtu: 1500,
    broadcast: '10.22.255.255',
    serverId: SERVER_ID,
    leaseSeconds: 600,
    ...over,
  };
}

export { MSG, OPT };
