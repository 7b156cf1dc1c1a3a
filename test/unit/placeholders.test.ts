import { describe, expect, it } from 'vitest';
import {
  PLACEHOLDERS,
  PlaceholderError,
  placeholderValues,
  substituteArg,
  substituteArgv,
  usedPlaceholders,
} from '../../src/handoff/placeholders.ts';

const input = { fds: [3, 4], mac: '02:00:0a:00:00:05', mtu: 1450, tap: 'tap0', bridge: 'br0' };

describe('placeholders', () => {
  it('fills QEMU and Cloud Hypervisor style arguments', () => {
    const argv = substituteArgv(
      [
        'qemu-system-x86_64',
        '-netdev', 'tap,id=n0,fds={fds},vhost=off',
        '-device', 'virtio-net-pci,netdev=n0,mac={mac},mq=on,vectors={vectors},host_mtu={mtu}',
        '--net', 'fd=[{fds_csv}],mac={mac},num_queues={ch_queues},mtu={mtu}',
        'fd={fd} tap={tap} bridge={bridge} queues={queues}',
      ],
      input,
    );
    expect(argv).toEqual([
      'qemu-system-x86_64',
      '-netdev', 'tap,id=n0,fds=3:4,vhost=off',
      '-device', 'virtio-net-pci,netdev=n0,mac=02:00:0a:00:00:05,mq=on,vectors=6,host_mtu=1450',
      '--net', 'fd=[3,4],mac=02:00:0a:00:00:05,num_queues=4,mtu=1450',
      'fd=3 tap=tap0 bridge=br0 queues=2',
    ]);
  });

  it('computes the derived values for one queue', () => {
    expect(placeholderValues({ fds: [7] })).toEqual({
      fd: '7', fds: '7', fds_csv: '7', queues: '1', vectors: '4', ch_queues: '2',
    });
  });

  it('leaves JSON and other braces alone', () => {
    const json = '{"driver":"virtio-net-pci","id":"n0","opts":{"a":[1,{}]}}';
    expect(substituteArg(json, placeholderValues(input))).toBe(json);
    for (const s of ['{}', '{ fd }', '{Fd}', '${HOME}', '{fd-1}', '}', '{', 'a{b', '{1}', '}{']) {
      expect(substituteArg(s, placeholderValues(input))).toBe(s);
    }
    expect(substituteArg('{"mac":"{mac}"}', placeholderValues(input))).toBe('{"mac":"02:00:0a:00:00:05"}');
  });

  it('treats {{ as an escaped brace', () => {
    const v = placeholderValues(input);
    expect(substituteArg('{{fd}', v)).toBe('{fd}');
    expect(substituteArg('{{{fd}', v)).toBe('{3');
    expect(substituteArg('{{{{', v)).toBe('{{');
    expect(substituteArg('x{{y}}', v)).toBe('x{y}}');
  });

  it('rejects unknown placeholders, naming them and the known ones', () => {
    let err: unknown;
    try {
      substituteArgv(['vmm', '--net', 'fd={fdz}'], input);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PlaceholderError);
    const e = err as PlaceholderError;
    expect(e.placeholder).toBe('fdz');
    expect(e.argIndex).toBe(2);
    expect(e.message).toContain('{fdz}');
    for (const k of Object.keys(PLACEHOLDERS)) expect(e.message).toContain(`{${k}}`);
    expect(() => usedPlaceholders(['{nope}'])).toThrow(/unknown placeholder \{nope\}/);
  });

  it('rejects a known placeholder with no value', () => {
    expect(() => substituteArgv(['{bridge}'], { fds: [3] })).toThrow(/\{bridge\}.*no value/);
    expect(() => substituteArgv(['{fd}'], { fds: [] })).toThrow(PlaceholderError);
  });

  it('lists the placeholders an argv uses', () => {
    expect(usedPlaceholders(['a', '{fd}{mac}', '{{tap}', '{fd}']).sort()).toEqual(['fd', 'mac']);
  });
});
