// Runs the DHCP server in whatever network namespace it is started in
// (`ip netns exec <pod> node dhcp-server-child.ts config.json`), so the test
// process itself never binds port 67 anywhere.
//
// stdout, one JSON object a line: {"ready":true,"pid":N}, then
// {"log":level,"msg":...,"fields":...} per log call, and {"stats":{...}}
// whenever a line "stats" arrives on stdin. "close" or SIGTERM stops it.

import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { startDhcpServer } from '../../src/serve/dhcp4/server.ts';
import type { DhcpConfig } from '../../src/serve/dhcp4/config.ts';

const path = process.argv[2];
if (!path) {
  process.stderr.write('usage: dhcp-server-child.ts CONFIG.json\n');
  process.exit(2);
}
const config = JSON.parse(readFileSync(path, 'utf8')) as DhcpConfig;
const emit = (o: object) => process.stdout.write(JSON.stringify(o) + '\n');

const server = await startDhcpServer(config, {
  log: (level, msg, fields) => emit({ log: level, msg, ...(fields ? { fields } : {}) }),
});

let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  emit({ stats: server.stats() });
  await server.close();
  emit({ closed: true });
  process.exit(0);
};
process.on('SIGTERM', () => void stop());
process.on('SIGINT', () => void stop());

createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim() === 'stats') emit({ stats: server.stats() });
  else if (line.trim() === 'close') void stop();
});
emit({ ready: true, pid: process.pid });
