// The test guest: a Debian kernel plus a busybox initramfs booted under QEMU
// TCG. It configures its NIC the way a distro would (DHCP or static), then
// reports what it sees on the serial console as "PODTAP-GUEST <key> <value>"
// lines, which parseGuestOutput() turns into a GuestReport. Tests compare
// that report with the pod's identity to prove podtap handed it over intact.

import { spawn, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync, gzipSync } from 'node:zlib';

// ---------------------------------------------------------------------------
// Scripts inside the initramfs. Plain template literals: shell "${" and "\"
// are escaped for JS, and backquotes are avoided.

const INIT = `#!/bin/sh
# PID 1. Behaviour comes from podtap.* words on the kernel command line;
# findings go to the console so the host can parse them.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run /tmp

say() { echo "PODTAP-GUEST $*"; }
up() { cut -d' ' -f1 /proc/uptime; }
finish() {
  echo PODTAP-GUEST-DONE
  # The UART drains after echo returns; powering off at once can eat the tail.
  usleep 300000
  poweroff -f
}

net=dhcp ping= mode=oneshot renewwait=30 renewafter= renews=0 waitnic=10
mtu= timeout=0 nic=eth0 dhcpreq=mtu,staticroutes,search
ipv6=none v6wait=30
more=
for w in $(cat /proc/cmdline); do
  case "$w" in
    podtap.*=*)
      k=\${w%%=*}; k=\${k#podtap.}; v=\${w#*=}
      case "$k" in
        net|ping|mode|renewwait|renewafter|renews|waitnic|mtu|timeout|nic|dhcpreq|more|ipv6|v6wait)
          eval "$k=\\$v"; say config "$k=$v" ;;
        *) say error "unknown key podtap.$k" ;;
      esac ;;
  esac
done
say boot "$(uname -r)" "$(up)"

# A guest that hangs must still end, even if nobody is watching.
if [ "$timeout" -gt 0 ]; then
  ( sleep "$timeout"; say error "guest timeout after \${timeout}s"; finish ) &
fi

for m in $(cat /lib/modules/order); do
  insmod "/lib/modules/$m" || say error "insmod $m failed"
done

# Hot-plugged NICs appear late, so wait rather than fail at once.
i=0
while [ ! -e "/sys/class/net/$nic" ]; do
  if [ "$i" -ge $((waitnic * 10)) ]; then say error "no $nic after \${waitnic}s"; finish; fi
  usleep 100000; i=$((i + 1))
done
say nic "$nic" "$(up)"
ip link set lo up
ip link set "$nic" up

static() {
  a=\${1%%,*}; g=
  case "$1" in *,*) g=\${1#*,} ;; esac
  ip addr add "$a" broadcast + dev "$nic" || say error "static address $a failed"
  if [ -n "$mtu" ]; then ip link set dev "$nic" mtu "$mtu" || say error "mtu $mtu failed"; fi
  if [ -n "$g" ]; then ip route add default via "$g" dev "$nic" || say error "static route via $g failed"; fi
}

dhcppid=
dhcp() {
  o=
  for r in $(echo "$dhcpreq" | tr , ' '); do o="$o -O $r"; done
  if [ "$mode" = oneshot ]; then
    udhcpc -i "$nic" -f -q -n -t 10 -T 1 -s /etc/podtap-dhcp $o || say error "udhcpc got no lease"
    return
  fi
  # Other modes keep the client alive so that renewals happen (and show).
  udhcpc -i "$nic" -f -n -t 10 -T 1 -s /etc/podtap-dhcp $o &
  dhcppid=$!
  while [ ! -e /run/bound ]; do
    kill -0 "$dhcppid" 2>/dev/null || { say error "udhcpc got no lease"; return; }
    usleep 100000
  done
}

# IPv6 the way a distro with dhcpcd does it: router solicitation, then
# DHCPv6 as the RA's M flag asks. dhcpcd stays up (renewals); the guest
# goes on once it holds a global address and a default route.
dhcp6() {
  mkdir -p /var/lib/dhcpcd /run/dhcpcd
  dhcpcd -6 -B -f /etc/dhcpcd.conf -c /etc/podtap-dhcpcd "$nic" > /run/dhcpcd.log 2>&1 &
  i=0
  # The address shows before dhcpcd's hook has reported the binding: wait
  # for the hook too, or the report (and power-off) would cut it short.
  while [ -z "$(ip -6 addr show dev "$nic" scope global)" ] || [ -z "$(ip -6 route show default)" ] || [ ! -e /run/bound6 ]; do
    if [ "$i" -ge $((v6wait * 10)) ]; then
      say error "dhcpcd: no IPv6 address, default route and reported DHCPv6 binding after \${v6wait}s"
      while IFS= read -r l; do say dhcpcd-log "$l"; done < /run/dhcpcd.log
      return
    fi
    usleep 100000; i=$((i + 1))
  done
  say ipv6-ready "$(up)"
}

pings() {
  for t in $(echo "$ping" | tr , ' '); do
    rcv=$(ping -c 3 -i 0.3 -W 3 "$t" 2>&1 | sed -n 's/.* \\([0-9][0-9]*\\) packets received.*/\\1/p')
    rcv=\${rcv:-0}
    if [ "$rcv" -gt 0 ]; then say ping "$t" ok "$rcv/3"; else say ping "$t" fail "$rcv/3"; fi
  done
}

pingloop() {
  t=\${ping%%,*}; n=0
  if [ -z "$t" ]; then say error "ping-forever needs podtap.ping"; return; fi
  while :; do
    n=$((n + 1))
    if ping -c 1 -W 1 "$t" >/dev/null 2>&1; then
      say tick "$n" "$t" ok "$(up)"; sleep 1
    else
      say tick "$n" "$t" timeout "$(up)"
    fi
  done
}

renewloop() {
  if [ -z "$dhcppid" ]; then say error "renew mode needs a running udhcpc"; return; fi
  end=$(( $(up | cut -d. -f1) + renewwait ))
  # SIGUSR1 makes udhcpc renew now instead of at T1 (which it floors to 15s+).
  if [ -n "$renewafter" ]; then
    ( sleep "$renewafter"; say renew-requested "$(up)"; kill -USR1 "$dhcppid" ) &
  fi
  while [ "$(up | cut -d. -f1)" -lt "$end" ]; do
    c=$(cat /run/renewals 2>/dev/null || echo 0)
    if [ "$renews" -gt 0 ] && [ "$c" -ge "$renews" ]; then break; fi
    usleep 200000
  done
}

rn=0
report() {
  rn=$((rn + 1)); d=/sys/class/net/$nic
  say report "$rn" "$(up)"
  say mac "$(cat "$d/address")"
  say mtu "$(cat "$d/mtu")"
  say hostname "$(hostname)"
  say rxqueues "$(ls -d "$d"/queues/rx-* | wc -l)"
  say txqueues "$(ls -d "$d"/queues/tx-* | wc -l)"
  if [ -r "$d/device/features" ]; then say features "$(cat "$d/device/features")"; fi
  ip -o -4 addr show dev "$nic" | while IFS= read -r l; do say addr "$l"; done
  ip -4 route show | while IFS= read -r l; do say route "$l"; done
  # Every NIC (not only $nic): name, MAC, MTU and IPv4 addresses.
  for x in /sys/class/net/*; do
    [ "\${x##*/}" = lo ] && continue
    say link "\${x##*/}" "$(cat "$x/address")" "$(cat "$x/mtu")"
    ip -o -4 addr show dev "\${x##*/}" | while IFS= read -r l; do say linkaddr "\${x##*/}" "$l"; done
  done
  if [ -r /etc/resolv.conf ]; then
    while IFS= read -r l; do say resolv "$l"; done < /etc/resolv.conf
  fi
  if [ "$ipv6" != none ]; then
    ip -o -6 addr show dev "$nic" scope global | while IFS= read -r l; do say addr6 "$l"; done
    ip -6 route show | while IFS= read -r l; do say route6 "$l"; done
    ip -6 neigh show dev "$nic" | while IFS= read -r l; do say neigh6 "$l"; done
    if [ -r /run/resolv6 ]; then
      while IFS= read -r l; do say resolv6 "$l"; done < /run/resolv6
    fi
  fi
  say report-end "$rn"
}

case "$net" in
  dhcp) dhcp ;;
  static:*) static "\${net#static:}" ;;
  none) ;;
  *) say error "unknown podtap.net=$net" ;;
esac
case "$ipv6" in
  dhcpcd) dhcp6 ;;
  none) ;;
  *) say error "unknown podtap.ipv6=$ipv6" ;;
esac

# Further NICs, podtap.more=eth1:dhcp,eth2:try,eth3:none, after the first
# and in that order: each waited for (hot-plug) and brought up; dhcp must
# get a lease (one udhcpc exchange, the lease kept), try reports "nolease"
# when none comes within 3 s, none stays unconfigured.
for m in $(echo "$more" | tr , ' '); do
  x=\${m%%:*}; how=\${m#*:}; i=0
  while [ ! -e "/sys/class/net/$x" ]; do
    if [ "$i" -ge $((waitnic * 10)) ]; then say error "no $x after \${waitnic}s"; break; fi
    usleep 100000; i=$((i + 1))
  done
  ip link set "$x" up || continue
  o=
  for r in $(echo "$dhcpreq" | tr , ' '); do o="$o -O $r"; done
  case "$how" in
    dhcp) udhcpc -i "$x" -f -q -n -t 10 -T 1 -s /etc/podtap-dhcp $o || say error "udhcpc on $x got no lease" ;;
    try) udhcpc -i "$x" -f -q -n -t 3 -T 1 -s /etc/podtap-dhcp $o || say nolease "$x" ;;
    none) ;;
    *) say error "unknown way $how for $x in podtap.more" ;;
  esac
done
case "$mode" in
  oneshot) pings; report ;;
  renew) pings; report; renewloop; report ;;
  ping-forever) report; pingloop ;;
  *) say error "unknown podtap.mode=$mode"; report ;;
esac
finish
`;

const DHCP_SCRIPT = `#!/bin/sh
# udhcpc hook: first show the event exactly as udhcpc hands it over, then
# apply it the way a distro's DHCP client would.
say() { echo "PODTAP-GUEST $*"; }
ev=$1
n=$(( $(cat /run/dhcp-seq 2>/dev/null || echo 0) + 1 )); echo "$n" > /run/dhcp-seq
say dhcp-event "$n" "$ev"
# udhcpc's variables are lower case; the environment inherited from init is not.
env | grep '^[a-z][a-z0-9_]*=' | sort | while IFS= read -r l; do say dhcp-var "$n" "$l"; done

route_add() {
  d=$1; [ "$d" = 0.0.0.0/0 ] && d=default
  if [ "$2" = 0.0.0.0 ]; then
    ip route replace "$d" dev "$interface" && return
  else
    ip route replace "$d" via "$2" dev "$interface" 2>/dev/null && return
    # A gateway outside the subnet (pods often get a /32) needs a link route
    # to it first; systemd-networkd does the same.
    ip route replace "$2" dev "$interface" scope link &&
      ip route replace "$d" via "$2" dev "$interface" && return
  fi
  say error "dhcp route $d via $2 failed"
}

apply() {
  # A renewal that keeps the address must not disturb it; anything else
  # starts from a clean interface.
  if [ "$1" != renew ] || ! ip -4 addr show dev "$interface" | grep -q " $ip/$mask "; then
    ip -4 addr flush dev "$interface"
    ip -4 route flush dev "$interface"
    # No option 28: derive it from the prefix, as distros do.
    bc="broadcast +"; [ -n "$broadcast" ] && bc="broadcast $broadcast"
    ip addr add "$ip/$mask" $bc dev "$interface" || say error "dhcp address $ip/$mask failed"
  fi
  if [ -n "$mtu" ]; then ip link set dev "$interface" mtu "$mtu" || say error "dhcp mtu $mtu failed"; fi
  # RFC 3442: when classless routes are given the router option is ignored.
  if [ -n "$staticroutes" ]; then
    set -- $staticroutes
    while [ $# -ge 2 ]; do route_add "$1" "$2"; shift 2; done
  elif [ -n "$router" ]; then
    for r in $router; do route_add 0.0.0.0/0 "$r"; break; done
  fi
  # A lease without resolver options (a secondary NIC's) leaves resolv.conf alone.
  if [ -n "$dns$search$domain" ]; then {
    if [ -n "$search" ]; then echo "search $search"; elif [ -n "$domain" ]; then echo "search $domain"; fi
    for s in $dns; do echo "nameserver $s"; done
  } > /etc/resolv.conf; fi
  if [ -n "$hostname" ]; then hostname "$hostname"; fi
}

case "$ev" in
  deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
  bound) apply bound; touch /run/bound ;;
  renew) apply renew; echo $(( $(cat /run/renewals 2>/dev/null || echo 0) + 1 )) > /run/renewals ;;
esac
say dhcp-end "$n" "$ev"
`;

// dhcpcd's hook (podtap.ipv6=dhcpcd): every event with what dhcpcd handed
// over, as the udhcpc hook does, but to the console (dhcpcd's own output
// goes to its log); DNS from DHCPv6 and the RA goes to /run/resolv6
// (dhcpcd itself installs addresses and routes).
const DHCPCD_SCRIPT = `#!/bin/sh
say() { echo "PODTAP-GUEST $*" > /dev/console; }
n=$(( $(cat /run/dhcp6-seq 2>/dev/null || echo 0) + 1 )); echo "$n" > /run/dhcp6-seq
say dhcp6-event "$n" "$reason"
env | grep -E '^(new_|nd[0-9]+_|ifmtu=)' | sort | while IFS= read -r l; do say dhcp6-var "$n" "$l"; done
case "$reason" in
  BOUND6|RENEW6|REBIND6|REBOOT6|ROUTERADVERT)
    s="\${new_dhcp6_domain_search:-$nd1_dnssl1_search}"
    {
      [ -n "$s" ] && echo "search $s"
      for a in $new_dhcp6_name_servers $nd1_rdnss1_servers; do echo "nameserver $a"; done
    } | awk '!seen[$0]++' > /run/resolv6 ;;
esac
say dhcp6-end "$n" "$reason"
case "$reason" in BOUND6|REBOOT6) : > /run/bound6 ;; esac
`;

// ipv6only: IPv4 stays udhcpc's (podtap.net), as before.
const DHCPCD_CONF = `ipv6only
noipv4ll
option dhcp6_name_servers, dhcp6_domain_search
`;

// ---------------------------------------------------------------------------
// Building the initramfs

export interface Guest {
  kernel: string; // what to boot: the unpacked vmlinux when possible, else bzImage
  bzImage: string;
  initrd: string;
  kernelVersion: string;
}

const CACHE_DIR = fileURLToPath(new URL('../../.cache/guest/', import.meta.url));
const BUSYBOX = '/bin/busybox';
// Module names as modules.dep spells them (after normalising '-' to '_').
const WANTED_MODULES = ['virtio_pci', 'virtio_net'];

function compareVersions(a: string, b: string): number {
  return a.localeCompare(b, 'en', { numeric: true });
}

/** Newest /boot kernel that has modules installed (not the sandbox's uname -r). */
function pickKernel(): { kernel: string; version: string } {
  const versions = readdirSync('/boot')
    .map((f) => /^vmlinuz-(.+)$/.exec(f)?.[1])
    .filter((v): v is string => v !== undefined && existsSync(`/lib/modules/${v}/modules.dep`))
    .sort(compareVersions);
  const version = versions.at(-1);
  if (!version) throw new Error('no /boot/vmlinuz-* with /lib/modules/<version>/modules.dep');
  return { kernel: `/boot/vmlinuz-${version}`, version };
}

const modName = (p: string) => path.basename(p).replace(/\.ko(\.\w+)?$/, '').replaceAll('-', '_');

/** Load order (dependencies first) of the wanted modules, as paths relative to the modules dir. */
export function moduleOrder(modulesDep: string, wanted: string[]): string[] {
  const deps = new Map<string, { file: string; deps: string[] }>();
  for (const line of modulesDep.split('\n')) {
    const m = /^([^:]+):\s*(.*)$/.exec(line);
    if (!m) continue;
    const file = m[1]!;
    deps.set(modName(file), { file, deps: (m[2] ?? '').split(/\s+/).filter(Boolean) });
  }
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = (name: string) => {
    if (seen.has(name)) return;
    seen.add(name);
    const entry = deps.get(name);
    if (!entry) throw new Error(`module ${name} not in modules.dep (built in?)`);
    for (const d of entry.deps) visit(modName(d));
    order.push(entry.file);
  };
  wanted.forEach(visit);
  return order;
}

/** busybox insmod may not decompress, so modules go into the image plain. */
function readModule(file: string): Buffer {
  const data = readFileSync(file);
  if (file.endsWith('.ko')) return data;
  if (file.endsWith('.gz')) return gunzipSync(data);
  const tool = file.endsWith('.xz') ? 'xz' : file.endsWith('.zst') ? 'zstd' : undefined;
  if (!tool) throw new Error(`unknown module compression: ${file}`);
  return execFileSync(tool, ['-dc', file], { maxBuffer: 64 << 20 });
}

export interface CpioEntry {
  name: string; // without leading slash
  mode: number; // including file type bits
  data?: Buffer | string;
  rdev?: [number, number];
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

/** A newc ("070701") archive, the format the kernel unpacks as initramfs. */
export function cpioNewc(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const pad4 = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
  const hex = (n: number) => n.toString(16).padStart(8, '0');
  let ino = 1;
  for (const e of [...entries, { name: 'TRAILER!!!', mode: 0 }] as CpioEntry[]) {
    const data = typeof e.data === 'string' ? Buffer.from(e.data) : (e.data ?? Buffer.alloc(0));
    const name = Buffer.from(`${e.name}\0`);
    const isTrailer = e.name === 'TRAILER!!!';
    const fields = [
      isTrailer ? 0 : ino++, e.mode, 0, 0, (e.mode & S_IFDIR) === S_IFDIR ? 2 : 1, 0,
      data.length, 0, 0, e.rdev?.[0] ?? 0, e.rdev?.[1] ?? 0, name.length, 0,
    ];
    const header = Buffer.from(`070701${fields.map(hex).join('')}`);
    parts.push(header, name, pad4(header.length + name.length), data, pad4(data.length));
  }
  return Buffer.concat(parts);
}

const DHCPCD = '/usr/sbin/dhcpcd';

/**
 * Debian's dhcpcd and the shared libraries it loads (libc and the dynamic
 * loader), each at the path the binary asks for, as ldd lists them.
 */
function dhcpcdFiles(): { name: string; data: Buffer }[] {
  const libs = execFileSync('ldd', [DHCPCD], { encoding: 'utf8' })
    .split('\n')
    .flatMap((l) => {
      const m = /(\/\S+)\s+\(0x[0-9a-f]+\)/.exec(l);
      return m ? [m[1]!] : [];
    });
  return [DHCPCD, ...libs].map((f) => ({ name: f.slice(1), data: readFileSync(f) }));
}

// dhcpcd drops privileges to its own user, chrooted to its home.
const PASSWD = 'root:x:0:0:root:/root:/bin/sh\ndhcpcd:x:102:65534:DHCP Client Daemon:/usr/lib/dhcpcd:/bin/false\n';
const GROUP = 'root:x:0:\nnogroup:x:65534:\n';

function initramfsEntries(modules: { name: string; data: Buffer }[], dhcpcd: { name: string; data: Buffer }[] = dhcpcdFiles()): CpioEntry[] {
  const dirs = ['bin', 'sbin', 'usr', 'usr/bin', 'usr/sbin', 'dev', 'proc', 'sys', 'tmp', 'run', 'etc', 'lib', 'lib/modules'];
  // dhcpcd's libraries' directories (lib/x86_64-linux-gnu, lib64), its chroot and its state.
  for (const f of dhcpcd) {
    const parts = f.name.split('/').slice(0, -1);
    parts.forEach((_, i) => dirs.push(parts.slice(0, i + 1).join('/')));
  }
  dirs.push('usr/lib', 'usr/lib/dhcpcd', 'var', 'var/lib', 'var/lib/dhcpcd');
  const entries: CpioEntry[] = [...new Set(dirs)].map((name) => ({ name, mode: S_IFDIR | 0o755 }));
  // The kernel opens /dev/console before init mounts devtmpfs.
  entries.push({ name: 'dev/console', mode: S_IFCHR | 0o600, rdev: [5, 1] });
  entries.push({ name: 'bin/busybox', mode: S_IFREG | 0o755, data: readFileSync(BUSYBOX) });
  // Applet links made at build time: nothing to do at boot, and the dhcp hook's
  // #!/bin/sh works from the first instruction.
  const applets = execFileSync(BUSYBOX, ['--list-full'], { encoding: 'utf8' }).split('\n').filter(Boolean);
  for (const a of applets) {
    if (a !== 'bin/busybox') entries.push({ name: a, mode: S_IFLNK | 0o777, data: '/bin/busybox' });
  }
  entries.push({ name: 'init', mode: S_IFREG | 0o755, data: INIT });
  entries.push({ name: 'etc/podtap-dhcp', mode: S_IFREG | 0o755, data: DHCP_SCRIPT });
  for (const f of dhcpcd) entries.push({ name: f.name, mode: S_IFREG | 0o755, data: f.data });
  entries.push({ name: 'etc/podtap-dhcpcd', mode: S_IFREG | 0o755, data: DHCPCD_SCRIPT });
  entries.push({ name: 'etc/dhcpcd.conf', mode: S_IFREG | 0o644, data: DHCPCD_CONF });
  entries.push({ name: 'etc/passwd', mode: S_IFREG | 0o644, data: PASSWD });
  entries.push({ name: 'etc/group', mode: S_IFREG | 0o644, data: GROUP });
  for (const m of modules) entries.push({ name: `lib/modules/${m.name}`, mode: S_IFREG | 0o644, data: m.data });
  entries.push({ name: 'lib/modules/order', mode: S_IFREG | 0o644, data: modules.map((m) => m.name).join('\n') + '\n' });
  return entries;
}

let building: Promise<Guest> | undefined;

/**
 * Kernel and initramfs for the guest. The initramfs is cached under
 * .cache/guest keyed by everything that goes into it, and published by
 * rename so concurrent builders (other test files) never see a partial file.
 */
export function buildGuest(): Promise<Guest> {
  building ??= build().catch((e: unknown) => {
    building = undefined;
    throw e;
  });
  return building;
}

/** Write by rename, so concurrent builders never expose a partial file. */
async function publish(file: string, data: Buffer): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await writeFile(tmp, data);
    await rename(tmp, file);
  } finally {
    await rm(tmp, { force: true });
  }
}

/**
 * Under TCG, decompressing Debian's xz bzImage takes about 3 s of every boot.
 * A kernel with CONFIG_PVH can instead be booted as its plain ELF vmlinux,
 * which we unpack once. Undefined when that is not possible.
 */
async function uncompressedKernel(bzImage: string, version: string): Promise<string | undefined> {
  let config = '';
  try {
    config = readFileSync(`/boot/config-${version}`, 'utf8');
  } catch {
    return undefined;
  }
  if (!/^CONFIG_PVH=y$/m.test(config)) return undefined;
  const st = statSync(bzImage);
  const out = path.join(CACHE_DIR, `vmlinux-${version}-${st.size}-${Math.trunc(st.mtimeMs)}`);
  if (existsSync(out)) return out;
  const image = readFileSync(bzImage);
  const xz = (b: Buffer) => {
    // From a file, not a pipe: xz stops reading at the end of the stream and
    // the signed image carries more after it (--single-stream ignores that).
    const tmp = `${out}.${process.pid}.${randomBytes(4).toString('hex')}.xz`;
    try {
      writeFileSync(tmp, b);
      return execFileSync('xz', ['-dc', '--single-stream', tmp], { maxBuffer: 1 << 30, stdio: ['ignore', 'pipe', 'ignore'] });
    } finally {
      rmSync(tmp, { force: true });
    }
  };
  await mkdir(CACHE_DIR, { recursive: true });
  const formats: { magic: Buffer; unpack: (b: Buffer) => Buffer }[] = [
    { magic: Buffer.from('fd377a585a00', 'hex'), unpack: xz },
    { magic: Buffer.from('1f8b0800', 'hex'), unpack: (b) => gunzipSync(b) },
  ];
  for (const { magic, unpack } of formats) {
    for (let at = image.indexOf(magic); at >= 0; at = image.indexOf(magic, at + 1)) {
      let elf: Buffer;
      try {
        elf = unpack(image.subarray(at));
      } catch {
        continue;
      }
      if (elf.subarray(0, 4).equals(Buffer.from('\x7fELF', 'latin1'))) {
        await publish(out, elf);
        return out;
      }
    }
  }
  return undefined;
}

async function build(): Promise<Guest> {
  const { kernel: bzImage, version } = pickKernel();
  const kernel = (await uncompressedKernel(bzImage, version)) ?? bzImage;
  const modDir = `/lib/modules/${version}`;
  const order = moduleOrder(readFileSync(`${modDir}/modules.dep`, 'utf8'), WANTED_MODULES);
  // "v1": bump when the image layout code (not the scripts) changes.
  const hash = createHash('sha256').update(`v1\0${version}\0${INIT}\0${DHCP_SCRIPT}\0${order.join(',')}\0`);
  hash.update(readFileSync(BUSYBOX));
  const dhcpcd = dhcpcdFiles();
  hash.update(`${DHCPCD_SCRIPT}\0${DHCPCD_CONF}\0${PASSWD}\0${GROUP}\0`);
  for (const f of dhcpcd) hash.update(`${f.name}\0`).update(f.data);
  const initrd = path.join(CACHE_DIR, `initrd-${version}-${hash.digest('hex').slice(0, 16)}.cpio.gz`);
  if (existsSync(initrd)) return { kernel, bzImage, initrd, kernelVersion: version };

  const modules = order.map((rel) => ({
    name: `${modName(rel)}.ko`,
    data: readModule(path.join(modDir, rel)),
  }));
  await publish(initrd, gzipSync(cpioNewc(initramfsEntries(modules, dhcpcd)), { level: 6 }));
  return { kernel, bzImage, initrd, kernelVersion: version };
}

// ---------------------------------------------------------------------------
// QEMU command line

export type GuestNet = 'dhcp' | 'none' | { address: string; gateway?: string }; // address is CIDR
export type GuestMode = 'oneshot' | 'ping-forever' | 'renew';

export interface GuestOptions {
  guest: { kernel: string; initrd: string };
  net?: GuestNet; // default dhcp
  ping?: string[];
  mode?: GuestMode; // default oneshot
  renewWait?: number; // renew mode: seconds to stay up after the lease (default 30)
  renewAfter?: number; // renew mode: seconds after the lease to force a renewal (SIGUSR1)
  renews?: number; // renew mode: power off early once this many renewals were seen
  waitNic?: number; // seconds to wait for the NIC (hot-plug), default 10
  mtu?: number; // static mode only; DHCP takes option 26
  dhcpRequest?: string[]; // udhcpc -O options, default mtu,staticroutes,search
  nic?: string; // default eth0
  guestTimeout?: number; // guest powers itself off after this many seconds
  memoryMb?: number; // default 256
  cpus?: number; // virtio-net only enables min(queue pairs, CPUs) queues
  qmpSocket?: string; // unix socket path for QMP (device_add for NIC hot-plug)
  qemu?: string; // default qemu-system-x86_64
  append?: string[]; // extra kernel command line words
  /** podtap.ipv6: 'dhcpcd' runs dhcpcd -6 (router solicitation, then DHCPv6) after the IPv4 step; default none. */
  ipv6?: 'dhcpcd' | 'none';
  v6Wait?: number; // seconds dhcpcd gets for an address and a default route, default 30
  /** NICs after `nic`, configured in this order (see podtap.more in the init script). */
  more?: { nic: string; net: 'dhcp' | 'try' | 'none' }[];
}

/** The podtap.* words the guest's /init understands. */
export function guestCmdline(o: Omit<GuestOptions, 'guest'>): string[] {
  const words: string[] = [];
  const put = (k: string, v: string | number | undefined) => {
    if (v === undefined) return;
    const s = String(v);
    if (/\s/.test(s) || s === '') throw new Error(`podtap.${k} cannot be ${JSON.stringify(s)}`);
    words.push(`podtap.${k}=${s}`);
  };
  const net = o.net ?? 'dhcp';
  put('net', typeof net === 'string' ? net : `static:${net.address}${net.gateway ? `,${net.gateway}` : ''}`);
  put('ping', o.ping?.length ? o.ping.join(',') : undefined);
  put('mode', o.mode);
  put('renewwait', o.renewWait);
  put('renewafter', o.renewAfter);
  put('renews', o.renews);
  put('waitnic', o.waitNic);
  put('mtu', o.mtu);
  put('dhcpreq', o.dhcpRequest?.join(','));
  put('nic', o.nic);
  put('timeout', o.guestTimeout);
  put('ipv6', o.ipv6);
  put('v6wait', o.v6Wait);
  put('more', o.more?.length ? o.more.map((m) => `${m.nic}:${m.net}`).join(',') : undefined);
  return words;
}

/**
 * QEMU argv, binary first, without any -netdev/-device: the caller appends
 * e.g. `-netdev tap,id=n0,fd=3 -device virtio-net-pci,netdev=n0,mac=...`.
 * The serial console is the process's stdout.
 */
export function guestQemuArgs(o: GuestOptions): string[] {
  const append = [
    'console=ttyS0', 'quiet', 'panic=-1',
    // Hardware the guest lacks or never uses; probing it only costs boot time under TCG.
    'i8042.noaux', 'i8042.nomux', 'i8042.nopnp', '8250.nr_uarts=1', 'nokaslr', 'cryptomgr.notests',
    ...guestCmdline(o), ...(o.append ?? []),
  ];
  const argv = [
    o.qemu ?? 'qemu-system-x86_64',
    '-accel', 'tcg',
    '-machine', 'pc',
    '-m', String(o.memoryMb ?? 256),
    '-smp', String(o.cpus ?? 1),
    '-nodefaults', '-no-user-config',
    '-display', 'none',
    '-serial', 'stdio',
    '-no-reboot',
    '-kernel', o.guest.kernel,
    '-initrd', o.guest.initrd,
    '-append', append.join(' '),
  ];
  if (o.qmpSocket) argv.push('-qmp', `unix:${o.qmpSocket},server=on,wait=off`);
  return argv;
}

// ---------------------------------------------------------------------------
// Parsing the serial console

export interface DhcpEvent {
  seq: number;
  event: string; // deconfig | bound | renew | nak | leasefail
  vars: Record<string, string>; // exactly as udhcpc exported them
  complete: boolean; // the hook ran to the end
}

export interface StaticRoute {
  dst: string;
  gateway: string;
}

export interface Lease {
  event: string; // the event that delivered it: bound or renew
  ip?: string;
  subnet?: string;
  mask?: number;
  broadcast?: string;
  router: string[];
  dns: string[];
  domain?: string;
  search: string[];
  hostname?: string;
  mtu?: number;
  staticroutes: StaticRoute[];
  msstaticroutes: StaticRoute[];
  lease?: number;
  serverid?: string;
  opt53?: string;
  vars: Record<string, string>;
}

export interface GuestAddress {
  local: string;
  prefixlen: number;
  broadcast?: string;
  scope?: string;
  raw: string;
}

export interface GuestRoute {
  dst: string;
  gateway?: string;
  dev?: string;
  proto?: string;
  scope?: string;
  src?: string;
  metric?: number;
  onlink: boolean;
  raw: string;
}

export interface Resolv {
  nameservers: string[];
  search: string[];
  options: string[];
  raw: string[];
}

/** One NIC as the guest's report lists it (every NIC but lo). */
export interface GuestLink {
  name: string;
  mac: string;
  mtu?: number;
  addresses: GuestAddress[];
}

export interface GuestSnapshot {
  seq: number;
  uptime?: number;
  mac?: string;
  mtu?: number;
  hostname?: string;
  rxQueues?: number;
  txQueues?: number;
  virtioFeatures?: string; // bit string, index = feature bit
  addresses: GuestAddress[];
  routes: GuestRoute[];
  resolv: Resolv;
  /** podtap.ipv6 only: `nic`'s global IPv6 addresses, every IPv6 route, `nic`'s IPv6 neighbours (raw lines), and the DNS dhcpcd was given. */
  addresses6: GuestAddress6[];
  routes6: GuestRoute[];
  neigh6: string[];
  resolv6: Resolv;
  /** Every NIC, in the guest's order (sysfs). */
  links: GuestLink[];
  complete: boolean;
}

export interface GuestAddress6 {
  local: string;
  prefixlen: number;
  raw: string;
}

export interface GuestPing {
  target: string;
  ok: boolean;
  received: number;
  sent: number;
}

export interface GuestTick {
  n: number;
  target: string;
  ok: boolean;
  uptime: number;
}

export interface GuestReport {
  kernel?: string;
  bootUptime?: number;
  nicUptime?: number; // when the NIC appeared
  config: Record<string, string>; // podtap.* keys the guest understood
  dhcp: DhcpEvent[];
  lease?: Lease; // from the last complete bound/renew event
  renewals: number;
  renewRequested: boolean;
  pings: GuestPing[];
  ticks: GuestTick[];
  snapshots: GuestSnapshot[];
  last?: GuestSnapshot; // the last complete snapshot (else the last one)
  errors: string[];
  /** NICs of podtap.more=X:try that got no DHCP lease. */
  noLease: string[];
  /** podtap.ipv6=dhcpcd: dhcpcd's hook events (reason, and what dhcpcd handed over), when it was ready, its log if it was not. */
  dhcp6: DhcpEvent[];
  ipv6Ready?: number;
  dhcpcdLog: string[];
  done: boolean;
}

const num = (s: string | undefined): number | undefined => {
  if (s === undefined || s === '') return undefined;
  const n = Number(s);
  return Number.isFinite(n) ? n : undefined;
};
const words = (s: string | undefined) => (s ?? '').split(/\s+/).filter(Boolean);

function staticRoutes(s: string | undefined): StaticRoute[] {
  const w = words(s);
  const out: StaticRoute[] = [];
  for (let i = 0; i + 1 < w.length; i += 2) out.push({ dst: w[i]!, gateway: w[i + 1]! });
  return out;
}

export function leaseFromVars(event: string, v: Record<string, string>): Lease {
  return {
    event,
    ip: v.ip,
    subnet: v.subnet,
    mask: num(v.mask),
    broadcast: v.broadcast,
    router: words(v.router),
    dns: words(v.dns),
    domain: v.domain,
    search: words(v.search),
    hostname: v.hostname,
    mtu: num(v.mtu),
    staticroutes: staticRoutes(v.staticroutes),
    msstaticroutes: staticRoutes(v.msstaticroutes),
    lease: num(v.lease),
    serverid: v.serverid,
    opt53: v.opt53,
    vars: v,
  };
}

function parseAddress(raw: string): GuestAddress | undefined {
  const m = /\binet (\d+\.\d+\.\d+\.\d+)\/(\d+)/.exec(raw);
  if (!m) return undefined;
  return {
    local: m[1]!,
    prefixlen: Number(m[2]),
    broadcast: /\bbrd (\S+)/.exec(raw)?.[1],
    scope: /\bscope (\S+)/.exec(raw)?.[1],
    raw,
  };
}

export function parseRoute(raw: string): GuestRoute {
  const w = words(raw);
  const r: GuestRoute = { dst: w[0] ?? '', onlink: false, raw };
  for (let i = 1; i < w.length; i++) {
    const k = w[i]!;
    if (k === 'onlink') {
      r.onlink = true;
      continue;
    }
    const v = w[i + 1];
    if (v === undefined) break;
    if (k === 'via') r.gateway = v;
    else if (k === 'dev') r.dev = v;
    else if (k === 'proto') r.proto = v;
    else if (k === 'scope') r.scope = v;
    else if (k === 'src') r.src = v;
    else if (k === 'metric') r.metric = num(v);
    else continue; // a flag we do not model
    i++;
  }
  return r;
}

function addResolv(r: Resolv, line: string) {
  r.raw.push(line);
  const [k, ...rest] = words(line);
  if (k === 'nameserver' && rest[0]) r.nameservers.push(rest[0]);
  else if (k === 'search' || k === 'domain') r.search.push(...rest);
  else if (k === 'options') r.options.push(...rest);
}

/** Pure: the PODTAP-GUEST lines of a serial capture as a typed report. */
export function parseGuestOutput(serial: string): GuestReport {
  const rep: GuestReport = {
    config: {}, dhcp: [], renewals: 0, renewRequested: false,
    pings: [], ticks: [], snapshots: [], errors: [], noLease: [], done: false,
    dhcp6: [], dhcpcdLog: [],
  };
  const dhcpBySeq = new Map<number, DhcpEvent>();
  const dhcp6BySeq = new Map<number, DhcpEvent>();
  let snap: GuestSnapshot | undefined;

  for (const rawLine of serial.split('\n')) {
    // Kernel messages can share a line with ours, so look anywhere in it.
    const at = rawLine.indexOf('PODTAP-GUEST');
    if (at < 0) continue;
    const line = rawLine.slice(at).replace(/\r/g, '').trimEnd();
    if (line === 'PODTAP-GUEST-DONE') {
      rep.done = true;
      continue;
    }
    const m = /^PODTAP-GUEST (\S+) ?(.*)$/.exec(line);
    if (!m) continue;
    const key = m[1]!;
    const value = m[2]!;
    const [first, second, third, fourth] = words(value);
    const afterFirst = value.slice(value.indexOf(' ') + 1);
    switch (key) {
      case 'config': {
        const eq = value.indexOf('=');
        if (eq > 0) rep.config[value.slice(0, eq)] = value.slice(eq + 1);
        break;
      }
      case 'boot':
        rep.kernel = first;
        rep.bootUptime = num(second);
        break;
      case 'nic':
        rep.nicUptime = num(second);
        break;
      case 'error':
        rep.errors.push(value);
        break;
      case 'renew-requested':
        rep.renewRequested = true;
        break;
      case 'dhcp-event': {
        const seq = Number(first);
        const ev: DhcpEvent = { seq, event: second ?? '', vars: {}, complete: false };
        dhcpBySeq.set(seq, ev);
        rep.dhcp.push(ev);
        break;
      }
      case 'dhcp-var': {
        const ev = dhcpBySeq.get(Number(first));
        const eq = afterFirst.indexOf('=');
        if (ev && eq > 0) ev.vars[afterFirst.slice(0, eq)] = afterFirst.slice(eq + 1);
        break;
      }
      case 'dhcp-end': {
        const ev = dhcpBySeq.get(Number(first));
        if (!ev) break;
        ev.complete = true;
        if (ev.event === 'bound' || ev.event === 'renew') rep.lease = leaseFromVars(ev.event, ev.vars);
        if (ev.event === 'renew') rep.renewals++;
        break;
      }
      case 'report':
        snap = {
          seq: Number(first), uptime: num(second), addresses: [], routes: [],
          resolv: { nameservers: [], search: [], options: [], raw: [] }, links: [], complete: false,
          addresses6: [], routes6: [], neigh6: [], resolv6: { nameservers: [], search: [], options: [], raw: [] },
        };
        rep.snapshots.push(snap);
        break;
      case 'report-end':
        if (snap) snap.complete = true;
        snap = undefined;
        break;
      case 'mac':
        if (snap) snap.mac = value.toLowerCase();
        break;
      case 'mtu':
        if (snap) snap.mtu = num(value);
        break;
      case 'hostname':
        if (snap) snap.hostname = value;
        break;
      case 'rxqueues':
        if (snap) snap.rxQueues = num(value);
        break;
      case 'txqueues':
        if (snap) snap.txQueues = num(value);
        break;
      case 'features':
        if (snap) snap.virtioFeatures = value;
        break;
      case 'addr': {
        const a = parseAddress(value);
        if (snap && a) snap.addresses.push(a);
        break;
      }
      case 'route':
        if (snap && value) snap.routes.push(parseRoute(value));
        break;
      case 'resolv':
        if (snap) addResolv(snap.resolv, value);
        break;
      case 'addr6': {
        const a = /\binet6 ([0-9a-f:]+)\/(\d+)/i.exec(value);
        if (snap && a) snap.addresses6.push({ local: a[1]!, prefixlen: Number(a[2]), raw: value });
        break;
      }
      case 'route6':
        if (snap && value) snap.routes6.push(parseRoute(value));
        break;
      case 'neigh6':
        if (snap && value) snap.neigh6.push(value);
        break;
      case 'resolv6':
        if (snap) addResolv(snap.resolv6, value);
        break;
      case 'ipv6-ready':
        rep.ipv6Ready = num(first);
        break;
      case 'dhcpcd-log':
        rep.dhcpcdLog.push(value);
        break;
      case 'dhcp6-event': {
        const ev: DhcpEvent = { seq: Number(first), event: second ?? '', vars: {}, complete: false };
        dhcp6BySeq.set(ev.seq, ev);
        rep.dhcp6.push(ev);
        break;
      }
      case 'dhcp6-var': {
        const ev = dhcp6BySeq.get(Number(first));
        const eq = afterFirst.indexOf('=');
        if (ev && eq > 0) ev.vars[afterFirst.slice(0, eq)] = afterFirst.slice(eq + 1);
        break;
      }
      case 'dhcp6-end': {
        const ev = dhcp6BySeq.get(Number(first));
        if (ev) ev.complete = true;
        break;
      }
      case 'link':
        if (snap && first && second) snap.links.push({ name: first, mac: second.toLowerCase(), mtu: num(third), addresses: [] });
        break;
      case 'linkaddr': {
        const a = parseAddress(afterFirst);
        const l = snap?.links.findLast((x) => x.name === first);
        if (l && a) l.addresses.push(a);
        break;
      }
      case 'nolease':
        if (first) rep.noLease.push(first);
        break;
      case 'ping': {
        const [rcv, sent] = (third ?? '').split('/');
        rep.pings.push({ target: first ?? '', ok: second === 'ok', received: num(rcv) ?? 0, sent: num(sent) ?? 0 });
        break;
      }
      case 'tick':
        rep.ticks.push({ n: Number(first), target: second ?? '', ok: third === 'ok', uptime: num(fourth) ?? NaN });
        break;
    }
  }
  rep.last = rep.snapshots.findLast((s) => s.complete) ?? rep.snapshots.at(-1);
  return rep;
}

// ---------------------------------------------------------------------------
// Running a guest

export interface RunGuestOptions {
  timeoutMs: number;
  onLine?: (line: string) => void; // every console line, \r stripped
  until?: (line: string) => boolean; // stop the guest early once this is true
  signal?: AbortSignal; // stop the guest (resolves, reason 'aborted')
  env?: NodeJS.ProcessEnv;
  killGraceMs?: number; // SIGTERM to SIGKILL, default 3000
  doneGraceMs?: number; // after PODTAP-GUEST-DONE, time to power off by itself, default 5000
}

export interface GuestRun {
  report: GuestReport;
  serial: string; // stdout as captured
  stderr: string;
  reason: 'done' | 'exit' | 'until' | 'aborted';
  exitCode: number | null;
  exitSignal: NodeJS.Signals | null;
  pid: number;
  durationMs: number;
}

export class GuestTimeoutError extends Error {
  readonly serial: string;
  readonly stderr: string;
  constructor(ms: number, serial: string, stderr: string) {
    const tail = serial.split('\n').slice(-25).join('\n');
    super(`guest did not finish within ${ms} ms; last console lines:\n${tail}\nstderr:\n${stderr.slice(-2000)}`);
    this.name = 'GuestTimeoutError';
    this.serial = serial;
    this.stderr = stderr;
  }
}

/**
 * Spawn argv (QEMU, possibly behind `ip netns exec` or `podtap run --`),
 * collect its console and settle once the guest says DONE, the process
 * exits, `until` matches or `signal` aborts. The process is always gone when
 * this settles: SIGTERM to it, then SIGKILL to its process group.
 */
export function runGuest(argv: string[], opts: RunGuestOptions): Promise<GuestRun> {
  const [cmd, ...args] = argv;
  if (!cmd) return Promise.reject(new Error('runGuest: empty argv'));
  const started = Date.now();
  // Own process group, so a wrapper's children can be killed with it.
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true, env: opts.env });
  let serial = '';
  let stderr = '';
  let pending = '';
  let reason: GuestRun['reason'] | undefined;
  let timedOut = false;

  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  let alive = true;
  let closed = false;
  void exited.then(() => {
    alive = false;
    // A wrapper (podtap run, ip netns exec) may die and leave a child holding
    // the console open; its group is still ours while such a member lives.
    setTimeout(() => {
      if (closed) return;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // nobody left in the group
      }
      child.stdout.destroy();
      child.stderr.destroy();
    }, 2000).unref();
  });

  const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());
  let stopping: Promise<void> | undefined;
  const stop = (after: number) =>
    (stopping ??= (async () => {
      if (after > 0) await Promise.race([exited, sleep(after)]);
      if (!alive) return;
      child.kill('SIGTERM');
      await Promise.race([exited, sleep(opts.killGraceMs ?? 3000)]);
      if (!alive) return;
      try {
        // The leader is still alive, so this group id is certainly ours.
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
      await exited;
    })());

  const finish = (r: GuestRun['reason'], after = 0) => {
    reason ??= r;
    void stop(after);
  };

  const handleLine = (line: string) => {
    opts.onLine?.(line);
    if (line.includes('PODTAP-GUEST-DONE')) finish('done', opts.doneGraceMs ?? 5000);
    else if (opts.until?.(line)) finish('until');
  };
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    serial += chunk;
    pending += chunk;
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    for (const l of lines) handleLine(l.replace(/\r/g, ''));
  });
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk: string) => (stderr += chunk));

  const timer = setTimeout(() => {
    timedOut = true;
    void stop(0);
  }, opts.timeoutMs);
  const onAbort = () => finish('aborted');
  if (opts.signal?.aborted) onAbort();
  opts.signal?.addEventListener('abort', onAbort, { once: true });

  return new Promise<GuestRun>((resolve, reject) => {
    child.once('error', (err) => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      if (child.pid === undefined) reject(err); // never started
      else void stop(0).then(() => reject(err));
    });
    child.once('close', () => {
      closed = true;
      void exited.then(({ code, signal }) => {
        clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        if (pending) handleLine(pending.replace(/\r/g, ''));
        if (timedOut && !reason) return reject(new GuestTimeoutError(opts.timeoutMs, serial, stderr));
        resolve({
          report: parseGuestOutput(serial),
          serial,
          stderr,
          reason: reason ?? 'exit',
          exitCode: code,
          exitSignal: signal,
          pid: child.pid!,
          durationMs: Date.now() - started,
        });
      });
    });
  });
}
