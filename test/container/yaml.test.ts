// The YAML reader the manifest tests play init/*.yaml with (yaml.ts): what it
// reads, and that it refuses, with the line, what it does not understand or
// what YAML 1.1 and 1.2 (Kubernetes' parser and newer ones) read differently.
// No podman needed.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/engine.ts';
import { parseYaml } from './yaml.ts';

describe('yaml.ts', () => {
  it('reads block mappings and sequences (also at the key\'s indentation), "- key:" items, flow collections, quoted and plain scalars, and comments', () => {
    const text = [
      '# a comment line',
      'apiVersion: v1',
      'kind: Pod   # trailing comment',
      'metadata:',
      '  name: "quoted # not a comment"',
      'spec:',
      '  list:',
      '  - a',
      '  - "b: c"',
      '  - 3',
      '  nested:',
      '    - name: x',
      '      args:',
      '        - -m',
      '        - "1024"',
      '        - tap,id=net0,fd={fd}',
      '      flow: { name: tun, hostPath: { path: /dev/net/tun, type: CharDevice } }',
      '      caps: ["NET_ADMIN", ALL]',
      '    -',
      '      name: why',
      '      empty:',
      '      single: \'it\'\'s\'',
      '  plain: a#b c',
      '  numbers: [0, -3, 1.5, 10]',
      '  words: [true, false, null, ~, v1.2.3, 10.88.0.1]',
      '  url: http://x/y',
    ].join('\n');
    expect(parseYaml(text)).toEqual({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'quoted # not a comment' },
      spec: {
        list: ['a', 'b: c', 3],
        nested: [
          {
            name: 'x',
            args: ['-m', '1024', 'tap,id=net0,fd={fd}'],
            flow: { name: 'tun', hostPath: { path: '/dev/net/tun', type: 'CharDevice' } },
            caps: ['NET_ADMIN', 'ALL'],
          },
          { name: 'why', empty: null, single: "it's" },
        ],
        plain: 'a#b c',
        numbers: [0, -3, 1.5, 10],
        words: [true, false, null, null, 'v1.2.3', '10.88.0.1'],
        url: 'http://x/y',
      },
    });
  });

  it('reads both manifests into Pods', () => {
    for (const f of ['pod-entrypoint.yaml', 'pod-sidecar.yaml']) {
      const pod = parseYaml(readFileSync(join(REPO_ROOT, 'init', f), 'utf8')) as { kind: string; spec: { containers: { name: string; image: string }[] } };
      expect(pod.kind, f).toBe('Pod');
      expect(pod.spec.containers.every((c) => typeof c.image === 'string'), f).toBe(true);
    }
  });

  it.each([
    ['a:\n\tb: 1', /line 2: tab/],
    ['a: &x 1', /line 1: unsupported YAML \(&\)/],
    ['a: *x', /line 1: unsupported YAML \(\*\)/],
    ['a: !!str 1', /line 1: unsupported YAML \(!\)/],
    ['a: |\n  text', /line 1: block scalars/],
    ['a: 0660', /line 1: 0660 reads as octal in YAML 1\.1/],
    ['a: yes', /line 1: yes is a boolean in YAML 1\.1/],
    ['a: [on]', /line 1: on is a boolean in YAML 1\.1/],
    ['a: 1\n---\nb: 2', /line 2: more than one document/],
    ['a: 1\na: 2', /line 2: duplicate key a/],
    ['a: {b: 1, b: 2}', /line 1: duplicate key b/],
    ['a: "open', /line 1: unterminated quoted scalar/],
    ['a: plain\n  continued', /line 2: a value continued on the next line/],
    ['a:\n  b: 1\n c: 2', /line 3: unexpected indentation/],
    ['a:\n  b: 1\n   c: 2', /line 3: a value continued on the next line/],
    ['a: n', /line 1: n is a boolean in YAML 1\.1/],
    ['a: [1, 2', /line 1: expected ',' or '\]'/],
    ['just text', /line 1: expected "key: value"/],
    ['  a: 1', /line 1: the document must start at column 1/],
  ])('refuses %j', (text, why) => {
    expect(() => parseYaml(text)).toThrow(why);
  });
});
