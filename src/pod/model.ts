// The pod's network as discovery finds it. Everything here is plain data so
// that planning, the DHCP identity and the journal can be computed and tested
// without root. Field names follow `ip -j` where one exists.

export type Family = 'inet' | 'inet6';

export interface Link {
  name: string;
  ifindex: number;
  kind: string; // "veth", "bridge", "tun", ...
  mac: string;
  mtu: number;
  up: boolean; // administratively up (IFF_UP)
  master?: string;
  txqlen?: number;
  tun?: { attachedQueues: number; persist: boolean; multiQueue: boolean }; // tun/tap devices only
}

export interface Address {
  family: Family;
  local: string;
  prefixlen: number;
  broadcast?: string;
  peer?: string; // IFA_ADDRESS when it differs from IFA_LOCAL (point-to-point)
  scope: string; // "global", "link", "host" or a number
  label?: string;
  flags: string[]; // ip's words: "secondary", "nodad", "noprefixroute", "permanent", ...
  metric?: number;
  validLft?: number; // seconds left, only when not forever
  preferredLft?: number;
}

export interface NextHop {
  gateway?: string;
  dev: string;
  weight?: number;
  flags?: string[];
}

export interface Route {
  family: Family;
  table: string; // "main", "local" or a number as a string
  type: string; // "unicast", "local", "broadcast", "multicast", ...
  dst: string; // "default" or CIDR (a bare address means a host route)
  gateway?: string;
  dev: string;
  protocol?: string; // "kernel", "boot", "static", "dhcp", a number...
  scope?: string;
  metric?: number;
  prefsrc?: string;
  flags: string[]; // "onlink", ...
  pref?: string; // IPv6 router preference
  nexthops?: NextHop[]; // multipath
  tos?: string;
  expires?: number;
}

export interface Neighbour {
  family: Family;
  dst: string;
  lladdr?: string;
  dev: string;
  router: boolean;
  proxy: boolean;
}

export interface Dns {
  nameservers: string[];
  search: string[];
  options: string[];
}

export interface PodNetwork {
  link: Link;
  addresses: Address[];
  routes: Route[]; // every route through the link, every table, both families
  neighbours: Neighbour[]; // permanent entries only
  sysctls: Record<string, string>;
  dns: Dns;
  hostname: string;
}
