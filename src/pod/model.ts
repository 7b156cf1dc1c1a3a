// The pod's network as discovery finds it. Everything here is plain data so
// that planning, the identities handed to the VM and the journal can be
// computed and tested without root. Field names follow `ip -j` where one
// exists.

export type Family = 'inet' | 'inet6';

export interface Link {
  name: string;
  ifindex: number;
  kind: string; // "veth", "macvlan", "bridge", "tun", "loopback", "device" (no linkinfo: a physical NIC) ...
  mac: string;
  mtu: number;
  up: boolean; // administratively up (IFF_UP)
  master?: string;
  /** Alternative names (`ip link property add altname`): the kernel resolves them like the name. */
  altnames?: string[];
  txqlen?: number;
  /** IFLA_INET6_ADDR_GEN_MODE: how the kernel makes the IPv6 link-local address ("eui64", "none", ...). */
  addrGenMode?: string;
  /** The lower device of a macvlan/vlan, as `ip` names it (may live in another namespace). */
  parent?: string;
  macvlanMode?: string;
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
  /** Absent on a multipath route: its next hops name the devices. */
  dev?: string;
  protocol?: string; // "kernel", "boot", "static", "dhcp", a number...
  scope?: string;
  metric?: number;
  prefsrc?: string;
  flags: string[]; // "onlink", ...
  pref?: string; // IPv6 router preference
  nexthops?: NextHop[]; // multipath
  tos?: string;
  expires?: number;
  mtu?: number; // the route's `mtu` metric, when set
}

export interface Neighbour {
  family: Family;
  dst: string;
  lladdr?: string;
  dev: string;
  router: boolean;
  proxy: boolean;
  /** Permanent entries are restored; others are only read (the gateway's MAC). */
  permanent: boolean;
}

export interface Dns {
  nameservers: string[];
  search: string[];
  options: string[];
}

/** One pod interface with everything the kernel holds for it. */
export interface PodInterface {
  link: Link;
  addresses: Address[];
  routes: Route[]; // every route through the link, every table, both families
  neighbours: Neighbour[]; // permanent entries, and others with a link-layer address
  sysctls: Record<string, string>; // read only, for the record and diagnostics
}

/** The pod as podtap takes it over: the chosen interfaces in the VM's NIC order. */
export interface Pod {
  interfaces: PodInterface[];
  dns: Dns;
  hostname: string;
}
