// Reaching the VM the Kubernetes way, with init/pod-sidecar.yaml's podtap
// container played by podman 4.3 (`podman kube play`) in a node namespace of
// the test's own. The VM is the guest-namespace stand-in, run on the machine
// behind podtap's socket (test/container/host-vmm.ts): a real network stack
// that gets the pod's address from podtap by DHCP and runs a TCP and a UDP
// server. On both data paths.
//
// - --forward-port (PODTAP_FORWARD_PORTS in the container): a client inside
//   the pod's namespace (`podman exec` into podtap's container: what
//   `kubectl port-forward` and exec probes do) connecting to 127.0.0.1:PORT
//   reaches the guest's server, which sees podtap's link-local address as
//   the peer; a port not forwarded reaches nothing. podman has no
//   port-forward command: this is the mechanism kubectl's would use.
// - hostPort: the Pod's `ports: [{containerPort, hostPort}]`; a client in
//   the node's namespace connecting to the node's address on the host port
//   reaches the guest's server (podman's DNAT to the pod's address, which is
//   the guest's), no podtap involved.
// - podtap status counts the forwarded connections; pod stop restores the
//   pod's namespace (podtap exits 0) and tap-guest goes with the TAP.
//
// The manifest's VMM container is left out (the VMM is on the machine), and
// the podtap container gets the variables and the port; the rest is as shipped.

import { describe, expect, it } from 'vitest';
import { podmanUnavailable, type NodeEngine } from '../helpers/engine.ts';
import { HELPER_MARK, run } from '../helpers/netns.ts';
import type { ReadyLine } from '../helpers/podtap.ts';
import { startHostGuest } from './host-vmm.ts';
import { containerOf, envOf, forEngine, hostPathOf, jsonLog, kubeSuite, logsOf, play, setEnv, untilReady } from './kube.ts';
import { execa } from 'execa';

const why = podmanUnavailable();
if (why) console.warn(`test/container/forward.test.ts: skipped: ${why}`);

const TCP = 8080; // forwarded, and the container port of the host port
const UDP = 8053; // forwarded
const TCP_CLOSED = 8081; // the guest serves it, podtap does not forward it
const HOST_PORT = 18080;

// The guest's servers: each answer says who the guest saw as the peer.
const SERVERS = `
const net = require('node:net'), dgram = require('node:dgram');
for (const port of [${TCP}, ${TCP_CLOSED}]) net.createServer((s) => s.once('data', (d) => s.end('guest-tcp ' + port + ' ' + s.remoteAddress + ' ' + d))).listen(port, '0.0.0.0');
const u = dgram.createSocket('udp4');
u.on('message', (m, r) => u.send('guest-udp ' + r.address + ' ' + m, r.port, r.address));
u.bind(${UDP}, '0.0.0.0', () => console.log('listening'));
`;

// A client: one TCP exchange, or one UDP one; prints the answer or the error code.
const CLIENT = `
const [proto, host, port, text] = process.argv.slice(1);
const done = (s) => { console.log(s); process.exit(0); };
setTimeout(() => done('TIMEOUT'), 5000);
if (proto === 'tcp') {
  const s = require('node:net').connect(+port, host, () => s.write(text));
  let got = ''; s.on('data', (d) => (got += d)); s.on('end', () => done(got)); s.on('error', (e) => done(e.code));
} else {
  const u = require('node:dgram').createSocket('udp4');
  u.on('message', (m) => done(String(m))); u.on('error', (e) => done(e.code));
  u.send(text, +port, host);
}
`;

async function inPod(engine: NodeEngine, container: string, proto: 'tcp' | 'udp', port: number, text: string): Promise<string> {
  const r = await engine.podman(['exec', container, 'node', '-e', CLIENT, proto, '127.0.0.1', String(port), text]);
  return r.stdout.trim();
}

async function inNode(engine: NodeEngine, host: string, port: number, text: string): Promise<string> {
  const r = await run('nsenter', [`--net=${engine.netnsPath}`, '--', process.execPath, '-e', CLIENT, 'tcp', host, String(port), text], { env: { [HELPER_MARK]: '1' } });
  return r.stdout.trim();
}

describe.skipIf(why !== undefined)(why ? `--forward-port and hostPort in podman (skipped: ${why})` : '--forward-port and hostPort in podman', () => {
  const suite = kubeSuite('pod-sidecar.yaml', ['agent']);
  const { cleanup, images } = suite;

  it.each(['redirect', 'bridge'] as const)('%s data path: 127.0.0.1:PORT in the pod reaches the guest\'s TCP and UDP servers, and the node\'s address on the hostPort reaches its TCP server', async (datapath) => {
    const { engine, dir } = await suite.node();

    const m = forEngine(suite.manifest, engine);
    m.spec.containers = m.spec.containers.filter((c) => c.name === 'podtap');
    const podtap = containerOf(m, 'podtap');
    podtap.image = images.agent.id;
    setEnv(podtap, 'PODTAP_FORWARD_PORTS', `${TCP}/tcp,${UDP}/udp`);
    setEnv(podtap, 'PODTAP_DATAPATH', datapath);
    podtap.ports = [{ containerPort: TCP, hostPort: HOST_PORT }];
    const started = Date.now();
    const pod = await play(engine, m, dir);
    const c = pod.container('podtap');
    const ready = JSON.parse(await untilReady(engine, pod, 'podtap')) as ReadyLine;
    expect(ready).toMatchObject({ datapath, ip: `${pod.net.ip}/${pod.net.prefix}`, forwardPorts: [`${TCP}/tcp`, `${UDP}/udp`] });
    const podtapLink = ready.linkLocal.split('/')[0]!;

    // The VMM, on the machine: the socket is in the pod's volume.
    const g = await startHostGuest(await hostPathOf(pod, podtap, envOf(podtap, 'PODTAP_FD_SOCKET')!), dir, cleanup);
    expect(await g.dhcp()).toBe(`${pod.net.ip}/${pod.net.prefix}`);
    const servers = execa('ip', ['netns', 'exec', g.ns, process.execPath, '-e', SERVERS], { reject: false, stdin: 'ignore', env: { [HELPER_MARK]: '1' } });
    cleanup.pid(servers.pid!);
    await new Promise<void>((resolve, reject) => {
      servers.stdout?.on('data', (d: Buffer) => /listening/.test(String(d)) && resolve());
      void servers.then((r) => reject(new Error(`the guest's servers exited: ${r.stderr}`)));
    });

    // Forwarded: from inside the pod, through podtap, to the guest; the guest sees podtap's address.
    expect(await inPod(engine, c, 'tcp', TCP, 'via-forward')).toBe(`guest-tcp ${TCP} ${podtapLink} via-forward`);
    expect(await inPod(engine, c, 'udp', UDP, 'via-forward')).toBe(`guest-udp ${podtapLink} via-forward`);
    // Not forwarded: nothing listens on 127.0.0.1 there, though the guest serves it.
    expect(await inPod(engine, c, 'tcp', TCP_CLOSED, 'x')).toBe('ECONNREFUSED');
    // The pod's address is the guest's: from the node, the port answers directly.
    expect(await inNode(engine, pod.net.ip, TCP_CLOSED, 'direct')).toBe(`guest-tcp ${TCP_CLOSED} ${pod.net.gateway} direct`);

    // hostPort: the node's address (the gateway the pod sees), port HOST_PORT.
    const dnat = (await run('ip', ['netns', 'exec', engine.ns, 'iptables-save', '-t', 'nat'])).stdout;
    expect(dnat, 'podman\'s DNAT for the host port').toMatch(new RegExp(`--dport ${HOST_PORT} .*--to-destination ${pod.net.ip.replaceAll('.', '\\.')}:${TCP}`));
    expect(await inNode(engine, pod.net.gateway, HOST_PORT, 'via-hostport')).toBe(`guest-tcp ${TCP} ${pod.net.gateway} via-hostport`);

    // podtap counts what it forwarded.
    const status = JSON.parse((await engine.podman(['exec', c, 'podtap', 'status', '--json'])).stdout) as { forward: { port: number; proto: string; total: number }[] };
    expect(status.forward).toEqual([
      expect.objectContaining({ port: TCP, proto: 'tcp', total: 1 }),
      expect.objectContaining({ port: UDP, proto: 'udp', total: 1 }),
    ]);
    expect((await engine.podman(['exec', c, 'podtap', 'status'])).stdout).toMatch(new RegExp(`^forwarded ports: ${TCP}/tcp \\(0 open, 1 total\\), ${UDP}/udp \\(\\d open, 1 total\\)$`, 'm'));

    // Pod deletion: podtap restores the namespace and exits 0; the guest's TAP goes with it.
    const stoppedAt = Date.now();
    await engine.podman(['pod', 'stop', '--time', '30', pod.name]);
    const tail = jsonLog((await logsOf(engine, c, stoppedAt)).stderr).map((l) => l.msg);
    expect(tail).toEqual(expect.arrayContaining([expect.stringMatching(/^namespace restored\b/)]));
    expect((await engine.podman(['container', 'inspect', '--format', '{{.State.ExitCode}}', c])).stdout).toBe('0');
    const vmm = await Promise.race([g.proc, new Promise<undefined>((r) => setTimeout(r, 10_000, undefined))]);
    expect(vmm?.exitCode, `tap-guest still running after the TAP went:\n${g.stderr()}`).toBe(0);
    await engine.podman(['kube', 'down', pod.file]);
    expect(await engine.removeAll()).toEqual([]);
    console.info(`forward (${datapath}): ${Date.now() - started} ms`);
  });
});
