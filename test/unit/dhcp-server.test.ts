import { describe, expect, it } from 'vitest';
import { BoundedSet, FOREIGN_MAC_MEMORY, RateLimit } from '../../src/serve/dhcp4/server.ts';

describe('server bookkeeping stays bounded', () => {
  it('remembers at most its cap of MACs, forgetting the oldest', () => {
    const seen = new BoundedSet(FOREIGN_MAC_MEMORY);
    for (let i = 0; i < 50_000; i++) seen.add(`mac-${i}`);
    expect(seen.size).toBe(FOREIGN_MAC_MEMORY);
    expect(seen.add('mac-49999')).toBe(false); // still remembered: not logged again
    expect(seen.add('mac-0')).toBe(true); // long forgotten: logged again
  });

  it('rate-limits per key and reports how many were suppressed', () => {
    const limit = new RateLimit(6);
    const t0 = 1_000_000;
    const allowed = Array.from({ length: 20 }, () => limit.take('malformed:truncated', t0)).filter((s) => s >= 0);
    expect(allowed).toHaveLength(6);
    // Another reason has its own budget.
    expect(limit.take('relayed', t0)).toBe(0);
    // Ten seconds refill one token; the line then says 14 were held back.
    expect(limit.take('malformed:truncated', t0 + 10_000)).toBe(14);
    expect(limit.take('malformed:truncated', t0 + 10_000)).toBe(-1);
  });

  it('does not grow without bound in keys', () => {
    const limit = new RateLimit(1);
    for (let i = 0; i < 10_000; i++) limit.take(`k${i}`, 0);
    // No observable size, but a flood of keys must not throw or slow down.
    expect(limit.take('k9999', 0)).toBe(-1);
  });
});
