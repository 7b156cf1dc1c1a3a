// The images the container tests run, built on this machine from this
// checkout: the stand-in base (base-image.sh: Debian bookworm + Node 24 +
// npm, once per machine) and the Dockerfile's two targets on top of it.
//
// Builds run podman in the root namespace with `--network host` (see
// hostPodman): the build's apt-get and npm reach the package registries, and
// no network is created. podman's layer cache makes a rebuild of an unchanged
// checkout take seconds; a change in src/ re-runs only `npm run build` and
// the COPY steps after it. The tests run the images by ID, so a concurrent
// build of another checkout retagging them changes nothing under a test.

import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { CONTAINERS_CONF, REPO_ROOT, hostPodman } from '../helpers/engine.ts';
import { run } from '../helpers/netns.ts';

export const BASE_IMAGE = 'localhost/podtap-base:bookworm-node24';
export const TARGETS = {
  agent: 'localhost/podtap-test:agent',
  qemu: 'localhost/podtap-test:qemu',
} as const;
export type Target = keyof typeof TARGETS;

/** The host's CA bundle, with the CA of the TLS proxy the registries are reached through. */
const CA_BUNDLE = '/etc/ssl/certs/ca-certificates.crt';

/** The tree to build: this checkout, or PODTAP_IMAGE_CONTEXT (e.g. a `git worktree` of another commit). */
export function buildContext(): string {
  return process.env.PODTAP_IMAGE_CONTEXT || REPO_ROOT;
}

export interface BaseImage {
  image: string;
  /** False when base-image.sh found it up to date. */
  built: boolean;
  ms: number;
}

/** Builds the base image unless this machine has it with the same inputs. */
export async function ensureBaseImage(): Promise<BaseImage> {
  const t0 = performance.now();
  const r = await run('sh', [join(REPO_ROOT, 'test/container/base-image.sh')], { timeoutMs: 900_000, env: { CONTAINERS_CONF } });
  const image = r.stdout.trim().split('\n').pop() ?? '';
  if (image !== BASE_IMAGE) throw new Error(`base-image.sh printed ${JSON.stringify(image)}, expected ${BASE_IMAGE}\n${r.stderr}`);
  return { image, built: !/is up to date/.test(r.stderr), ms: Math.round(performance.now() - t0) };
}

export interface BuiltImage {
  target: Target;
  tag: string;
  /** Image ID (hex), what the tests run. */
  id: string;
  ms: number;
  /** Build steps podman took from its layer cache. */
  cachedSteps: number;
}

function tail(text: string, lines: number): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

/**
 * Builds one target of the Dockerfile on the base image: `agent` is the
 * Dockerfile's default target (no --target, as a user builds it), `qemu` is
 * `--target qemu`.
 */
export async function buildPodtapImage(target: Target, context = buildContext()): Promise<BuiltImage> {
  const t0 = performance.now();
  const dir = await mkdtemp('/tmp/podtap-build-');
  try {
    const args = [
      'build', '--network', 'host', '--pull=never', '--layers',
      '--build-arg', `BASE=${BASE_IMAGE}`,
      '--iidfile', join(dir, 'iid'),
      '--tag', TARGETS[target],
      '--file', join(context, 'Dockerfile'),
    ];
    if (target !== 'agent') args.push('--target', target);
    // npm ci in the build must trust the proxy's CA (apt uses plain HTTP).
    if (existsSync(CA_BUNDLE)) args.push('--volume', `${CA_BUNDLE}:${CA_BUNDLE}:ro`, '--build-arg', `CA_BUNDLE=${CA_BUNDLE}`);
    args.push(context);
    const r = await hostPodman(args, { reject: false, timeoutMs: 900_000 });
    if (r.exitCode !== 0) {
      throw new Error(`podman build of the ${target} image from ${context} failed (exit ${r.exitCode}):\n${tail(`${r.stdout}\n${r.stderr}`, 80)}`);
    }
    const id = (await readFile(join(dir, 'iid'), 'utf8')).trim().replace(/^sha256:/, '');
    return { target, tag: TARGETS[target], id, ms: Math.round(performance.now() - t0), cachedSteps: r.stdout.split('Using cache').length - 1 };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
