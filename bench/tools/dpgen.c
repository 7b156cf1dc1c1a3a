/*
 * dpgen: both ends of podtap's data-path benchmark (bench/datapath.ts).
 *
 * On the VM side it stands in for the VMM: it writes Ethernet/IPv4/UDP frames
 * from the VM's MAC and address into the VM's NIC as fast as it can, or reads
 * and counts what arrives there. On the node side (pkt-tx) it sends frames to
 * the VM through an AF_PACKET socket on the node's end of the pod veth.
 *
 *   dpgen tx    ENDPOINT FLOW --size N --seconds S          one JSON line
 *   dpgen rx    ENDPOINT FLOW --seconds S [--warmup W]      one JSON line
 *   dpgen agent ENDPOINT FLOW --ctl SOCKET                  commands over a socket
 *   dpgen pkt-tx --ifname IF FLOW --size N --seconds S      one JSON line
 *
 * ENDPOINT, the VM's NIC as a VMM holds it:
 *   --fds 3:4      TAP queue fds inherited from `podtap run` ({fds}); each
 *                  frame carries the fd's virtio-net header (IFF_VNET_HDR,
 *                  size from TUNGETVNETHDRSZ, all zero: no offloads)
 *   --dev PATH     a macvtap character device; opened here, same framing
 *   --passt PATH   passt's UNIX socket, QEMU's stream protocol: a 4-byte
 *                  big-endian length, then the frame
 * Several fds are several queues: one thread each, sending or reading at
 * once, each with its own UDP source port (so its own flow).
 *
 * FLOW: --mac/--ip (ours), --peer-mac/--peer-ip (destination of what we
 * send), --port (UDP destination port of what we send, default 7777),
 * --rx-port (the UDP destination port rx counts as "matched", default 7778).
 *
 * --size is the Ethernet frame as the kernel and nft see it, without the
 * FCS: 60 at least, 1514 is a full 1500-byte MTU packet. The IPv4 and UDP
 * checksums are valid; the payload starts with "dpgen".
 *
 * Results carry "cpu": CPU seconds of the threads that did the work (the
 * writers for tx, the readers in the counted window for rx, the whole
 * process for pkt-tx), system time included.
 *
 * agent: connects to the UNIX stream socket --ctl, says hello as one JSON
 * line, then answers one JSON line per command line:
 *   tx SIZE SECONDS        send for SECONDS
 *   rx WARMUP SECONDS      announce, read and drop for WARMUP, count for SECONDS
 *   announce               gratuitous ARPs plus one UDP frame (bridge FDB, passt)
 *   quit
 * The benchmark keeps one agent per data path for the whole run, so trials
 * measure a path that is already up and warm. Between commands (and while
 * it sends to passt) the agent keeps reading the NIC and drops what it
 * reads, as a VMM does: passt stalls once its socket to the guest is full.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_QUEUES 64
#define MAX_FRAME 9018
#define STREAM_BUF (256 * 1024)

enum kind { K_TAP, K_STREAM };

struct endpoint {
	int fd;
	enum kind kind;
	int hdr;       /* virtio-net header bytes in front of each frame (tap) */
	/* stream (passt) receive state: bytes kept between reads */
	unsigned char *sbuf;
	size_t sfill;
};

struct flow {
	unsigned char mac[6], peer_mac[6];
	struct in_addr ip, peer_ip;
	uint16_t port, rx_port;
};

static struct endpoint eps[MAX_QUEUES];
static int n_eps;
static struct flow fl = { .port = 7777, .rx_port = 7778 };

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("dpgen: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(2);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* CPU time of the calling thread, system time included: for tap and macvtap
 * writes that is the whole path, which the kernel runs inside write(). */
static double thread_cpu(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void parse_mac(const char *s, unsigned char *m)
{
	if (sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6)
		die("bad MAC %s", s);
}

static void parse_ip(const char *s, struct in_addr *a)
{
	if (inet_pton(AF_INET, s, a) != 1)
		die("bad IPv4 address %s", s);
}

static long parse_long(const char *s, long lo, long hi, const char *what)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || v < lo || v > hi)
		die("%s wants an integer in %ld..%ld, not %s", what, lo, hi, s);
	return v;
}

static double parse_seconds(const char *s, const char *what)
{
	char *end;
	double v = strtod(s, &end);
	if (*s == '\0' || *end != '\0' || !(v >= 0 && v <= 3600))
		die("%s wants seconds in 0..3600, not %s", what, s);
	return v;
}

/* ---------------------------------------------------------------- frames */

static uint16_t csum_fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static uint32_t csum_add(uint32_t sum, const unsigned char *p, size_t n)
{
	for (size_t i = 0; i + 1 < n; i += 2)
		sum += (uint32_t)p[i] << 8 | p[i + 1];
	if (n & 1)
		sum += (uint32_t)p[n - 1] << 8;
	return sum;
}

/*
 * An Ethernet/IPv4/UDP frame of `size` bytes from (mac, ip, sport) to
 * (dmac, dip, dport), with valid IPv4 and UDP checksums.
 */
static size_t build_udp(unsigned char *f, size_t size, const unsigned char *mac, const unsigned char *dmac,
			struct in_addr ip, struct in_addr dip, uint16_t sport, uint16_t dport)
{
	memset(f, 0, size);
	memcpy(f, dmac, 6);
	memcpy(f + 6, mac, 6);
	f[12] = 0x08;
	f[13] = 0x00;
	unsigned char *iph = f + 14;
	size_t iplen = size - 14, udplen = size - 34;
	iph[0] = 0x45;
	iph[2] = iplen >> 8;
	iph[3] = iplen & 0xff;
	iph[6] = 0x40; /* DF */
	iph[8] = 64;
	iph[9] = 17;
	memcpy(iph + 12, &ip, 4);
	memcpy(iph + 16, &dip, 4);
	uint16_t c = csum_fold(csum_add(0, iph, 20));
	iph[10] = c >> 8;
	iph[11] = c & 0xff;
	unsigned char *udp = iph + 20;
	udp[0] = sport >> 8;
	udp[1] = sport & 0xff;
	udp[2] = dport >> 8;
	udp[3] = dport & 0xff;
	udp[4] = udplen >> 8;
	udp[5] = udplen & 0xff;
	memcpy(udp + 8, "dpgen", udplen - 8 < 5 ? udplen - 8 : 5);
	uint32_t sum = csum_add(0, iph + 12, 8); /* pseudo header: addresses */
	sum += 17 + (uint32_t)udplen;
	sum = csum_add(sum, udp, udplen);
	c = csum_fold(sum);
	if (c == 0)
		c = 0xffff;
	udp[6] = c >> 8;
	udp[7] = c & 0xff;
	return size;
}

/* A gratuitous ARP request: who-has ip tell ip, from mac, broadcast. */
static size_t build_garp(unsigned char *f, const unsigned char *mac, struct in_addr ip)
{
	memset(f, 0, 60);
	memset(f, 0xff, 6);
	memcpy(f + 6, mac, 6);
	f[12] = 0x08;
	f[13] = 0x06;
	unsigned char *a = f + 14;
	a[1] = 1;    /* Ethernet */
	a[2] = 0x08; /* IPv4 */
	a[4] = 6;
	a[5] = 4;
	a[7] = 1; /* request */
	memcpy(a + 8, mac, 6);
	memcpy(a + 14, &ip, 4);
	memcpy(a + 24, &ip, 4);
	return 60;
}

/* Is this frame IPv4/UDP to port? */
static int matches(const unsigned char *f, size_t n, uint16_t port)
{
	if (n < 42 || f[12] != 0x08 || f[13] != 0x00 || (f[14] >> 4) != 4 || f[23] != 17)
		return 0;
	size_t ihl = (size_t)(f[14] & 0x0f) * 4;
	if (ihl < 20 || n < 14 + ihl + 8)
		return 0;
	const unsigned char *udp = f + 14 + ihl;
	return (udp[2] << 8 | udp[3]) == port;
}

/* ------------------------------------------------------------- endpoints */

static void set_nonblock(int fd)
{
	int fl_ = fcntl(fd, F_GETFL);
	if (fl_ < 0 || fcntl(fd, F_SETFL, fl_ | O_NONBLOCK) < 0)
		die("fcntl(%d): %s", fd, strerror(errno));
}

/* A tap or macvtap queue fd: its virtio-net header size from the kernel. */
static void add_tap_fd(int fd)
{
	if (n_eps == MAX_QUEUES)
		die("at most %d queues", MAX_QUEUES);
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	if (ioctl(fd, TUNGETIFF, &ifr) < 0)
		die("fd %d is not a tap queue (TUNGETIFF: %s)", fd, strerror(errno));
	int hdr = 0;
	if (ifr.ifr_flags & IFF_VNET_HDR) {
		if (ioctl(fd, TUNGETVNETHDRSZ, &hdr) < 0)
			die("TUNGETVNETHDRSZ on fd %d: %s", fd, strerror(errno));
	}
	set_nonblock(fd);
	eps[n_eps++] = (struct endpoint){ .fd = fd, .kind = K_TAP, .hdr = hdr };
}

static void add_passt(const char *path)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof sa.sun_path)
		die("socket path too long: %s", path);
	strcpy(sa.sun_path, path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
		die("connect %s: %s", path, strerror(errno));
	set_nonblock(fd);
	unsigned char *b = malloc(STREAM_BUF);
	if (!b)
		die("out of memory");
	eps[n_eps++] = (struct endpoint){ .fd = fd, .kind = K_STREAM, .sbuf = b };
}

static int wait_fd(int fd, short ev, int ms)
{
	struct pollfd p = { .fd = fd, .events = ev };
	return poll(&p, 1, ms);
}

/* Writes all of buf to a stream endpoint (used to finish a frame, and for announce). */
static int write_all(int fd, const unsigned char *b, size_t n)
{
	while (n) {
		ssize_t w = write(fd, b, n);
		if (w > 0) {
			b += w;
			n -= (size_t)w;
		} else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
			if (wait_fd(fd, POLLOUT, 1000) == 0)
				return -1;
		} else {
			return -1;
		}
	}
	return 0;
}

/* One frame to an endpoint, with its framing (virtio-net header or length). */
static int send_one(struct endpoint *e, const unsigned char *frame, size_t len)
{
	unsigned char buf[MAX_FRAME + 16];
	size_t off;
	if (e->kind == K_TAP) {
		memset(buf, 0, (size_t)e->hdr);
		off = (size_t)e->hdr;
	} else {
		uint32_t be = htonl((uint32_t)len);
		memcpy(buf, &be, 4);
		off = 4;
	}
	memcpy(buf + off, frame, len);
	if (e->kind == K_STREAM)
		return write_all(e->fd, buf, off + len);
	for (int tries = 0; tries < 100; tries++) {
		if (write(e->fd, buf, off + len) >= 0)
			return 0;
		if (errno != EAGAIN && errno != EINTR && errno != ENOBUFS)
			return -1;
		wait_fd(e->fd, POLLOUT, 10);
	}
	return -1;
}

/* Gratuitous ARPs and one UDP frame: the bridge learns the VM's MAC on the
 * tap port, passt learns the guest's MAC and address. */
static void announce(void)
{
	unsigned char f[64];
	for (int i = 0; i < n_eps; i++) {
		for (int k = 0; k < 3; k++) {
			size_t n = build_garp(f, fl.mac, fl.ip);
			send_one(&eps[i], f, n);
		}
		size_t n = build_udp(f, 64, fl.mac, fl.peer_mac, fl.ip, fl.peer_ip, (uint16_t)(fl.rx_port + i), fl.port);
		send_one(&eps[i], f, n);
	}
}

/* ------------------------------------------------------------- workers */

static int drain(struct endpoint *e);

struct job {
	struct endpoint *e;
	int queue;
	size_t size;
	double warm_until, end; /* absolute CLOCK_MONOTONIC */
	/* results */
	unsigned long long sent, errors, frames, matched, bytes, other;
	int first_errno;
	double t0, t1; /* the counted window */
	double cpu;    /* this thread's CPU seconds in it */
};

static void tx_tap(struct job *j)
{
	unsigned char buf[MAX_FRAME + 16];
	size_t off = (size_t)j->e->hdr;
	memset(buf, 0, off);
	build_udp(buf + off, j->size, fl.mac, fl.peer_mac, fl.ip, fl.peer_ip, (uint16_t)(40000 + j->queue), fl.port);
	size_t len = off + j->size;
	int fd = j->e->fd;
	double c0 = thread_cpu();
	j->t0 = now();
	double t = j->t0;
	while (t < j->end) {
		for (int k = 0; k < 64; k++) {
			ssize_t w = write(fd, buf, len);
			if (w == (ssize_t)len) {
				j->sent++;
			} else if (w < 0 && (errno == EAGAIN || errno == ENOBUFS || errno == EINTR)) {
				wait_fd(fd, POLLOUT, 10);
			} else {
				if (!j->errors++)
					j->first_errno = w < 0 ? errno : EIO;
				if (j->errors > 1000000)
					goto out;
			}
		}
		t = now();
	}
out:
	j->t1 = now();
	j->cpu = thread_cpu() - c0;
}

static void tx_stream(struct job *j)
{
	size_t per = 4 + j->size;
	size_t count = STREAM_BUF / per;
	if (count == 0)
		count = 1;
	unsigned char *buf = malloc(count * per);
	if (!buf)
		die("out of memory");
	for (size_t i = 0; i < count; i++) {
		uint32_t be = htonl((uint32_t)j->size);
		memcpy(buf + i * per, &be, 4);
		build_udp(buf + i * per + 4, j->size, fl.mac, fl.peer_mac, fl.ip, fl.peer_ip, (uint16_t)(40000 + j->queue), fl.port);
	}
	size_t total = count * per, pos = 0;
	unsigned long long bytes = 0;
	int fd = j->e->fd;
	double c0 = thread_cpu();
	j->t0 = now();
	while (now() < j->end) {
		ssize_t w = write(fd, buf + pos, total - pos);
		if (w > 0) {
			bytes += (size_t)w;
			pos = (pos + (size_t)w) % total;
		} else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
			/* passt may be waiting for us to read: keep reading while we wait. */
			struct pollfd pf = { .fd = fd, .events = POLLOUT | POLLIN };
			if (poll(&pf, 1, 10) > 0 && (pf.revents & POLLIN))
				drain(j->e);
		} else {
			j->errors++;
			j->first_errno = w < 0 ? errno : EIO;
			break;
		}
	}
	/* Finish the frame we are in the middle of: the stream stays framed. */
	size_t partial = pos % per;
	if (partial && !j->errors) {
		if (write_all(fd, buf + pos, per - partial) == 0)
			bytes += per - partial;
		else
			j->errors++;
	}
	j->t1 = now();
	j->cpu = thread_cpu() - c0;
	j->sent = bytes / per;
	free(buf);
}

static void count_frame(struct job *j, const unsigned char *f, size_t n, int counting)
{
	if (!counting)
		return;
	j->frames++;
	j->bytes += n;
	if (matches(f, n, fl.rx_port))
		j->matched++;
	else
		j->other++;
}

/* Takes the complete frames out of a stream endpoint's buffer; counts them
 * into j when counting, else drops them. A partial frame stays for later. */
static void stream_frames(struct endpoint *e, struct job *j, int counting)
{
	size_t p = 0;
	while (e->sfill - p >= 4) {
		uint32_t be;
		memcpy(&be, e->sbuf + p, 4);
		size_t len = ntohl(be);
		if (len > STREAM_BUF - 4)
			die("passt stream out of sync (frame length %zu)", len);
		if (e->sfill - p < 4 + len)
			break;
		if (j)
			count_frame(j, e->sbuf + p + 4, len, counting);
		p += 4 + len;
	}
	memmove(e->sbuf, e->sbuf + p, e->sfill - p);
	e->sfill -= p;
}

/*
 * Reads and drops whatever the endpoint has for the VM, without blocking.
 * A VMM reads its NIC all the time, and passt needs that: once its socket
 * to the guest is full it stops forwarding in both directions for a long
 * while. So the agent drains between commands and while sending.
 * Returns -1 when the endpoint is gone.
 */
static int drain(struct endpoint *e)
{
	unsigned char scratch[65536 + 16];
	for (int i = 0; i < 4096; i++) {
		ssize_t r;
		if (e->kind == K_STREAM) {
			r = read(e->fd, e->sbuf + e->sfill, STREAM_BUF - e->sfill);
			if (r > 0) {
				e->sfill += (size_t)r;
				stream_frames(e, NULL, 0);
			}
		} else {
			r = read(e->fd, scratch, sizeof scratch);
		}
		if (r == 0 && e->kind == K_STREAM)
			return -1;
		if (r < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : -1;
	}
	return 0;
}

static void rx_tap(struct job *j)
{
	unsigned char buf[65536 + 16];
	int fd = j->e->fd;
	size_t off = (size_t)j->e->hdr;
	int counting = 0;
	double c0 = 0;
	for (;;) {
		double t = now();
		if (!counting && t >= j->warm_until) {
			counting = 1;
			j->t0 = t;
			c0 = thread_cpu();
		}
		if (t >= j->end)
			break;
		ssize_t r = read(fd, buf, sizeof buf);
		if (r > (ssize_t)off) {
			count_frame(j, buf + off, (size_t)r - off, counting);
		} else if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
			double left = (counting ? j->end : j->warm_until) - t;
			wait_fd(fd, POLLIN, left > 0.05 ? 50 : (int)(left * 1000) + 1);
		} else if (r < 0) {
			if (!j->errors++)
				j->first_errno = errno;
			usleep(1000);
		}
	}
	j->t1 = now();
	j->cpu = counting ? thread_cpu() - c0 : 0;
}

static void rx_stream(struct job *j)
{
	struct endpoint *e = j->e;
	int counting = 0;
	double c0 = 0;
	for (;;) {
		double t = now();
		if (!counting && t >= j->warm_until) {
			counting = 1;
			j->t0 = t;
			c0 = thread_cpu();
		}
		if (t >= j->end)
			break;
		ssize_t r = read(e->fd, e->sbuf + e->sfill, STREAM_BUF - e->sfill);
		if (r > 0) {
			e->sfill += (size_t)r;
			stream_frames(e, j, counting);
		} else if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
			double left = (counting ? j->end : j->warm_until) - t;
			wait_fd(e->fd, POLLIN, left > 0.05 ? 50 : (int)(left * 1000) + 1);
		} else {
			if (!j->errors++)
				j->first_errno = r == 0 ? EPIPE : errno;
			break;
		}
	}
	j->t1 = now();
	j->cpu = counting ? thread_cpu() - c0 : 0;
}

static void *run_job_tx(void *p)
{
	struct job *j = p;
	if (j->e->kind == K_TAP)
		tx_tap(j);
	else
		tx_stream(j);
	return NULL;
}

static void *run_job_rx(void *p)
{
	struct job *j = p;
	if (j->e->kind == K_TAP)
		rx_tap(j);
	else
		rx_stream(j);
	return NULL;
}

/* Runs one job per queue, each on its own thread (the first on this one). */
static void run_jobs(struct job *jobs, void *(*fn)(void *))
{
	pthread_t th[MAX_QUEUES];
	for (int i = 1; i < n_eps; i++)
		if (pthread_create(&th[i], NULL, fn, &jobs[i]) != 0)
			die("pthread_create failed");
	fn(&jobs[0]);
	for (int i = 1; i < n_eps; i++)
		pthread_join(th[i], NULL);
}

/* The window all queues were running: the latest start to the latest end. */
static double window(const struct job *jobs)
{
	double t0 = 0, t1 = 0;
	for (int i = 0; i < n_eps; i++) {
		if (jobs[i].t0 > t0)
			t0 = jobs[i].t0;
		if (jobs[i].t1 > t1)
			t1 = jobs[i].t1;
	}
	return t1 > t0 ? t1 - t0 : 0;
}

static int do_tx(char *out, size_t outsz, size_t size, double seconds)
{
	struct job jobs[MAX_QUEUES];
	double t = now();
	for (int i = 0; i < n_eps; i++)
		jobs[i] = (struct job){ .e = &eps[i], .queue = i, .size = size, .end = t + seconds };
	run_jobs(jobs, run_job_tx);
	unsigned long long sent = 0, errors = 0;
	int first = 0;
	double cpu = 0;
	for (int i = 0; i < n_eps; i++) {
		cpu += jobs[i].cpu;
		sent += jobs[i].sent;
		errors += jobs[i].errors;
		if (!first)
			first = jobs[i].first_errno;
	}
	double w = window(jobs);
	return snprintf(out, outsz,
			"{\"op\":\"tx\",\"size\":%zu,\"queues\":%d,\"sent\":%llu,\"errors\":%llu,\"error\":\"%s\",\"seconds\":%.6f,\"cpu\":%.6f,\"pps\":%.0f}\n",
			size, n_eps, sent, errors, first ? strerror(first) : "", w, cpu, w > 0 ? sent / w : 0.0);
}

static int do_rx(char *out, size_t outsz, double warm, double seconds)
{
	struct job jobs[MAX_QUEUES];
	announce();
	double t = now();
	for (int i = 0; i < n_eps; i++)
		jobs[i] = (struct job){ .e = &eps[i], .queue = i, .warm_until = t + warm, .end = t + warm + seconds };
	run_jobs(jobs, run_job_rx);
	unsigned long long frames = 0, matched = 0, bytes = 0, other = 0, errors = 0;
	int first = 0;
	double cpu = 0;
	char per[MAX_QUEUES * 24] = "";
	size_t pl = 0;
	for (int i = 0; i < n_eps; i++) {
		frames += jobs[i].frames;
		cpu += jobs[i].cpu;
		matched += jobs[i].matched;
		bytes += jobs[i].bytes;
		other += jobs[i].other;
		errors += jobs[i].errors;
		if (!first)
			first = jobs[i].first_errno;
		pl += (size_t)snprintf(per + pl, sizeof per - pl, "%s%llu", i ? "," : "", jobs[i].matched);
	}
	double w = window(jobs);
	return snprintf(out, outsz,
			"{\"op\":\"rx\",\"queues\":%d,\"frames\":%llu,\"matched\":%llu,\"other\":%llu,\"bytes\":%llu,\"perQueue\":[%s],\"errors\":%llu,\"error\":\"%s\",\"seconds\":%.6f,\"cpu\":%.6f,\"pps\":%.0f}\n",
			n_eps, frames, matched, other, bytes, per, errors, first ? strerror(first) : "", w, cpu, w > 0 ? matched / w : 0.0);
}

/* ------------------------------------------------------------- node side */

static int pkt_tx(const char *ifname, size_t size, double seconds, char *out, size_t outsz)
{
	int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0); /* protocol 0: send only */
	if (fd < 0)
		die("AF_PACKET socket: %s", strerror(errno));
	struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_ifindex = (int)if_nametoindex(ifname) };
	if (!sll.sll_ifindex)
		die("no interface %s here", ifname);
	if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0)
		die("bind to %s: %s", ifname, strerror(errno));
	int one = 1;
	/* Straight to the driver, as a NIC's DMA would hand frames to the pod. */
	setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
	/*
	 * Frames from a NIC belong to no socket, but ours stay charged to this
	 * one until freed, and a macvtap's ring keeps them (tun orphans them).
	 * With the default send buffer a full macvtap ring would throttle this
	 * sender instead of dropping as it would for a NIC; a buffer far larger
	 * than any ring keeps the two comparable.
	 */
	int big = 64 << 20;
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big) < 0)
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
	unsigned char frame[MAX_FRAME];
	build_udp(frame, size, fl.mac, fl.peer_mac, fl.ip, fl.peer_ip, 40000, fl.port);
	enum { BATCH = 32 };
	struct iovec iov = { .iov_base = frame, .iov_len = size };
	struct mmsghdr msgs[BATCH];
	memset(msgs, 0, sizeof msgs);
	for (int i = 0; i < BATCH; i++) {
		msgs[i].msg_hdr.msg_iov = &iov;
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	unsigned long long sent = 0, errors = 0, waits = 0;
	int first = 0;
	struct timespec cs;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cs);
	double c0 = cs.tv_sec + cs.tv_nsec / 1e9;
	double t0 = now(), end = t0 + seconds, t = t0;
	while (t < end) {
		/*
		 * Never block: a macvtap keeps our skbs (and so our socket's send
		 * buffer) in its ring until the VM side reads them, so once the
		 * reader stops a blocking send would wait for ever.
		 */
		int n = sendmmsg(fd, msgs, BATCH, MSG_DONTWAIT);
		if (n > 0) {
			sent += (unsigned)n;
		} else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
			waits++;
			wait_fd(fd, POLLOUT, 1);
		} else if (n < 0 && errno == ENOBUFS) {
			if (!errors++)
				first = errno;
		} else {
			die("sendmmsg on %s: %s", ifname, strerror(errno));
		}
		t = now();
	}
	close(fd);
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cs);
	double cpu = cs.tv_sec + cs.tv_nsec / 1e9 - c0;
	return snprintf(out, outsz, "{\"op\":\"pkt-tx\",\"size\":%zu,\"sent\":%llu,\"errors\":%llu,\"error\":\"%s\",\"waits\":%llu,\"seconds\":%.6f,\"cpu\":%.6f,\"pps\":%.0f}\n",
			size, sent, errors, first ? strerror(first) : "", waits, t - t0, cpu, sent / (t - t0));
}

/* ------------------------------------------------------------------ agent */

static int ctl_connect(const char *path)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof sa.sun_path)
		die("control socket path too long: %s", path);
	strcpy(sa.sun_path, path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
		die("connect %s: %s", path, strerror(errno));
	return fd;
}

static int agent(const char *ctl)
{
	int c = ctl_connect(ctl);
	char out[1024];
	int hdr = n_eps ? eps[0].hdr : 0;
	int n = snprintf(out, sizeof out, "{\"op\":\"hello\",\"pid\":%d,\"queues\":%d,\"kind\":\"%s\",\"vnetHdr\":%d}\n", getpid(), n_eps,
			 eps[0].kind == K_TAP ? "tap" : "stream", hdr);
	if (write_all(c, (unsigned char *)out, (size_t)n) < 0)
		return 1;
	char line[256];
	size_t fill = 0;
	for (;;) {
		char *nl = memchr(line, '\n', fill);
		if (!nl) {
			if (fill == sizeof line)
				die("control line too long");
			/* Idle: wait for a command, reading the VM's NIC meanwhile. */
			struct pollfd pf[MAX_QUEUES + 1];
			pf[0] = (struct pollfd){ .fd = c, .events = POLLIN };
			for (int i = 0; i < n_eps; i++)
				pf[i + 1] = (struct pollfd){ .fd = eps[i].fd, .events = POLLIN };
			if (poll(pf, (nfds_t)n_eps + 1, -1) < 0 && errno != EINTR)
				die("poll: %s", strerror(errno));
			for (int i = 0; i < n_eps; i++)
				if (pf[i + 1].revents & (POLLIN | POLLHUP | POLLERR))
					if (drain(&eps[i]) < 0)
						die("the VM's NIC went away (fd %d)", eps[i].fd);
			if (!(pf[0].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			ssize_t r = read(c, line + fill, sizeof line - fill);
			if (r <= 0)
				return 0; /* the benchmark went away: done */
			fill += (size_t)r;
			continue;
		}
		*nl = '\0';
		char cmd[16] = "";
		double a = 0, b = 0;
		int k = sscanf(line, "%15s %lf %lf", cmd, &a, &b);
		if (k >= 1 && !strcmp(cmd, "tx") && k == 3 && a >= 60 && a <= MAX_FRAME && b > 0 && b <= 3600)
			n = do_tx(out, sizeof out, (size_t)a, b);
		else if (k >= 1 && !strcmp(cmd, "rx") && k == 3 && a >= 0 && b > 0 && a + b <= 3600)
			n = do_rx(out, sizeof out, a, b);
		else if (k == 1 && !strcmp(cmd, "announce")) {
			announce();
			n = snprintf(out, sizeof out, "{\"op\":\"announce\"}\n");
		} else if (k == 1 && !strcmp(cmd, "quit"))
			return 0;
		else
			n = snprintf(out, sizeof out, "{\"op\":\"error\",\"error\":\"bad command\"}\n");
		if (write_all(c, (unsigned char *)out, (size_t)n) < 0)
			return 1;
		size_t used = (size_t)(nl - line) + 1;
		memmove(line, line + used, fill - used);
		fill -= used;
	}
}

/* ------------------------------------------------------------------- main */

static void usage(void)
{
	fputs("usage: dpgen tx|rx|agent (--fds 3:4 | --dev /dev/tapN | --passt SOCKET) --mac M --ip A --peer-mac M --peer-ip A\n"
	      "             [--port 7777] [--rx-port 7778] [--size 64] [--seconds 5] [--warmup 1] [--ctl SOCKET]\n"
	      "       dpgen pkt-tx --ifname IF --mac M --ip A --peer-mac M --peer-ip A [--port 7778] [--size 64] [--seconds 5]\n",
	      stderr);
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	const char *mode = argv[1], *ctl = NULL, *ifname = NULL;
	size_t size = 64;
	double seconds = 5, warm = 1;
	int have_mac = 0, have_peer_mac = 0, have_ip = 0, have_peer_ip = 0, port_given = 0;
	for (int i = 2; i < argc; i++) {
		const char *o = argv[i];
		if (i + 1 >= argc)
			die("%s needs a value", o);
		const char *v = argv[++i];
		if (!strcmp(o, "--fds")) {
			char *copy = strdup(v), *save = NULL;
			for (char *t = strtok_r(copy, ":,", &save); t; t = strtok_r(NULL, ":,", &save))
				add_tap_fd((int)parse_long(t, 0, 65535, "--fds"));
			free(copy);
		} else if (!strcmp(o, "--dev")) {
			int fd = open(v, O_RDWR | O_CLOEXEC);
			if (fd < 0)
				die("open %s: %s", v, strerror(errno));
			add_tap_fd(fd);
		} else if (!strcmp(o, "--passt")) {
			add_passt(v);
		} else if (!strcmp(o, "--mac")) {
			parse_mac(v, fl.mac);
			have_mac = 1;
		} else if (!strcmp(o, "--peer-mac")) {
			parse_mac(v, fl.peer_mac);
			have_peer_mac = 1;
		} else if (!strcmp(o, "--ip")) {
			parse_ip(v, &fl.ip);
			have_ip = 1;
		} else if (!strcmp(o, "--peer-ip")) {
			parse_ip(v, &fl.peer_ip);
			have_peer_ip = 1;
		} else if (!strcmp(o, "--port")) {
			fl.port = (uint16_t)parse_long(v, 1, 65535, "--port");
			port_given = 1;
		} else if (!strcmp(o, "--rx-port")) {
			fl.rx_port = (uint16_t)parse_long(v, 1, 65535, "--rx-port");
		} else if (!strcmp(o, "--size")) {
			size = (size_t)parse_long(v, 60, MAX_FRAME, "--size");
		} else if (!strcmp(o, "--seconds")) {
			seconds = parse_seconds(v, "--seconds");
		} else if (!strcmp(o, "--warmup")) {
			warm = parse_seconds(v, "--warmup");
		} else if (!strcmp(o, "--ctl")) {
			ctl = v;
		} else if (!strcmp(o, "--ifname")) {
			ifname = v;
		} else {
			die("unknown option %s", o);
		}
	}
	if (!have_mac || !have_peer_mac || !have_ip || !have_peer_ip)
		die("--mac, --ip, --peer-mac and --peer-ip are needed");
	signal(SIGPIPE, SIG_IGN);
	char out[1024];
	int n;
	if (!strcmp(mode, "pkt-tx")) {
		if (!ifname)
			die("pkt-tx needs --ifname");
		if (!port_given)
			fl.port = 7778;
		n = pkt_tx(ifname, size, seconds, out, sizeof out);
	} else {
		if (n_eps == 0)
			die("give the VM's NIC: --fds, --dev or --passt");
		if (!strcmp(mode, "tx"))
			n = do_tx(out, sizeof out, size, seconds);
		else if (!strcmp(mode, "rx"))
			n = do_rx(out, sizeof out, warm, seconds);
		else if (!strcmp(mode, "agent")) {
			if (!ctl)
				die("agent needs --ctl SOCKET");
			return agent(ctl);
		} else
			usage();
	}
	fputs(out, stdout);
	return n > 0 ? 0 : 1;
}
