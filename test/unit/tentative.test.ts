import { describe, expect, it } from 'vitest';
import { tentativeFromProc } from '../../src/lifecycle.ts';

// /proc/net/if_inet6: address, ifindex, prefix length, scope, flags (hex), device.
// IFA_F_TENTATIVE is 0x40; 0x80 is IFA_F_PERMANENT, 0x20 IFA_F_DADFAILED.
const sample = [
  '00000000000000000000000000000001 01 80 10 80       lo',
  'fe80000000000000cc1dd1fffe1a5811 02 40 20 c0     eth0', // permanent + tentative
  'fd000000000000000000000000000022 02 40 00 80     eth0',
  'fe80000000000000000000000000abcd 03 40 20 60     tap0', // dadfailed + tentative
  '',
].join('\n');

describe('tentativeFromProc: addresses still in duplicate address detection', () => {
  it('counts exactly the entries with the tentative flag', () => {
    expect(tentativeFromProc(sample)).toBe(2);
  });

  it('counts none in a table without tentative entries, and ignores lines that are not entries', () => {
    expect(tentativeFromProc('00000000000000000000000000000001 01 80 10 80 lo\n')).toBe(0);
    expect(tentativeFromProc('garbage line\n\nfe80 02 40 20 40 eth0\n')).toBe(0);
  });

  it('reads this process\'s own namespace when given no text', () => {
    const n = tentativeFromProc();
    expect(typeof n === 'number' && n >= 0).toBe(true);
  });
});
