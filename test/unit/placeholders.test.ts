import { describe, expect, it } from 'vitest';
import {
  PLACEHOLDERS,
  PlaceholderError,
  placeholderValues,
  substituteArg,
  substituteArgv,
  usedPlaceholders,
  vmmFdNumbers,
  type PlaceholderInput,
} from '../../src/handoff/placeholders.ts';
import { checkVmmArgv, placeholderInputFor } from '../../src/serve/serve.ts';
import { plan, type PlanOptions } from '../../src/plan/plan.ts';
import { PodtapError } from '../../src/errors.ts';
import { MULTUS, SHAPES, linksOf } from '../helpers/shapes.ts';

const NIC0 = { fds: [3, 4], mac: '02:00:0a:00:00:05', mtu: 1450, tap: 'tap0', bridge: 'br0', interface: 'eth0' };
const input: PlaceholderInput = { nics: [NIC0] };

/** Three NICs on the redirect path (no bridges): fds as the VMM sees them. */
const THREE: PlaceholderInput = {
  nics: [
    { fds: [3, 4], mac: '0a:58:0a:16:00:05', mtu: 1500, tap: 'tap0', interface: 'eth0' },
    { fds: [5, 6], mac: '0a:58:0a:1e:00:05', mtu: 1500, tap: 'tap1', interface: 'net1' },
    { fds: [7, 8], mac: '5e:10:c0:a8:32:0a', mtu: 9000, tap: 'tap2', interface: 'net2' },
  ],
};

function caught(fn: () => unknown): PlaceholderError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(PlaceholderError);
    return e as PlaceholderError;
  }
  throw new Error('expected a PlaceholderError');
}

describe('placeholders', () => {
  it('fills QEMU and Cloud Hypervisor style arguments', () => {
    const argv = substituteArgv(
      [
        'qemu-system-x86_64',
        '-netdev', 'tap,id=n0,fds={fds},vhost=off',
        '-device', 'virtio-net-pci,netdev=n0,mac={mac},mq=on,vectors={vectors},host_mtu={mtu}',
        '--net', 'fd=[{fds_csv}],mac={mac},num_queues={ch_queues},mtu={mtu}',
        'fd={fd} tap={tap} bridge={bridge} queues={queues} if={interface}',
      ],
      input,
    );
    expect(argv).toEqual([
      'qemu-system-x86_64',
      '-netdev', 'tap,id=n0,fds=3:4,vhost=off',
      '-device', 'virtio-net-pci,netdev=n0,mac=02:00:0a:00:00:05,mq=on,vectors=6,host_mtu=1450',
      '--net', 'fd=[3,4],mac=02:00:0a:00:00:05,num_queues=4,mtu=1450',
      'fd=3 tap=tap0 bridge=br0 queues=2 if=eth0',
    ]);
  });

  it('computes the derived values for one queue', () => {
    expect(placeholderValues({ fds: [7] })).toEqual({
      fd: '7', fds: '7', fds_csv: '7', queues: '1', vectors: '4', ch_queues: '2',
    });
  });

  it('leaves JSON and other braces alone', () => {
    const json = '{"driver":"virtio-net-pci","id":"n0","opts":{"a":[1,{}]}}';
    expect(substituteArg(json, input)).toBe(json);
    for (const s of ['{}', '{ fd }', '{Fd}', '${HOME}', '{fd-1}', '}', '{', 'a{b', '{1}', '}{', '{fd:}', '{fd:a b}', '{fd:1234567890123456}']) {
      expect(substituteArg(s, input)).toBe(s);
    }
    expect(substituteArg('{"mac":"{mac}"}', input)).toBe('{"mac":"02:00:0a:00:00:05"}');
  });

  it('treats {{ as an escaped brace', () => {
    expect(substituteArg('{{fd}', input)).toBe('{fd}');
    expect(substituteArg('{{{fd}', input)).toBe('{3');
    expect(substituteArg('{{{{', input)).toBe('{{');
    expect(substituteArg('x{{y}}', input)).toBe('x{y}}');
    expect(substituteArg('{{fd:1}', THREE)).toBe('{fd:1}');
  });

  it('rejects unknown placeholders, naming them and the known ones', () => {
    const e = caught(() => substituteArgv(['vmm', '--net', 'fd={fdz}'], input));
    expect(e.placeholder).toBe('fdz');
    expect(e.argIndex).toBe(2);
    expect(e.message).toContain('{fdz}');
    for (const k of Object.keys(PLACEHOLDERS)) expect(e.message).toContain(`{${k}}`);
    expect(e.message).toContain('{name:N}');
    expect(() => usedPlaceholders(['{nope}'])).toThrow(/unknown placeholder \{nope\}/);
    expect(() => usedPlaceholders(['{fdz:1}'])).toThrow(/unknown placeholder \{fdz\}/);
  });

  it('rejects a known placeholder with no value', () => {
    expect(() => substituteArgv(['{bridge}'], { nics: [{ fds: [3] }] })).toThrow(/\{bridge\}.*no value/);
    expect(() => substituteArgv(['{fd}'], { nics: [{ fds: [] }] })).toThrow(PlaceholderError);
  });

  it('lists the placeholders an argv uses, with or without a NIC', () => {
    expect(usedPlaceholders(['a', '{fd}{mac}', '{{tap}', '{fd}', '{mtu:1}', '{fds:net1}']).sort()).toEqual(['fd', 'fds', 'mac', 'mtu']);
  });
});

describe('placeholders for several NICs', () => {
  it('selects a NIC by index or by pod interface; the plain form is NIC 0', () => {
    expect(substituteArg('{fd:1}', THREE)).toBe('5');
    expect(substituteArg('{fds:net1}', THREE)).toBe('5:6');
    expect(substituteArg('{mac:2}', THREE)).toBe('5e:10:c0:a8:32:0a');
    expect(substituteArg('{mtu:net2},{tap:2},{interface:1},{queues:2},{vectors:net2}', THREE)).toBe('9000,tap2,net1,2,6');
    expect(substituteArg('{fd}/{mac}/{tap}', THREE)).toBe('3/0a:58:0a:16:00:05/tap0');
    expect(substituteArg('{fd:0}', THREE)).toBe(substituteArg('{fd:eth0}', THREE));
    expect(
      substituteArgv(['-netdev', 'tap,id=n1,fds={fds:1}', '-device', 'virtio-net-pci,netdev=n1,mac={mac:net1},vectors={vectors:1}'], THREE),
    ).toEqual(['-netdev', 'tap,id=n1,fds=5:6', '-device', 'virtio-net-pci,netdev=n1,mac=0a:58:0a:1e:00:05,vectors=6']);
  });

  it('refuses an index or a name that is no NIC, listing the NICs', () => {
    for (const arg of ['{fd:3}', 'fds={fds:net9}', '{mac:12}']) {
      const e = caught(() => substituteArgv(['qemu', arg], THREE));
      expect(e.argIndex).toBe(1);
      expect(e.message).toMatch(/names no NIC; the NICs are 0=eth0, 1=net1, 2=net2$/);
    }
    expect(caught(() => substituteArg('{fd}', { nics: [] })).message).toMatch(/there is no NIC/);
    expect(caught(() => substituteArg('{fd:0}', { nics: [] })).message).toMatch(/the NICs are none/);
  });

  it('refuses {bridge} for a NIC on the redirect path, which has none', () => {
    const e = caught(() => substituteArgv(['br={bridge:1}'], { nics: [NIC0, THREE.nics[1]!] }));
    expect(e.placeholder).toBe('bridge');
    expect(e.message).toMatch(/\{bridge:1\} .*has no value here .*that NIC has no bridge/);
    expect(substituteArg('{bridge:0}', { nics: [NIC0, THREE.nics[1]!] })).toBe('br0');
    expect(() => substituteArg('{bridge}', THREE)).toThrow(/that NIC has no bridge/);
  });

  it('numbers the VMM\'s fds from 3, NIC after NIC', () => {
    expect(vmmFdNumbers([[40, 41], [17], [90, 91, 92]])).toEqual([[3, 4], [5], [6, 7, 8]]);
    expect(vmmFdNumbers([[], [9]])).toEqual([[], [3]]);
    expect(vmmFdNumbers([])).toEqual([]);
  });

  it('fills a planned multi-NIC VMM command line, and refuses {bridge} there before anything changes', () => {
    const opts: PlanOptions = { bridge: 'br0', tap: 'tap0', queues: 2, linkLocal: '169.254.75.1/32', linkLocalExplicit: false, antispoof: true, persistTap: false, support: { redirect: true } };
    const gen = (n: number) => ({ serverMac: `02:aa:00:00:0${n}:01`, portMac: `02:aa:00:00:0${n}:02`, bridgeMac: `02:aa:00:00:0${n}:03` });
    const p = plan(MULTUS, linksOf(MULTUS), opts, gen);
    const filled = substituteArgv(
      p.attachments.map((a) => `tap,id=n${a.nic},fds={fds:${a.nic}},mac={mac:${a.interface}}`),
      placeholderInputFor(p.attachments, vmmFdNumbers(p.attachments.map(() => [0, 0]))),
    );
    expect(filled).toEqual([
      'tap,id=n0,fds=3:4,mac=0a:58:0a:16:00:05',
      'tap,id=n1,fds=5:6,mac=0a:58:0a:1e:00:05',
      'tap,id=n2,fds=7:8,mac=5e:10:c0:a8:32:0a',
      'tap,id=n3,fds=9:10,mac=0a:58:0a:1f:00:05',
    ]);
    expect(() => checkVmmArgv(['{bridge}'], p.attachments, 2)).toThrow(PodtapError);
    expect(() => checkVmmArgv(['{fd:4}'], p.attachments, 2)).toThrow(/names no NIC; the NICs are 0=eth0, 1=net1, 2=net2, 3=net3/);
    const bridged = plan(SHAPES.ptp, linksOf(SHAPES.ptp), { ...opts, datapath: 'bridge' }, gen);
    expect(() => checkVmmArgv(['{bridge}', '{fds_csv:eth0}'], bridged.attachments, 2)).not.toThrow();
  });
});
