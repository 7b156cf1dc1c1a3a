// Run as its own process: imports the modules named on the command line in
// that order (dependencies first, so each figure is that module's own cost:
// reading, type stripping, compiling, evaluating; with the compile cache on,
// as podtap's main.ts has it) and prints one JSON line of
// [module, ms] pairs.

import { enableCompileCache } from 'node:module';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';

// As podtap's main does: the same (default) cache directory, so warm.
enableCompileCache();
const out: [string, number][] = [];
for (const m of process.argv.slice(2)) {
  const spec = m.startsWith('/') ? pathToFileURL(m).href : m;
  const s = performance.now();
  await import(spec);
  out.push([m, performance.now() - s]);
}
process.stdout.write(JSON.stringify(out) + '\n');
