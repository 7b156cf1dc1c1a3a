// pkt: raw Ethernet frames for attack tests, in the current network namespace.
//
//   pkt send --ifname IF --hex HEX [--count N] [--interval-us U]
//       Sends the frame HEX (destination MAC first, VLAN tags and all, no FCS)
//       N times (default 1), U microseconds apart, exactly as given: nothing
//       is added, padded or rewritten. Separators ':' '.' '-' '_' and spaces
//       in HEX are ignored. Prints "sent N".
//
//   pkt recv --ifname IF [--match HEX[@OFFSET]]... [--count N] [--timeout-ms T]
//       Prints "listening" once bound, then every incoming frame on IF that
//       contains each --match (at OFFSET, or anywhere without one) as one hex
//       line, the way it was on the wire: a VLAN tag the kernel took out of
//       the frame is put back. Stops after N frames, after T ms or on
//       SIGTERM/SIGINT, and prints "done COUNT".
//
// Exit status 0 when it did what was asked (recv: also when fewer than N
// frames came), 1 on a failed syscall, 2 on bad usage.

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FRAME 65536
#define MAX_MATCH 8

__attribute__((noreturn, format(printf, 2, 3))) static void die(int status, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("pkt: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(status);
}

__attribute__((noreturn)) static void usage(void)
{
	die(2, "usage: pkt send --ifname IF --hex HEX [--count N] [--interval-us U]\n"
	       "       pkt recv --ifname IF [--match HEX[@OFFSET]]... [--count N] [--timeout-ms T]");
}

static long number(const char *s, const char *what)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < 0)
		die(2, "%s: %s is not a non-negative number", what, s);
	return v;
}

// Decodes hex digits (separators ignored) into out; returns the byte count.
static size_t unhex(const char *s, unsigned char *out, size_t max, const char *what)
{
	size_t n = 0;
	int half = -1;
	for (; *s; s++) {
		int d;
		if (*s >= '0' && *s <= '9')
			d = *s - '0';
		else if (*s >= 'a' && *s <= 'f')
			d = *s - 'a' + 10;
		else if (*s >= 'A' && *s <= 'F')
			d = *s - 'A' + 10;
		else if (strchr(":.-_ ", *s))
			continue;
		else
			die(2, "%s: '%c' is not a hex digit", what, *s);
		if (half < 0) {
			half = d;
			continue;
		}
		if (n == max)
			die(2, "%s: longer than %zu bytes", what, max);
		out[n++] = (unsigned char)(half << 4 | d);
		half = -1;
	}
	if (half >= 0)
		die(2, "%s: odd number of hex digits", what);
	return n;
}

static int ifindex(const char *ifname)
{
	unsigned int i = if_nametoindex(ifname);
	if (!i)
		die(1, "no interface %s in this network namespace", ifname);
	return (int)i;
}

static int do_send(const char *ifname, const char *hex, long count, long interval_us)
{
	static unsigned char frame[MAX_FRAME];
	size_t len = unhex(hex, frame, sizeof frame, "--hex");
	if (len < ETH_HLEN)
		die(2, "--hex: a frame needs at least %d bytes (two MACs and a type), got %zu", ETH_HLEN, len);
	// Protocol 0: this socket receives nothing; the kernel reads the
	// protocol from the frame itself.
	int s = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
	if (s < 0)
		die(1, "socket(AF_PACKET): %s", strerror(errno));
	struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_ifindex = ifindex(ifname), .sll_halen = ETH_ALEN };
	memcpy(to.sll_addr, frame, ETH_ALEN);
	for (long i = 0; i < count; i++) {
		if (i > 0 && interval_us > 0) {
			struct timespec ts = { interval_us / 1000000, (interval_us % 1000000) * 1000 };
			while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
				;
		}
		ssize_t n = sendto(s, frame, len, 0, (struct sockaddr *)&to, sizeof to);
		if (n != (ssize_t)len)
			die(1, "send on %s (frame %ld of %ld): %s", ifname, i + 1, count, n < 0 ? strerror(errno) : "short write");
	}
	printf("sent %ld\n", count);
	return 0;
}

struct match {
	unsigned char bytes[256];
	size_t len;
	long offset; // -1: anywhere
};

static int matches(const unsigned char *f, size_t len, const struct match *m)
{
	if (m->offset >= 0)
		return (size_t)m->offset + m->len <= len && !memcmp(f + m->offset, m->bytes, m->len);
	return memmem(f, len, m->bytes, m->len) != NULL;
}

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int do_recv(const char *ifname, struct match *m, int nm, long want, long timeout_ms)
{
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	int sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
	if (sfd < 0)
		die(1, "signalfd: %s", strerror(errno));

	int idx = ifindex(ifname);
	int s = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, htons(ETH_P_ALL));
	if (s < 0)
		die(1, "socket(AF_PACKET): %s", strerror(errno));
	int on = 1;
	// The kernel strips VLAN tags before packet sockets see the frame; the
	// aux data says what was there.
	if (setsockopt(s, SOL_PACKET, PACKET_AUXDATA, &on, sizeof on) < 0)
		die(1, "PACKET_AUXDATA: %s", strerror(errno));
	struct sockaddr_ll at = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = idx };
	if (bind(s, (struct sockaddr *)&at, sizeof at) < 0)
		die(1, "bind to %s: %s", ifname, strerror(errno));
	printf("listening\n");
	fflush(stdout);

	static unsigned char frame[MAX_FRAME + 4];
	static char line[2 * (MAX_FRAME + 4) + 2];
	long seen = 0, deadline = timeout_ms >= 0 ? now_ms() + timeout_ms : -1;
	while (want < 0 || seen < want) {
		long wait = -1;
		if (deadline >= 0 && (wait = deadline - now_ms()) <= 0)
			break;
		struct pollfd p[2] = { { .fd = s, .events = POLLIN }, { .fd = sfd, .events = POLLIN } };
		if (poll(p, 2, (int)wait) < 0) {
			if (errno == EINTR)
				continue;
			die(1, "poll: %s", strerror(errno));
		}
		if (p[1].revents)
			break;
		if (!p[0].revents)
			continue;
		for (;;) {
			union {
				struct cmsghdr h;
				char space[CMSG_SPACE(sizeof(struct tpacket_auxdata))];
			} ctl;
			struct sockaddr_ll from;
			// Leave 4 bytes in front of the payload's type field free for a tag.
			struct iovec iov = { frame + 4, MAX_FRAME };
			struct msghdr msg = { .msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1,
			                      .msg_control = &ctl, .msg_controllen = sizeof ctl };
			ssize_t n = recvmsg(s, &msg, MSG_TRUNC);
			if (n < 0) {
				if (errno == EAGAIN || errno == EINTR)
					break;
				die(1, "recv on %s: %s", ifname, strerror(errno));
			}
			if (from.sll_ifindex != idx || from.sll_pkttype == PACKET_OUTGOING || n < ETH_HLEN || n > MAX_FRAME)
				continue;
			unsigned char *f = frame + 4;
			size_t len = (size_t)n;
			for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
				if (c->cmsg_level != SOL_PACKET || c->cmsg_type != PACKET_AUXDATA)
					continue;
				struct tpacket_auxdata aux;
				memcpy(&aux, CMSG_DATA(c), sizeof aux);
				if (!(aux.tp_status & TP_STATUS_VLAN_VALID) && !aux.tp_vlan_tci)
					continue;
				unsigned short tpid = (aux.tp_status & TP_STATUS_VLAN_TPID_VALID) ? aux.tp_vlan_tpid : ETH_P_8021Q;
				// Shift the MACs 4 bytes forward and put the tag after them.
				memmove(frame, f, 2 * ETH_ALEN);
				f = frame;
				f[12] = (unsigned char)(tpid >> 8);
				f[13] = (unsigned char)tpid;
				f[14] = (unsigned char)(aux.tp_vlan_tci >> 8);
				f[15] = (unsigned char)aux.tp_vlan_tci;
				len += 4;
			}
			int ok = 1;
			for (int i = 0; i < nm && ok; i++)
				ok = matches(f, len, &m[i]);
			if (!ok)
				continue;
			for (size_t i = 0; i < len; i++)
				sprintf(line + 2 * i, "%02x", f[i]);
			puts(line);
			fflush(stdout);
			if (++seen == want)
				break;
		}
	}
	printf("done %ld\n", seen);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	const char *mode = argv[1], *ifname = NULL, *hex = NULL;
	long count = -1, interval_us = 0, timeout_ms = -1;
	static struct match m[MAX_MATCH];
	int nm = 0;
	for (int i = 2; i < argc; i++) {
		const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
		if (!val)
			usage();
		i++;
		if (!strcmp(opt, "--ifname"))
			ifname = val;
		else if (!strcmp(opt, "--hex"))
			hex = val;
		else if (!strcmp(opt, "--count"))
			count = number(val, "--count");
		else if (!strcmp(opt, "--interval-us"))
			interval_us = number(val, "--interval-us");
		else if (!strcmp(opt, "--timeout-ms"))
			timeout_ms = number(val, "--timeout-ms");
		else if (!strcmp(opt, "--match")) {
			if (nm == MAX_MATCH)
				die(2, "at most %d --match", MAX_MATCH);
			char *copy = strdup(val), *at = strchr(copy, '@');
			m[nm].offset = -1;
			if (at) {
				*at = '\0';
				m[nm].offset = number(at + 1, "--match offset");
			}
			m[nm].len = unhex(copy, m[nm].bytes, sizeof m[nm].bytes, "--match");
			if (!m[nm].len)
				die(2, "--match: empty");
			nm++;
			free(copy);
		} else
			usage();
	}
	if (!ifname)
		usage();
	if (!strcmp(mode, "send")) {
		if (!hex || nm || timeout_ms >= 0)
			usage();
		return do_send(ifname, hex, count < 0 ? 1 : count, interval_us);
	}
	if (!strcmp(mode, "recv")) {
		if (hex || interval_us)
			usage();
		return do_recv(ifname, m, nm, count, timeout_ms);
	}
	usage();
}
