import { describe, expect, it } from 'vitest';
import { parseOptions } from '../../src/options.ts';
import { PodtapError } from '../../src/errors.ts';

describe('options', () => {
  it('has the documented defaults', () => {
    const p = parseOptions(['up'], {});
    expect(p.options).toMatchObject({ bridge: 'br0', tap: 'tap0', queues: 1, stateDir: '/run/podtap', logFormat: 'text', linkLocal: '169.254.75.1/32', dhcp: true, antispoof: true });
  });

  it('reads PODTAP_* variables, and flags win over them', () => {
    const env = { PODTAP_QUEUES: '4', PODTAP_BRIDGE: 'vmbr', PODTAP_TAP_OWNER: '107:108', PODTAP_NO_DHCP: 'true', PODTAP_LOG_FORMAT: 'json' };
    const p = parseOptions(['run', '--bridge', 'br9', '--', 'qemu', '-netdev', 'tap,fds={fds}'], env);
    expect(p.options).toMatchObject({ queues: 4, bridge: 'br9', tapOwner: { uid: 107, gid: 108 }, dhcp: false, logFormat: 'json' });
    expect(p.vmm).toEqual(['qemu', '-netdev', 'tap,fds={fds}']);
  });

  it('accumulates repeated --interface in NIC order, in both flag forms', () => {
    expect(parseOptions(['up', '--interface', 'eth0', '--interface=net1', '--interface', 'net2'], {}).options.interfaces).toEqual(['eth0', 'net1', 'net2']);
    expect(parseOptions(['up', '--interface', 'net2', '--interface', 'eth0'], {}).options.interfaces).toEqual(['net2', 'eth0']);
    expect(parseOptions(['inspect', '--interface', 'eth0'], {}).options.interfaces).toEqual(['eth0']);
    // No --interface: the only candidate, chosen at discovery.
    expect(parseOptions(['up'], {}).options.interfaces).toBeUndefined();
  });

  it('reads PODTAP_INTERFACE as a comma list; --interface replaces it', () => {
    expect(parseOptions(['up'], { PODTAP_INTERFACE: 'eth0,net1' }).options.interfaces).toEqual(['eth0', 'net1']);
    expect(parseOptions(['up'], { PODTAP_INTERFACE: ' net1 , eth0 ' }).options.interfaces).toEqual(['net1', 'eth0']);
    expect(parseOptions(['up', '--interface', 'net2'], { PODTAP_INTERFACE: 'eth0,net1' }).options.interfaces).toEqual(['net2']);
  });

  it('takes --datapath and PODTAP_DATAPATH, leaving the choice to podtap without them', () => {
    expect(parseOptions(['up', '--datapath', 'bridge'], {}).options.datapath).toBe('bridge');
    expect(parseOptions(['run', '--datapath=redirect', '--', 'qemu'], {}).options.datapath).toBe('redirect');
    expect(parseOptions(['up'], { PODTAP_DATAPATH: 'bridge' }).options.datapath).toBe('bridge');
    expect(parseOptions(['up', '--datapath', 'redirect'], { PODTAP_DATAPATH: 'bridge' }).options.datapath).toBe('redirect');
    expect(parseOptions(['up'], {}).options.datapath).toBeUndefined();
  });

  it('accumulates repeated --qmp-bus (and PODTAP_QMP_BUS) in NIC order; --force is a flag', () => {
    expect(parseOptions(['up', '--qmp', '/q', '--qmp-bus', 'rp1', '--qmp-bus', 'rp2'], {}).options.qmpBus).toEqual(['rp1', 'rp2']);
    expect(parseOptions(['up', '--qmp', '/q'], { PODTAP_QMP_BUS: 'rp1,rp2' }).options.qmpBus).toEqual(['rp1', 'rp2']);
    expect(parseOptions(['up', '--force'], {}).options.force).toBe(true);
    expect(parseOptions(['up'], { PODTAP_FORCE: 'yes' }).options.force).toBe(true);
    expect(parseOptions(['up'], {}).options.force).toBe(false);
  });

  it('accumulates --forward-port (TCP unless /udp), and reads PODTAP_FORWARD_PORTS as a comma list', () => {
    expect(parseOptions(['up', '--forward-port', '8080', '--forward-port', '53/udp', '--forward-port=53/tcp'], {}).options.forwardPorts).toEqual([
      { port: 8080, proto: 'tcp' },
      { port: 53, proto: 'udp' },
      { port: 53, proto: 'tcp' },
    ]);
    expect(parseOptions(['run', '--', 'vmm'], { PODTAP_FORWARD_PORTS: '22,5353/udp' }).options.forwardPorts).toEqual([
      { port: 22, proto: 'tcp' },
      { port: 5353, proto: 'udp' },
    ]);
    expect(parseOptions(['up'], {}).options.forwardPorts).toEqual([]);
  });

  it('lets a flag override its variable without counting as given twice', () => {
    expect(parseOptions(['up', '--tap', 'tap9'], { PODTAP_TAP: 'tap5' }).options.tap).toBe('tap9');
    expect(parseOptions(['up', '--persist-tap'], {}).options.persistTap).toBe(true);
  });

  it('ignores variables for options a command does not take', () => {
    expect(parseOptions(['down'], { PODTAP_QUEUES: '4' }).command).toBe('down');
  });

  const bad: [string[], Record<string, string>, RegExp][] = [
    [['up', '--queues', '0'], {}, /--queues is 0, out of range.*1 to 256/s],
    [['up', '--queues', 'many'], {}, /--queues is "many", not a whole number/],
    [['up'], { PODTAP_QUEUES: '999' }, /PODTAP_QUEUES is 999, out of range/],
    [['up', '--bridge', 'a-very-long-bridge-name'], {}, /not a valid interface name.*1 to 15/s],
    [['up', '--tap', 'tap/0'], {}, /--tap is "tap\/0", not a valid interface name/],
    [['up', '--interface', 'eth 0'], {}, /--interface is "eth 0"/],
    [['up', '--log-format', 'xml'], {}, /not a log format.*text or json/s],
    [['up', '--link-local', '10.0.0.1/32'], {}, /not inside 169\.254\.0\.0\/16/],
    [['up', '--link-local', '169.254.1.1'], {}, /gateway or metadata/],
    [['up', '--link-local', '169.254.0.0/16'], {}, /network or broadcast/],
    [['up', '--link-local', 'banana'], {}, /not an IPv4 address or CIDR/],
    [['up', '--tap-owner', 'qemu'], {}, /not UID or UID:GID/],
    [['up', '--lease-time', '5'], {}, /--lease-time is 5, out of range/],
    [['up', '--bridge', 'x0', '--tap', 'x0'], {}, /both named x0/],
    [['up', '--wat'], {}, /unknown option --wat/],
    [['up', '--queues'], {}, /--queues needs a value/],
    [['run'], {}, /needs a VMM command/],
    [['up', '--', 'qemu'], {}, /takes no command after --/],
    [['frobnicate'], {}, /unexpected argument "frobnicate"/],
    [[], {}, /no command given/],
    [['down', '--queues', '2'], {}, /--queues does not apply to `podtap down`/],
    [['up', '--persist-tap', '--queues', '2'], {}, /single-queue/],
    [['up', '--fd-socket-mode', '0600'], {}, /without --fd-socket/],
    [['up', '--fd-socket', '/x', '--fd-socket-mode', '9'], {}, /not an octal mode/],
    [['up'], { PODTAP_NO_DHCP: 'maybe' }, /PODTAP_NO_DHCP is "maybe", which is not a boolean/],
    [['exec', '--', 'qemu'], {}, /needs --fd-socket/],
    // Several NICs.
    [['up', '--interface', 'eth0', '--interface', 'net1', '--interface', 'eth0'], {}, /--interface names eth0 twice/],
    [['up'], { PODTAP_INTERFACE: 'eth0,net1,eth0' }, /PODTAP_INTERFACE names eth0 twice/],
    [['up'], { PODTAP_INTERFACE: 'eth0,' }, /PODTAP_INTERFACE is "", not a valid interface name/],
    [['up'], { PODTAP_INTERFACE: 'eth0,net#1' }, /PODTAP_INTERFACE is "net#1", not a valid interface name/],
    [['up', '--interface', 'br0'], {}, /--interface br0 is also the bridge or tap name/],
    [['up', '--datapath', 'tc'], {}, /--datapath is "tc", not a data path.*bridge or redirect/s],
    [['up'], { PODTAP_DATAPATH: 'macvtap' }, /PODTAP_DATAPATH is "macvtap", not a data path/],
    [['down', '--datapath', 'bridge'], {}, /--datapath does not apply to `podtap down`/],
    // Any other option given twice.
    [['up', '--tap', 'tap0', '--tap', 'tap9'], {}, /--tap is given twice \(--tap and --tap\)/],
    [['up', '--bridge=br1', '--bridge', 'br2'], {}, /--bridge is given twice/],
    [['up', '--datapath', 'bridge', '--datapath', 'redirect'], {}, /--datapath is given twice/],
    [['up', '--queues', '2', '--queues', '2'], {}, /--queues is given twice/],
    [['up', '--force', '--force'], {}, /--force is given twice/],
    [['up', '--fd-socket', '/a', '--fd-socket', '/b'], {}, /--fd-socket is given twice/],
    [['up', '--qmp', '/a', '--qmp', '/b'], {}, /--qmp is given twice/],
    // A persistent tap is opened by name: no fds to serve.
    [['up', '--persist-tap', '--fd-socket', '/run/fds.sock'], {}, /--persist-tap and --fd-socket both given/],
    [['up', '--fd-socket', '/run/fds.sock'], { PODTAP_PERSIST_TAP: '1' }, /--persist-tap and --fd-socket both given/],
    [['up', '--qmp-bus', 'rp1'], {}, /--qmp-bus without --qmp/],
    [['up', '--qmp', '/q', '--qmp-bus', '1rp'], {}, /--qmp-bus is "1rp", not a QEMU device id/],
    [['up', '--forward-port', '8080', '--forward-port', '8080/tcp'], {}, /--forward-port gives 8080\/tcp twice/],
    [['up', '--forward-port', '0'], {}, /--forward-port is 0, out of range/],
    [['up', '--forward-port', '70000'], {}, /--forward-port is 70000, out of range/],
    [['up', '--forward-port', '80/sctp'], {}, /--forward-port is "80\/sctp", not PORT\[\/tcp\|\/udp\]/],
    [['up'], { PODTAP_FORWARD_PORTS: '80,,81' }, /PODTAP_FORWARD_PORTS is "", not PORT/],
    [['down', '--forward-port', '80'], {}, /--forward-port does not apply to `podtap down`/],
  ];
  it.each(bad)('refuses %j %j with a message naming the value and the fix', (argv, env, message) => {
    let err: unknown;
    try {
      parseOptions(argv, env);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PodtapError);
    const e = err as PodtapError;
    expect(e.describe()).toMatch(message);
    expect(e.hint).toBeTruthy();
    expect(e.exitCode).toBe(2);
  });
});
