// The entry point. The compile cache keeps compiled modules between runs,
// which halves podtap's start-up; it must be enabled before the rest of
// podtap is imported, hence the dynamic import. For `up` and `run` the
// namespace is read while that import runs.
import { enableCompileCache } from 'node:module';

enableCompileCache();
const argv = process.argv.slice(2);
const head = argv.indexOf('--') < 0 ? argv : argv.slice(0, argv.indexOf('--'));
if (head.includes('up') || head.includes('run')) (await import('./pod/prefetch.ts')).prefetchObservation();
const { main } = await import('./cli.ts');
process.exitCode = await main(argv);
