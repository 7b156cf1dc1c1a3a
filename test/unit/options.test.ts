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
