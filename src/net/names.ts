// Interface names podtap accepts, from the user or from the namespace.
//
// Stricter than the kernel on purpose: names end up in `ip -batch` lines
// (where '#' starts a comment and quotes group words), in nft strings (where
// '*' is a wildcard and '"' ends the string) and in QEMU ids. A name the
// kernel allows but podtap does not is refused before anything changes, never
// passed through. 15 ASCII characters = the kernel's 15 bytes.

const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;

export function validIfname(name: string): boolean {
  return IFNAME.test(name) && name !== '.' && name !== '..' && name !== 'all' && name !== 'default';
}

export const IFNAME_RULE = 'use 1 to 15 characters from A-Z a-z 0-9 - _ . (not "all" or "default")';

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

export function validMac(mac: string): boolean {
  return MAC.test(mac);
}
