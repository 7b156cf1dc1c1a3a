// Sends a burst of hostile datagrams at the DHCP server from inside the VM's
// namespace: random bytes, broken copies of real requests, and requests
// from thousands of made-up MACs, both broadcast and unicast to the server
// identifier. Usage: dhcp-flood.ts <bind address> <count>. Prints one JSON
// line with what it sent.

import dgram from 'node:dgram';
import { randomBytes, randomInt } from 'node:crypto';
import { MSG, clientPacket } from './dhcp-packets.ts';

const [bindAddr, countText] = process.argv.slice(2);
const count = Number(countText ?? '2000');
if (!bindAddr) {
  process.stderr.write('usage: dhcp-flood.ts BIND_ADDRESS [COUNT]\n');
  process.exit(2);
}

const valid = [
  clientPacket({ type: MSG.DISCOVER, prl: [1, 3, 6, 121] }),
  clientPacket({ type: MSG.REQUEST, ciaddr: bindAddr }),
  clientPacket({ type: MSG.INFORM, ciaddr: bindAddr }),
];

function hostile(i: number): Buffer {
  switch (i % 4) {
    case 0:
      return randomBytes(randomInt(0, 600));
    case 1: {
      const b = Buffer.from(valid[i % valid.length]!);
      for (let k = randomInt(1, 10); k > 0; k--) b[randomInt(b.length)] = randomInt(256);
      return b.subarray(0, randomInt(200, b.length + 1));
    }
    case 2: {
      // A fresh MAC each time: the server must neither answer nor remember them all.
      const mac = [0x02, ...randomBytes(5)].map((x) => x.toString(16).padStart(2, '0')).join(':');
      return clientPacket({ type: MSG.DISCOVER, mac });
    }
    default: {
      const b = Buffer.from(valid[0]!);
      b[241] = 255; // option 53's length now runs past the end
      return b;
    }
  }
}

const sock = dgram.createSocket('udp4');
await new Promise<void>((resolve) => sock.bind({ address: bindAddr, port: 0 }, resolve));
sock.setBroadcast(true);
let sent = 0;
let failed = 0;
for (let i = 0; i < count; i++) {
  const to = i % 3 === 0 ? '169.254.75.1' : '255.255.255.255';
  await new Promise<void>((resolve) =>
    sock.send(hostile(i), 67, to, (err) => {
      if (err) failed++;
      else sent++;
      resolve();
    }),
  );
}
sock.close();
process.stdout.write(JSON.stringify({ sent, failed }) + '\n');
