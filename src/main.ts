// The entry point. The compile cache keeps the type-stripped, compiled
// modules between runs, which halves podtap's start-up; it must be enabled
// before the rest of podtap is imported, hence the dynamic import.
import { enableCompileCache } from 'node:module';

enableCompileCache();
const { main } = await import('./cli.ts');
process.exitCode = await main(process.argv.slice(2));
