import { defineConfig } from 'vitest/config';

// Namespace and guest tests are real processes on a 2-core machine: keep
// parallelism low and timeouts generous; unit tests are fast either way.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 180_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
