// tap-guest: a stand-in VMM whose "VM" is a network namespace.
//
//   podtap run -- tap-guest --netns GUEST --nic fds={fds},ifname=eth0,mac={mac},mtu={mtu} [--nic ...]
//
// For each --nic it takes the VMM's end of a TAP (the queue fds inherited
// from podtap, or a tap opened by name like Firecracker does), enters the
// guest network namespace, creates a TAP there with the same number of
// queues, the same flags and the same virtio-net header size, gives it the
// requested name, MAC and MTU, brings it up and copies frames both ways:
// queue i of the pod's tap <-> queue i of the guest's tap, as virtio-net pairs
// its queues with the tap's. Header bytes are copied verbatim; since neither
// tap has offloads turned on, no GSO or partial-checksum frame ever appears,
// and a header written to one tap means the same thing to the other.
//
// "ready" goes to stdout once every guest link is up. Exit status: 0 on
// SIGTERM/SIGINT, or when every pod-side tap has hung up (deleted, e.g. by
// podtap's teardown or `podtap down`); 1 on a runtime failure; 2 on bad
// usage. Per-queue frame counters go to stderr at exit.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <net/if_arp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_NICS 16
#define MAX_QUEUES 256 // podtap's --queues limit
#define BATCH 64       // frames moved per fd per wake-up, so one busy queue cannot starve the others

struct queue {
	int pod;   // the VMM's end of the pod's tap (podtap's fd)
	int guest; // our end of the tap in the guest namespace
	unsigned long to_guest, to_pod, dropped;
};

struct nic {
	const char *spec;
	const char *tap_name; // tap=NAME: open by name instead of inherited fds
	char ifname[IFNAMSIZ];
	char pod_ifname[IFNAMSIZ];
	unsigned char mac[6];
	int have_mac, mtu, nq, flags, hdr_size, alive;
	struct queue q[MAX_QUEUES];
};

// What one pollfd watches: one end of one queue of one NIC.
struct end {
	struct nic *n;
	struct queue *q;
	int pod_side;
};

static struct nic nics[MAX_NICS];
static int n_nics;
static unsigned char buf[65536 + 64]; // largest tap frame plus any header size

__attribute__((noreturn, format(printf, 2, 3))) static void die(int status, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("tap-guest: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(status);
}

__attribute__((noreturn)) static void usage(void)
{
	die(2, "usage: tap-guest --netns NAME|PATH --nic SPEC [--nic SPEC]...\n"
	       "  SPEC is comma-separated key=value:\n"
	       "    fds=3:4       inherited tap queue fds (podtap run's {fds}), or\n"
	       "    tap=NAME      an existing tap in the starting namespace, opened by name,\n"
	       "    queues=N      with tap=: queues to open (default 1)\n"
	       "    ifname=NAME   guest link name (default eth0, eth1, ... by position)\n"
	       "    mac=MAC       guest link MAC (default: the kernel's random one)\n"
	       "    mtu=N         guest link MTU (default: the kernel's)");
}

static long number(const char *s, long min, long max, const char *what)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		die(2, "%s: %s is not a number in %ld..%ld", what, s, min, max);
	return v;
}

// Parses a copy: argv stays as given, so ps shows the command line intact.
static void parse_nic(struct nic *n, int index, const char *arg)
{
	int queues = 0;
	char *spec = strdup(arg);
	n->spec = arg;
	n->mtu = -1;
	snprintf(n->ifname, sizeof n->ifname, "eth%d", index);
	for (char *save, *kv = strtok_r(spec, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
		char *v = strchr(kv, '=');
		if (!v)
			die(2, "--nic %s: %s is not key=value", n->spec, kv);
		*v++ = '\0';
		if (!strcmp(kv, "fds")) {
			for (char *s2, *f = strtok_r(v, ":", &s2); f; f = strtok_r(NULL, ":", &s2)) {
				if (n->nq == MAX_QUEUES)
					die(2, "--nic %s: more than %d fds", n->spec, MAX_QUEUES);
				n->q[n->nq++].pod = (int)number(f, 0, 1 << 20, "fds");
			}
		} else if (!strcmp(kv, "tap")) {
			n->tap_name = v;
		} else if (!strcmp(kv, "queues")) {
			queues = (int)number(v, 1, MAX_QUEUES, "queues");
		} else if (!strcmp(kv, "ifname")) {
			if (!*v || strlen(v) >= IFNAMSIZ)
				die(2, "--nic %s: bad ifname %s", n->spec, v);
			strcpy(n->ifname, v);
		} else if (!strcmp(kv, "mac")) {
			unsigned int b[6];
			char tail;
			if (sscanf(v, "%x:%x:%x:%x:%x:%x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &tail) != 6)
				die(2, "--nic %s: bad mac %s", n->spec, v);
			for (int i = 0; i < 6; i++) {
				if (b[i] > 0xff)
					die(2, "--nic %s: bad mac %s", n->spec, v);
				n->mac[i] = (unsigned char)b[i];
			}
			n->have_mac = 1;
		} else if (!strcmp(kv, "mtu")) {
			n->mtu = (int)number(v, 68, 65535, "mtu");
		} else {
			die(2, "--nic %s: unknown key %s", n->spec, kv);
		}
	}
	if (!n->tap_name == !n->nq)
		die(2, "--nic %s: needs either fds= or tap=", n->spec);
	if (queues && !n->tap_name)
		die(2, "--nic %s: queues= goes with tap= only (with fds= each fd is a queue)", n->spec);
	if (n->tap_name)
		n->nq = queues ? queues : 1;
}

// Opens one queue of tap `name` in the current namespace. `flags` are the
// TUNSETIFF flags; returns the fd.
static int open_queue(const char *name, int flags, const char *where)
{
	struct ifreq ifr;
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		die(1, "%s: open /dev/net/tun: %s", where, strerror(errno));
	memset(&ifr, 0, sizeof ifr);
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	ifr.ifr_flags = (short)flags;
	if (ioctl(fd, TUNSETIFF, &ifr) < 0)
		die(1, "%s: TUNSETIFF %s: %s", where, name, strerror(errno));
	return fd;
}

// The pod side: check that every fd is a queue of one and the same tap, and
// learn its flags and header size, which the guest side copies.
static void take_pod_side(struct nic *n)
{
	if (n->tap_name) {
		// Firecracker-style: the tap exists already (podtap up --persist-tap).
		int flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (n->nq > 1 ? IFF_MULTI_QUEUE : 0);
		for (int i = 0; i < n->nq; i++)
			n->q[i].pod = open_queue(n->tap_name, flags, n->spec);
	}
	for (int i = 0; i < n->nq; i++) {
		struct ifreq ifr;
		memset(&ifr, 0, sizeof ifr);
		if (ioctl(n->q[i].pod, TUNGETIFF, &ifr) < 0)
			die(1, "--nic %s: fd %d is not an attached tap queue: %s", n->spec, n->q[i].pod, strerror(errno));
		if (!(ifr.ifr_flags & IFF_TAP))
			die(1, "--nic %s: fd %d is a tun, not a tap", n->spec, n->q[i].pod);
		if (i == 0) {
			snprintf(n->pod_ifname, IFNAMSIZ, "%s", ifr.ifr_name);
			n->flags = ifr.ifr_flags & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE);
		} else if (strcmp(n->pod_ifname, ifr.ifr_name)) {
			die(1, "--nic %s: fds belong to different taps (%s, %s)", n->spec, n->pod_ifname, ifr.ifr_name);
		}
	}
	if (n->nq > 1 && !(n->flags & IFF_MULTI_QUEUE))
		die(1, "--nic %s: %d fds but %s is not a multi-queue tap", n->spec, n->nq, n->pod_ifname);
	n->hdr_size = 0;
	if ((n->flags & IFF_VNET_HDR) && ioctl(n->q[0].pod, TUNGETVNETHDRSZ, &n->hdr_size) < 0)
		die(1, "--nic %s: TUNGETVNETHDRSZ: %s", n->spec, strerror(errno));
	// Non-blocking, as QEMU sets its tap fds: poll says when to read.
	for (int i = 0; i < n->nq; i++)
		if (fcntl(n->q[i].pod, F_SETFL, fcntl(n->q[i].pod, F_GETFL) | O_NONBLOCK) < 0)
			die(1, "--nic %s: fcntl: %s", n->spec, strerror(errno));
}

// Two NICs (or two queues) on one fd would make frames take the wrong path.
static void check_distinct(void)
{
	for (int a = 0; a < n_nics; a++)
		for (int i = 0; i < nics[a].nq; i++)
			for (int b = a; b < n_nics; b++)
				for (int j = (b == a ? i + 1 : 0); j < nics[b].nq; j++)
					if (nics[a].q[i].pod == nics[b].q[j].pod)
						die(2, "fd %d is given twice", nics[a].q[i].pod);
}

static void enter_netns(const char *netns)
{
	char path[4096];
	snprintf(path, sizeof path, strchr(netns, '/') ? "%s" : "/run/netns/%s", netns);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die(1, "open %s: %s", path, strerror(errno));
	if (setns(fd, CLONE_NEWNET) < 0)
		die(1, "setns %s: %s", path, strerror(errno));
	close(fd);
}

static void ifreq_ioctl(int sock, unsigned long req, struct ifreq *ifr, const char *what)
{
	if (ioctl(sock, req, ifr) < 0)
		die(1, "%s %s: %s", what, ifr->ifr_name, strerror(errno));
}

// The guest side, in the guest namespace: same queue count, flags and header
// size as the pod's tap, no offloads, then MAC, MTU and up.
static void make_guest_side(struct nic *n, int sock)
{
	for (int i = 0; i < n->nq; i++) {
		// The first queue insists on creating the link: an existing one is an error.
		int fd = open_queue(n->ifname, n->flags | (i == 0 ? IFF_TUN_EXCL : 0), n->spec);
		if (n->hdr_size && ioctl(fd, TUNSETVNETHDRSZ, &n->hdr_size) < 0)
			die(1, "--nic %s: TUNSETVNETHDRSZ: %s", n->spec, strerror(errno));
		if ((n->flags & IFF_VNET_HDR) && ioctl(fd, TUNSETOFFLOAD, 0UL) < 0)
			die(1, "--nic %s: TUNSETOFFLOAD: %s", n->spec, strerror(errno));
		if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
			die(1, "--nic %s: fcntl: %s", n->spec, strerror(errno));
		n->q[i].guest = fd;
	}
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", n->ifname);
	if (n->have_mac) {
		ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
		memcpy(ifr.ifr_hwaddr.sa_data, n->mac, 6);
		ifreq_ioctl(sock, SIOCSIFHWADDR, &ifr, "set mac of");
	}
	if (n->mtu > 0) {
		ifr.ifr_mtu = n->mtu;
		ifreq_ioctl(sock, SIOCSIFMTU, &ifr, "set mtu of");
	}
	ifreq_ioctl(sock, SIOCGIFFLAGS, &ifr, "get flags of");
	ifr.ifr_flags |= IFF_UP;
	ifreq_ioctl(sock, SIOCSIFFLAGS, &ifr, "bring up");
	n->alive = 1;
}

// Moves up to BATCH frames from one tap fd to the other. Each read gives
// exactly one frame (header included); the write hands it over whole.
// Returns -1 if `from` is gone, 0 otherwise.
static int pump(int from, int to, unsigned long *moved, unsigned long *dropped)
{
	for (int i = 0; i < BATCH; i++) {
		ssize_t len = read(from, buf, sizeof buf);
		if (len < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : -1;
		if (write(to, buf, (size_t)len) == len)
			(*moved)++;
		else
			(*dropped)++; // a full or detached peer; a gone peer shows up in poll
	}
	return 0;
}

static void report(void)
{
	for (int k = 0; k < n_nics; k++)
		for (int i = 0; i < nics[k].nq; i++)
			fprintf(stderr, "tap-guest: %s queue %d: %lu frames to the guest, %lu to the pod, %lu dropped\n",
			        nics[k].ifname, i, nics[k].q[i].to_guest, nics[k].q[i].to_pod, nics[k].q[i].dropped);
}

// A NIC whose pod side is gone is unplugged: its guest link disappears with
// our fds, like a hot-unplugged virtio-net device.
static void unplug(struct nic *n, const char *why)
{
	fprintf(stderr, "tap-guest: %s: %s; removing the guest link\n", n->ifname, why);
	for (int i = 0; i < n->nq; i++) {
		close(n->q[i].pod);
		close(n->q[i].guest);
	}
	n->alive = 0;
}

int main(int argc, char **argv)
{
	const char *netns = NULL;

	// Signals are read from a signalfd in the poll loop; blocking them
	// first means one arriving during set-up is handled, not fatal.
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	int sfd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0)
		die(1, "signalfd: %s", strerror(errno));

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--netns") && i + 1 < argc) {
			netns = argv[++i];
		} else if (!strcmp(argv[i], "--nic") && i + 1 < argc) {
			if (n_nics == MAX_NICS)
				die(2, "at most %d --nic", MAX_NICS);
			parse_nic(&nics[n_nics], n_nics, argv[++i]);
			n_nics++;
		} else {
			usage();
		}
	}
	if (!netns || n_nics == 0)
		usage();

	for (int k = 0; k < n_nics; k++)
		take_pod_side(&nics[k]);
	check_distinct();
	enter_netns(netns);
	// Sockets belong to the namespace they are made in: this one to the guest's.
	int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		die(1, "socket: %s", strerror(errno));
	for (int k = 0; k < n_nics; k++)
		make_guest_side(&nics[k], sock);
	close(sock);
	printf("ready\n");
	fflush(stdout);

	// One pollfd per queue end, plus the signalfd at index 0.
	static struct pollfd pfd[1 + 2 * MAX_NICS * MAX_QUEUES];
	static struct end who[1 + 2 * MAX_NICS * MAX_QUEUES];
	int live = n_nics;
	while (live > 0) {
		int np = 0;
		pfd[np++] = (struct pollfd){ .fd = sfd, .events = POLLIN };
		for (int k = 0; k < n_nics; k++) {
			if (!nics[k].alive)
				continue;
			for (int i = 0; i < nics[k].nq; i++) {
				who[np] = (struct end){ &nics[k], &nics[k].q[i], 1 };
				pfd[np++] = (struct pollfd){ .fd = nics[k].q[i].pod, .events = POLLIN };
				who[np] = (struct end){ &nics[k], &nics[k].q[i], 0 };
				pfd[np++] = (struct pollfd){ .fd = nics[k].q[i].guest, .events = POLLIN };
			}
		}
		if (poll(pfd, (nfds_t)np, -1) < 0) {
			if (errno == EINTR)
				continue;
			die(1, "poll: %s", strerror(errno));
		}
		if (pfd[0].revents) {
			struct signalfd_siginfo si;
			if (read(sfd, &si, sizeof si) == sizeof si) {
				fprintf(stderr, "tap-guest: %s, exiting\n", strsignal((int)si.ssi_signo));
				report();
				return 0;
			}
		}
		for (int p = 1; p < np; p++) {
			struct nic *n = who[p].n;
			struct queue *q = who[p].q;
			if (!pfd[p].revents || !n->alive)
				continue;
			int gone = (pfd[p].revents & (POLLERR | POLLHUP | POLLNVAL)) != 0;
			if (!gone && who[p].pod_side)
				gone = pump(q->pod, q->guest, &q->to_guest, &q->dropped) < 0;
			else if (!gone)
				gone = pump(q->guest, q->pod, &q->to_pod, &q->dropped) < 0;
			if (gone && who[p].pod_side) {
				unplug(n, "the pod's tap hung up");
				live--;
			} else if (gone) {
				report();
				die(1, "%s: the guest link is gone (deleted in the guest namespace?)", n->ifname);
			}
		}
	}
	fprintf(stderr, "tap-guest: every pod-side tap hung up, exiting\n");
	report();
	return 0;
}
