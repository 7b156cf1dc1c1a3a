// resolv.conf as glibc reads it: the last `search` or `domain` line wins,
// nameservers accumulate up to glibc's three (MAXNS: the pod's resolver
// never asks a fourth, so neither should the VM's), options accumulate.
// Comments start with # or ;.

const MAXNS = 3;

import type { Dns } from './model.ts';

export function parseResolvConf(text: string): Dns {
  const dns: Dns = { nameservers: [], search: [], options: [] };
  for (const raw of text.split('\n')) {
    const line = raw.replace(/[#;].*$/, '').trim();
    if (!line) continue;
    const [key, ...rest] = line.split(/\s+/);
    if (key === 'nameserver' && rest[0]) {
      if (dns.nameservers.length < MAXNS) dns.nameservers.push(rest[0]);
    }
    else if (key === 'search') dns.search = rest;
    else if (key === 'domain' && rest[0]) dns.search = [rest[0]];
    else if (key === 'options') dns.options.push(...rest);
  }
  return dns;
}
