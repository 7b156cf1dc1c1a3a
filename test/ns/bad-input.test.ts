// Every option and PODTAP_* variable with a bad value: podtap must refuse
// before it changes anything, with one message that names the bad value (and
// where it came from) and a "fix:" line saying what would be accepted; a
// non-zero exit, nothing on stdout, no stack trace, and the namespace exactly
// as it was. See src/options.ts for the options.

import { chmodSync, chownSync, mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cleanup, runInPod } from '../helpers/netns.ts';
import { makePod, type Pod } from '../helpers/pods.ts';
import { snapshot, diffSnapshots, type Snapshot } from '../helpers/snapshot.ts';
import { PODTAP, stateDirFor } from '../helpers/podtap.ts';
import { limiter } from '../helpers/limit.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

// Fixtures: a regular file, a directory, a read-only directory, a corrupt journal.
const TMP = mkdtempSync('/tmp/podtap-bad-input-');
cleanup.path(TMP);
const FILE = join(TMP, 'a-file');
writeFileSync(FILE, 'not a directory\n');
const DIR = join(TMP, 'a-dir');
mkdirSync(DIR);
const RO = join(TMP, 'read-only');
mkdirSync(RO);
const CORRUPT = join(TMP, 'corrupt-state');
mkdirSync(CORRUPT);
writeFileSync(join(CORRUPT, 'journal.json'), '{"crc32":"00000000","body":"{}"}\n');
const SOCK = join(TMP, 'podtap.sock'); // never created: these runs are refused first
// State dirs that are not podtap's own: another user's, writable by others,
// a symlink (to a good directory). Each is refused before anything in it is
// read or written.
const OTHERS = join(TMP, 'others-state');
mkdirSync(OTHERS, { mode: 0o700 });
chownSync(OTHERS, 4242, 4242);
const WORLD = join(TMP, 'world-state');
mkdirSync(WORLD);
chmodSync(WORLD, 0o1777);
const GROUP = join(TMP, 'group-state');
mkdirSync(GROUP);
chmodSync(GROUP, 0o770);
const GOOD = join(TMP, 'good-state');
mkdirSync(GOOD, { mode: 0o700 });
const LINKED = join(TMP, 'linked-state');
symlinkSync(GOOD, LINKED);
// fd-socket paths podtap must not take: a file, a symlink, too long for sun_path.
const NOT_A_SOCKET = join(TMP, 'fds-file.sock');
writeFileSync(NOT_A_SOCKET, 'a file\n');
const LINKED_SOCKET = join(TMP, 'fds-link.sock');
symlinkSync(join(TMP, 'elsewhere.sock'), LINKED_SOCKET);
const LONG_SOCKET = join(TMP, `${'s'.repeat(120 - TMP.length)}.sock`);

interface Bad {
  name: string;
  /** Command and options; a fresh --state-dir is added unless `stateDir: false`. */
  argv: string[];
  env?: Record<string, string>;
  status: number;
  /** Must match the message: the bad value, and where it came from. */
  says: RegExp;
  /** Must match the fix line: what would be accepted. */
  accepts?: RegExp;
  wrap?: string[];
  stateDir?: false;
  on?: 'calico';
}

const NAME_FIX = /1 to 15 characters/;
const LL_FIX = /169\.254\.0\.0\/16/;
const BOOL_FIX = /1\/true\/yes or 0\/false\/no/;

const CASES: Bad[] = [
  // --queues / PODTAP_QUEUES
  { name: 'queues 0', argv: ['up', '--queues', '0'], status: 2, says: /--queues is 0, out of range/, accepts: /from 1 to 256/ },
  { name: 'queues 257', argv: ['up', '--queues', '257'], status: 2, says: /--queues is 257, out of range/, accepts: /from 1 to 256/ },
  { name: 'queues -1', argv: ['up', '--queues', '-1'], status: 2, says: /--queues is "-1", not a whole number/, accepts: /from 1 to 256/ },
  { name: 'queues two', argv: ['up', '--queues', 'two'], status: 2, says: /--queues is "two", not a whole number/, accepts: /from 1 to 256/ },
  { name: 'queues 1.5', argv: ['up', '--queues', '1.5'], status: 2, says: /--queues is "1\.5"/, accepts: /from 1 to 256/ },
  { name: 'queues empty', argv: ['up', '--queues='], status: 2, says: /--queues is ""/, accepts: /from 1 to 256/ },
  { name: 'queues without a value', argv: ['up', '--queues'], status: 2, says: /--queues needs a value/, accepts: /--queues N/ },
  { name: 'PODTAP_QUEUES 1000', argv: ['up'], env: { PODTAP_QUEUES: '1000' }, status: 2, says: /PODTAP_QUEUES is 1000, out of range/, accepts: /from 1 to 256/ },
  { name: 'queues with 23 digits', argv: ['up', '--queues', '99999999999999999999999'], status: 2, says: /--queues is "?99999999999999999999999/, accepts: /from 1 to 256/ },
  { name: 'queues 2 with --persist-tap', argv: ['up', '--queues', '2', '--persist-tap'], status: 2, says: /--persist-tap makes a single-queue tap/, accepts: /drop --queues or --persist-tap/ },

  // interface, bridge and tap names
  { name: 'bridge name too long', argv: ['up', '--bridge', 'this-name-is-too-long'], status: 2, says: /--bridge is "this-name-is-too-long", not a valid interface name/, accepts: NAME_FIX },
  { name: 'tap name too long', argv: ['up', '--tap', 'tap-name-is-too-long'], status: 2, says: /--tap is "tap-name-is-too-long", not a valid interface name/, accepts: NAME_FIX },
  { name: 'interface name too long', argv: ['up', '--interface', 'eth0-name-too-long'], status: 2, says: /--interface is "eth0-name-too-long", not a valid interface name/, accepts: NAME_FIX },
  { name: 'bridge name with a space', argv: ['up', '--bridge', 'br 0'], status: 2, says: /--bridge is "br 0"/, accepts: NAME_FIX },
  { name: 'bridge name with a slash', argv: ['up', '--bridge', 'br/0'], status: 2, says: /--bridge is "br\/0"/, accepts: NAME_FIX },
  { name: 'tap name with a colon', argv: ['up', '--tap', 'tap:0'], status: 2, says: /--tap is "tap:0"/, accepts: NAME_FIX },
  { name: 'bridge name empty', argv: ['up', '--bridge', ''], status: 2, says: /--bridge is ""/, accepts: NAME_FIX },
  { name: 'tap name "."', argv: ['up', '--tap', '.'], status: 2, says: /--tap is "\."/, accepts: NAME_FIX },
  { name: 'tap name ".."', argv: ['up', '--tap', '..'], status: 2, says: /--tap is "\.\."/, accepts: NAME_FIX },
  { name: 'PODTAP_BRIDGE too long', argv: ['up'], env: { PODTAP_BRIDGE: 'bridge-of-16-chr' }, status: 2, says: /PODTAP_BRIDGE is "bridge-of-16-chr", not a valid interface name/, accepts: NAME_FIX },
  { name: 'PODTAP_TAP with a slash', argv: ['up'], env: { PODTAP_TAP: 'a/b' }, status: 2, says: /PODTAP_TAP is "a\/b"/, accepts: NAME_FIX },
  { name: 'PODTAP_INTERFACE empty', argv: ['up'], env: { PODTAP_INTERFACE: '' }, status: 2, says: /PODTAP_INTERFACE is ""/, accepts: NAME_FIX },
  { name: 'bridge and tap the same', argv: ['up', '--bridge', 'tap0'], status: 2, says: /the bridge and the tap are both named tap0/, accepts: /different names/ },
  { name: 'interface is the bridge name', argv: ['up', '--interface', 'br0'], status: 2, says: /--interface br0 is also the bridge or tap name/, accepts: /new names/ },
  { name: 'interface that does not exist', argv: ['up', '--interface', 'eth9'], status: 4, says: /interface eth9 does not exist in this network namespace \(links: lo .*eth0/, accepts: /name an existing interface/ },
  { name: 'interface that is the loopback', argv: ['up', '--interface', 'lo'], status: 4, says: /interface lo is a loopback, not a pod interface/, accepts: /name the CNI interfaces/ },
  { name: 'interface named twice', argv: ['up', '--interface', 'eth0', '--interface', 'eth0'], status: 2, says: /--interface names eth0 twice/, accepts: /name each pod interface once/ },
  { name: 'PODTAP_INTERFACE with an empty entry', argv: ['up'], env: { PODTAP_INTERFACE: 'eth0,,net1' }, status: 2, says: /PODTAP_INTERFACE is ""/, accepts: NAME_FIX },
  { name: 'PODTAP_INTERFACE naming one twice', argv: ['up'], env: { PODTAP_INTERFACE: 'eth0, eth0' }, status: 2, says: /PODTAP_INTERFACE names eth0 twice/ },
  { name: 'interface that is the tap name', argv: ['up', '--interface', 'eth0', '--interface', 'tap0'], status: 2, says: /--interface tap0 is also the bridge or tap name/ },

  // --datapath, --force
  { name: 'datapath tc', argv: ['up', '--datapath', 'tc'], status: 2, says: /--datapath is "tc", not a data path/, accepts: /use bridge or redirect/ },
  { name: 'datapath empty', argv: ['up', '--datapath', ''], status: 2, says: /--datapath is "", not a data path/, accepts: /use bridge or redirect/ },
  { name: 'PODTAP_DATAPATH Bridge', argv: ['up'], env: { PODTAP_DATAPATH: 'Bridge' }, status: 2, says: /PODTAP_DATAPATH is "Bridge", not a data path/, accepts: /use bridge or redirect/ },
  { name: 'datapath given twice', argv: ['up', '--datapath', 'bridge', '--datapath', 'redirect'], status: 2, says: /--datapath is given twice/, accepts: /give --datapath once/ },
  { name: 'datapath with down', argv: ['down', '--datapath', 'bridge'], status: 2, says: /--datapath does not apply to `podtap down`/ },
  { name: 'force with a value', argv: ['up', '--force=1'], status: 2, says: /--force takes no value/, accepts: /--force alone/ },
  { name: 'PODTAP_FORCE sometimes', argv: ['up'], env: { PODTAP_FORCE: 'sometimes' }, status: 2, says: /PODTAP_FORCE is "sometimes", which is not a boolean/, accepts: BOOL_FIX },
  { name: 'bridge named "all"', argv: ['up', '--bridge', 'all'], status: 2, says: /--bridge is "all"/ },
  { name: 'tap named "default"', argv: ['up', '--tap', 'default'], status: 2, says: /--tap is "default"/ },
  { name: 'bridge name with "#"', argv: ['up', '--bridge', 'b#r'], status: 2, says: /--bridge is "b#r"/ },
  { name: 'tap name with a double quote', argv: ['up', '--tap', 'a"b'], status: 2, says: /--tap is "a\\"b"/ },
  { name: 'tap name with "*"', argv: ['up', '--tap', 'e*'], status: 2, says: /--tap is "e\*"/ },
  { name: 'bridge name of 9 two-byte characters', argv: ['up', '--bridge', 'ééééééééé'], status: 2, says: /--bridge is "ééééééééé"/, accepts: NAME_FIX },

  // --state-dir / PODTAP_STATE_DIR
  { name: 'state dir under a regular file', argv: ['up', '--state-dir', `${FILE}/state`], stateDir: false, status: 3, says: new RegExp(`cannot create the state dir ${FILE}/state: .*ENOTDIR`), accepts: /writable directory with --state-dir/ },
  { name: 'state dir that is a regular file', argv: ['up', '--state-dir', FILE], stateDir: false, status: 3, says: new RegExp(`(cannot create the )?state dir ${FILE}(:| is not a directory).*`), accepts: /--state-dir/ },
  { name: "state dir owned by another user", argv: ['up', '--state-dir', OTHERS], stateDir: false, status: 3, says: new RegExp(`the state dir ${OTHERS} is owned by uid 4242, not by podtap's uid 0`), accepts: /podtap's own/ },
  { name: 'state dir writable by everyone', argv: ['up', '--state-dir', WORLD], stateDir: false, status: 3, says: new RegExp(`the state dir ${WORLD} is writable by everyone \\(mode 1777\\)`), accepts: /chmod 0700/ },
  { name: 'state dir writable by its group', argv: ['up', '--state-dir', GROUP], stateDir: false, status: 3, says: new RegExp(`the state dir ${GROUP} is writable by its group \\(mode 0770\\)`), accepts: /chmod 0700/ },
  { name: 'state dir that is a symlink', argv: ['up', '--state-dir', LINKED], stateDir: false, status: 3, says: new RegExp(`the state dir ${LINKED} is a symbolic link`), accepts: /podtap's own/ },
  { name: "down with a state dir owned by another user", argv: ['down', '--state-dir', OTHERS], stateDir: false, status: 3, says: /is owned by uid 4242/, accepts: /podtap's own/ },
  { name: 'down with a state dir writable by everyone', argv: ['down', '--state-dir', WORLD], stateDir: false, status: 3, says: /is writable by everyone/, accepts: /chmod 0700/ },
  { name: 'down with a state dir that is a symlink', argv: ['down', '--state-dir', LINKED], stateDir: false, status: 3, says: /is a symbolic link/, accepts: /podtap's own/ },
  {
    name: 'state dir on a read-only bind mount',
    argv: ['up', '--state-dir', RO],
    stateDir: false,
    wrap: ['unshare', '-m', '--propagation', 'private', 'sh', '-c', 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"', 'ro-state', RO],
    status: 3,
    says: new RegExp(`state dir ${RO} is not writable: .*(EROFS|read-only)`),
    accepts: /writable directory with --state-dir/,
  },
  { name: 'state dir empty', argv: ['up', '--state-dir', ''], stateDir: false, status: 2, says: /--state-dir is empty or not a path/, accepts: /path/ },
  { name: 'PODTAP_STATE_DIR under a regular file', argv: ['up'], stateDir: false, env: { PODTAP_STATE_DIR: `${FILE}/state` }, status: 3, says: new RegExp(`cannot create the state dir ${FILE}/state`), accepts: /writable directory/ },
  { name: 'down with a state dir under a regular file', argv: ['down', '--state-dir', `${FILE}/state`], stateDir: false, status: 3, says: new RegExp(`cannot read the state dir ${FILE}/state: .*ENOTDIR`), accepts: /readable directory/ },
  { name: 'down with a corrupt journal', argv: ['down', '--state-dir', CORRUPT], stateDir: false, status: 6, says: /journal .*journal\.json fails its checksum/, accepts: /move the file away/ },

  // --resolv-conf / PODTAP_RESOLV_CONF
  { name: 'resolv-conf is a directory', argv: ['up', '--resolv-conf', DIR], status: 3, says: new RegExp(`cannot read ${DIR}: .*EISDIR`), accepts: /--resolv-conf at another file/ },
  { name: 'resolv-conf missing', argv: ['up', '--resolv-conf', join(TMP, 'missing.conf')], status: 3, says: /cannot read .*missing\.conf: .*ENOENT/, accepts: /--resolv-conf at another file/ },
  { name: 'resolv-conf empty', argv: ['up', '--resolv-conf', ''], status: 2, says: /--resolv-conf is empty or not a path/ },
  { name: 'PODTAP_RESOLV_CONF a directory', argv: ['up'], env: { PODTAP_RESOLV_CONF: DIR }, status: 3, says: new RegExp(`cannot read ${DIR}`), accepts: /--resolv-conf/ },
  { name: 'inspect with resolv-conf a directory', argv: ['inspect', '--resolv-conf', DIR], stateDir: false, status: 3, says: new RegExp(`cannot read ${DIR}`), accepts: /--resolv-conf/ },

  // --link-local / PODTAP_LINK_LOCAL
  { name: 'link-local outside 169.254/16', argv: ['up', '--link-local', '10.0.0.1'], status: 2, says: /--link-local is 10\.0\.0\.1, which is not inside 169\.254\.0\.0\/16/, accepts: LL_FIX },
  { name: 'link-local the Calico gateway', argv: ['up', '--link-local', '169.254.1.1'], status: 2, says: /--link-local is 169\.254\.1\.1, which pods use as a gateway or metadata address/, accepts: LL_FIX },
  { name: 'link-local the metadata address', argv: ['up', '--link-local', '169.254.169.254/32'], status: 2, says: /169\.254\.169\.254, which pods use/, accepts: LL_FIX },
  { name: 'link-local the network address', argv: ['up', '--link-local', '169.254.0.0/16'], status: 2, says: /--link-local is 169\.254\.0\.0\/16, a network or broadcast address/, accepts: LL_FIX },
  { name: 'link-local the broadcast address', argv: ['up', '--link-local', '169.254.255.255/16'], status: 2, says: /169\.254\.255\.255\/16, a network or broadcast address/, accepts: LL_FIX },
  { name: 'link-local not an address', argv: ['up', '--link-local', 'abc'], status: 2, says: /--link-local is "abc", not an IPv4 address or CIDR/, accepts: LL_FIX },
  { name: 'link-local prefix /8', argv: ['up', '--link-local', '169.254.75.1/8'], status: 2, says: /169\.254\.75\.1\/8, which is not inside/, accepts: LL_FIX },
  { name: 'link-local prefix /33', argv: ['up', '--link-local', '169.254.75.1/33'], status: 2, says: /"169\.254\.75\.1\/33", not an IPv4 address or CIDR/, accepts: LL_FIX },
  { name: 'link-local octet 300', argv: ['up', '--link-local', '169.254.300.1'], status: 2, says: /"169\.254\.300\.1", not an IPv4 address/, accepts: LL_FIX },
  { name: 'link-local trailing slash', argv: ['up', '--link-local', '169.254.75.1/'], status: 2, says: /"169\.254\.75\.1\/", not an IPv4 address/, accepts: LL_FIX },
  { name: 'link-local IPv6', argv: ['up', '--link-local', 'fe80::1'], status: 2, says: /"fe80::1", not an IPv4 address/, accepts: LL_FIX },
  { name: 'link-local empty', argv: ['up', '--link-local', ''], status: 2, says: /--link-local is "", not an IPv4 address/, accepts: LL_FIX },
  { name: 'PODTAP_LINK_LOCAL private', argv: ['up'], env: { PODTAP_LINK_LOCAL: '192.168.1.1' }, status: 2, says: /PODTAP_LINK_LOCAL is 192\.168\.1\.1, which is not inside/, accepts: LL_FIX },
  { name: 'link-local overlapping the Calico gateway', on: 'calico', argv: ['up', '--link-local', '169.254.0.1/16'], status: 5, says: /--link-local 169\.254\.0\.1\/16 overlaps an address, route or gateway of the pod/, accepts: /choose another 169\.254\.x\.y/ },

  // --log-format, --log-level
  { name: 'log-format yaml', argv: ['up', '--log-format', 'yaml'], status: 2, says: /--log-format is "yaml", not a log format/, accepts: /text or json/ },
  { name: 'PODTAP_LOG_FORMAT JSON', argv: ['up'], env: { PODTAP_LOG_FORMAT: 'JSON' }, status: 2, says: /PODTAP_LOG_FORMAT is "JSON", not a log format/, accepts: /text or json/ },
  { name: 'down with log-format xml', argv: ['down', '--log-format', 'xml'], status: 2, says: /--log-format is "xml"/, accepts: /text or json/ },
  { name: 'log-level verbose', argv: ['up', '--log-level', 'verbose'], status: 2, says: /--log-level is "verbose", not a log level/, accepts: /debug, info, warn or error/ },
  { name: 'PODTAP_LOG_LEVEL trace', argv: ['up'], env: { PODTAP_LOG_LEVEL: 'trace' }, status: 2, says: /PODTAP_LOG_LEVEL is "trace"/, accepts: /debug, info, warn or error/ },

  // --tap-owner
  { name: 'tap-owner a user name', argv: ['up', '--tap-owner', 'qemu'], status: 2, says: /--tap-owner is "qemu", not UID or UID:GID/, accepts: /numeric ids/ },
  { name: 'tap-owner -1', argv: ['up', '--tap-owner', '-1'], status: 2, says: /--tap-owner is "-1"/, accepts: /numeric ids/ },
  { name: 'tap-owner 1:2:3', argv: ['up', '--tap-owner', '1:2:3'], status: 2, says: /--tap-owner is "1:2:3"/, accepts: /numeric ids/ },
  { name: 'tap-owner 107:', argv: ['up', '--tap-owner', '107:'], status: 2, says: /--tap-owner is "107:"/, accepts: /numeric ids/ },
  { name: 'tap-owner :107', argv: ['up', '--tap-owner', ':107'], status: 2, says: /--tap-owner is ":107"/, accepts: /numeric ids/ },
  { name: 'tap-owner uid 2^32-1', argv: ['up', '--tap-owner', '4294967295'], status: 2, says: /--tap-owner is 4294967295, out of range/, accepts: /from 0 to 4294967294/ },
  { name: 'tap-owner gid 2^32-1', argv: ['up', '--tap-owner', '107:4294967295'], status: 2, says: /--tap-owner is 4294967295, out of range/, accepts: /a gid from 0/ },
  { name: 'tap-owner empty', argv: ['up', '--tap-owner', ''], status: 2, says: /--tap-owner is ""/, accepts: /numeric ids/ },
  { name: 'PODTAP_TAP_OWNER qemu:kvm', argv: ['up'], env: { PODTAP_TAP_OWNER: 'qemu:kvm' }, status: 2, says: /PODTAP_TAP_OWNER is "qemu:kvm"/, accepts: /numeric ids/ },

  // --lease-time
  { name: 'lease-time 0', argv: ['up', '--lease-time', '0'], status: 2, says: /--lease-time is 0, out of range/, accepts: /seconds from 10 to 31536000/ },
  { name: 'lease-time 9', argv: ['up', '--lease-time', '9'], status: 2, says: /--lease-time is 9, out of range/, accepts: /from 10 to 31536000/ },
  { name: 'lease-time over a year', argv: ['up', '--lease-time', '31536001'], status: 2, says: /--lease-time is 31536001, out of range/, accepts: /from 10 to 31536000/ },
  { name: 'lease-time 1h', argv: ['up', '--lease-time', '1h'], status: 2, says: /--lease-time is "1h", not a whole number/, accepts: /from 10 to 31536000/ },
  { name: 'lease-time -5', argv: ['up', '--lease-time', '-5'], status: 2, says: /--lease-time is "-5"/, accepts: /from 10 to 31536000/ },
  { name: 'PODTAP_LEASE_TIME abc', argv: ['up'], env: { PODTAP_LEASE_TIME: 'abc' }, status: 2, says: /PODTAP_LEASE_TIME is "abc"/, accepts: /from 10 to 31536000/ },

  // --fd-socket, --fd-socket-mode
  { name: 'fd-socket-mode 999', argv: ['up', '--fd-socket', SOCK, '--fd-socket-mode', '999'], status: 2, says: /--fd-socket-mode is "999", not an octal mode/, accepts: /0600/ },
  { name: 'fd-socket-mode 0x1ff', argv: ['up', '--fd-socket', SOCK, '--fd-socket-mode', '0x1ff'], status: 2, says: /--fd-socket-mode is "0x1ff"/, accepts: /0600/ },
  { name: 'fd-socket-mode 8', argv: ['up', '--fd-socket', SOCK, '--fd-socket-mode', '8'], status: 2, says: /--fd-socket-mode is "8"/, accepts: /0600/ },
  { name: 'fd-socket-mode rw', argv: ['up', '--fd-socket', SOCK, '--fd-socket-mode', 'rw'], status: 2, says: /--fd-socket-mode is "rw"/, accepts: /0600/ },
  { name: 'fd-socket-mode 06000', argv: ['up', '--fd-socket', SOCK, '--fd-socket-mode', '06000'], status: 2, says: /--fd-socket-mode is "06000"/, accepts: /0600/ },
  { name: 'fd-socket-mode empty', argv: ['up', '--fd-socket', SOCK, '--fd-socket-mode', ''], status: 2, says: /--fd-socket-mode is ""/, accepts: /0600/ },
  { name: 'fd-socket-mode without fd-socket', argv: ['up', '--fd-socket-mode', '0600'], status: 2, says: /--fd-socket-mode without --fd-socket/, accepts: /add --fd-socket PATH/ },
  { name: 'fd-socket empty', argv: ['up', '--fd-socket', ''], status: 2, says: /--fd-socket is empty or not a path/ },
  { name: 'fd-socket that is a regular file', argv: ['up', '--fd-socket', NOT_A_SOCKET], status: 2, says: new RegExp(`--fd-socket ${NOT_A_SOCKET} exists and is not a socket`), accepts: /remove it or choose another path/ },
  { name: 'fd-socket that is a symlink', argv: ['up', '--fd-socket', LINKED_SOCKET], status: 2, says: new RegExp(`--fd-socket ${LINKED_SOCKET} is a symbolic link`), accepts: /podtap creates the socket itself/ },
  { name: 'fd-socket longer than 107 bytes', argv: ['up', '--fd-socket', LONG_SOCKET], status: 2, says: /--fd-socket .* is 1\d\d bytes long; a Unix socket path holds at most 107/, accepts: /shorter path/ },
  { name: 'persist-tap with fd-socket', argv: ['up', '--persist-tap', '--fd-socket', SOCK], status: 2, says: /--persist-tap and --fd-socket both given/, accepts: /--persist-tap for Firecracker, or --fd-socket/ },
  { name: 'fd-socket in a missing directory', argv: ['up', '--fd-socket', '/nonexistent-podtap-dir/sub/fds.sock'], status: 2, says: /--fd-socket \/nonexistent-podtap-dir\/sub\/fds\.sock: the directory \/nonexistent-podtap-dir\/sub does not exist/, accepts: /create it first/ },
  { name: 'qmp in a missing directory', argv: ['up', '--qmp', '/nonexistent-podtap-dir/qmp.sock'], status: 2, says: /--qmp .*the directory \/nonexistent-podtap-dir does not exist/, accepts: /create it first/ },
  { name: 'fd-socket with run', argv: ['run', '--fd-socket', SOCK, '--', 'true'], status: 2, says: /--fd-socket does not apply to `podtap run`/, accepts: /up, exec/ },
  { name: 'exec from a socket under a regular file', argv: ['exec', '--fd-socket', `${FILE}/podtap.sock`, '--', 'true'], stateDir: false, status: 9, says: new RegExp(`fetching the TAP fds from ${FILE}/podtap.sock failed`), accepts: /podtap up --fd-socket PATH/ },
  { name: 'exec without fd-socket', argv: ['exec', '--', 'true'], stateDir: false, status: 2, says: /`podtap exec` needs --fd-socket PATH/, accepts: /podtap up --fd-socket/ },

  // --qmp, --qmp-bus, --ch-api
  { name: 'qmp-bus without qmp', argv: ['up', '--qmp-bus', 'rp1'], status: 2, says: /--qmp-bus without --qmp/, accepts: /add --qmp PATH/ },
  { name: 'PODTAP_QMP_BUS without PODTAP_QMP', argv: ['up'], env: { PODTAP_QMP_BUS: 'rp1' }, status: 2, says: /PODTAP_QMP_BUS.*without/, accepts: /PODTAP_QMP|--qmp/ },
  { name: 'qmp-bus not a device id', argv: ['up', '--qmp', SOCK, '--qmp-bus', '1bad'], status: 2, says: /--qmp-bus is "1bad", not a QEMU device id/, accepts: /pcie-root-port/ },
  { name: 'two qmp-bus for one NIC', argv: ['up', '--qmp', SOCK, '--qmp-bus', 'rp1', '--qmp-bus', 'rp2'], status: 2, says: /2 --qmp-bus for 1 NIC/, accepts: /one --qmp-bus per NIC/ },
  { name: 'qmp-bus with a space', argv: ['up', '--qmp', SOCK, '--qmp-bus', 'rp 1'], status: 2, says: /--qmp-bus is "rp 1"/, accepts: /pcie-root-port/ },
  { name: 'qmp empty', argv: ['up', '--qmp', ''], status: 2, says: /--qmp is empty or not a path/ },
  { name: 'qmp with run', argv: ['run', '--qmp', SOCK, '--', 'true'], status: 2, says: /--qmp does not apply to `podtap run`/ },
  { name: 'qmp and ch-api together', argv: ['up', '--qmp', SOCK, '--ch-api', SOCK], status: 2, says: /--qmp and --ch-api both given/, accepts: /choose one/ },
  { name: 'ch-api empty', argv: ['up', '--ch-api', ''], status: 2, says: /--ch-api is empty or not a path/ },

  // booleans
  { name: 'PODTAP_NO_DHCP maybe', argv: ['up'], env: { PODTAP_NO_DHCP: 'maybe' }, status: 2, says: /PODTAP_NO_DHCP is "maybe", which is not a boolean/, accepts: BOOL_FIX },
  { name: 'PODTAP_NO_ANTISPOOF 2', argv: ['up'], env: { PODTAP_NO_ANTISPOOF: '2' }, status: 2, says: /PODTAP_NO_ANTISPOOF is "2", which is not a boolean/, accepts: BOOL_FIX },
  { name: 'PODTAP_PERSIST_TAP enabled', argv: ['up'], env: { PODTAP_PERSIST_TAP: 'enabled' }, status: 2, says: /PODTAP_PERSIST_TAP is "enabled"/, accepts: BOOL_FIX },
  { name: 'no-dhcp with a value', argv: ['up', '--no-dhcp=1'], status: 2, says: /--no-dhcp takes no value/, accepts: /--no-dhcp alone/ },
  { name: 'persist-tap with a value', argv: ['up', '--persist-tap=yes'], status: 2, says: /--persist-tap takes no value/, accepts: /--persist-tap alone/ },

  // commands and arguments
  { name: 'unknown option', argv: ['up', '--bogus'], status: 2, says: /unknown option --bogus/, accepts: /podtap --help/ },
  { name: 'misspelt option', argv: ['up', '--queue', '2'], status: 2, says: /unknown option --queue/, accepts: /podtap --help/ },
  { name: 'no command', argv: [], status: 2, says: /no command given/, accepts: /inspect \| up \| run/ },
  { name: 'unknown command', argv: ['start'], status: 2, says: /unexpected argument "start"/, accepts: /commands are inspect, up, run, down, exec and status/ },
  { name: 'stray argument', argv: ['up', 'extra'], status: 2, says: /unexpected argument "extra"/ },
  { name: 'run without a VMM', argv: ['run'], status: 2, says: /`podtap run` needs a VMM command/, accepts: /podtap run \[options\] -- / },
  { name: 'up with a command after --', argv: ['up', '--', 'qemu'], status: 2, says: /`podtap up` takes no command after --/, accepts: /podtap run -- VMM/ },
  { name: 'down with --queues', argv: ['down', '--queues', '2'], status: 2, says: /--queues does not apply to `podtap down`/, accepts: /up, run/ },
  { name: 'inspect with --tap', argv: ['inspect', '--tap', 'x'], stateDir: false, status: 2, says: /--tap does not apply to `podtap inspect`/ },
  { name: 'PODTAP_FAULT garbage', argv: ['up'], env: { PODTAP_FAULT: 'garbage' }, status: 2, says: /PODTAP_FAULT is "garbage"/, accepts: /setup:K:before\|after/ },
  { name: 'placeholder for a NIC that does not exist', argv: ['run', '--', 'true', '{fd:1}'], status: 2, says: /placeholder \{fd:1\} in VMM argument 1 .* names no NIC; the NICs are 0=eth0/, accepts: /fix the placeholder/ },
  { name: 'placeholder for an interface that is not a NIC', argv: ['run', '--', 'true', '{mac:net1}'], status: 2, says: /\{mac:net1\} .* names no NIC/, accepts: /fix the placeholder/ },
  { name: '{bridge} on the redirect data path', argv: ['run', '--datapath', 'redirect', '--', 'true', '{bridge}'], status: 2, says: /placeholder \{bridge\} in VMM argument 1 has no value here .*that NIC has no bridge/, accepts: /fix the placeholder/ },
  { name: 'unknown placeholder in the VMM arguments', argv: ['run', '--', 'true', '{nonsense}'], status: 2, says: /unknown placeholder \{nonsense\}/, accepts: /fix the placeholder/ },
];

let ptp: Pod;
let calico: Pod;
let baseline: Map<string, Snapshot>;
beforeAll(async () => {
  [ptp, calico] = await Promise.all([makePod('ptp', { cleanup }), makePod('calico', { cleanup })]);
  baseline = new Map([[ptp.pod, await snapshot(ptp.pod)], [calico.pod, await snapshot(calico.pod)]]);
});

const STACK = /internal error|\n\s+at .*\(.*:\d+:\d+\)/;

async function refused(c: Bad): Promise<void> {
  const pod = c.on === 'calico' ? calico : ptp;
  const argv = [...c.argv];
  if (c.stateDir !== false) argv.splice(argv.length ? 1 : 0, 0, '--state-dir', stateDirFor(cleanup));
  // A timeout ends a podtap that wrongly accepted the input and went on serving.
  const r = await runInPod(pod.pod, pod.hostname, [...(c.wrap ?? []), PODTAP, ...argv], { reject: false, env: c.env ?? {}, timeoutMs: 20_000 });
  expect(r.exitCode, r.stderr).toBe(c.status);
  expect(r.stderr).toMatch(c.says);
  const fix = /\n\s*fix: (.*)/.exec(r.stderr)?.[1];
  expect(fix, `no fix line in:\n${r.stderr}`).toBeDefined();
  if (c.accepts) expect(fix).toMatch(c.accepts);
  expect(r.stdout).toBe('');
  expect(r.stderr).not.toMatch(STACK);
  // Refused up front: nothing was set up that then had to be restored.
  expect(r.stderr).not.toMatch(/restoring the namespace|namespace restored|tearing down/);
  // Cases run side by side: their podtaps come and go in the process list,
  // which is compared once they have all ended (below).
  const base = baseline.get(pod.pod)!;
  expect(diffSnapshots(base, { ...(await snapshot(pod.pod)), processes: base.processes })).toEqual([]);
}

afterAll(async () => {
  // Everything, processes included: no refused podtap left anything running.
  for (const p of [ptp, calico]) expect(diffSnapshots(baseline.get(p.pod)!, await snapshot(p.pod))).toEqual([]);
});

// Each case only reads the shared pods (and must leave them as they were),
// so two run at once.
const slots = limiter(2);

describe('bad input is refused before anything changes', () => {
  for (const c of CASES) it.concurrent(c.name, () => slots(() => refused(c)), 60_000);
});
