/* openloop.c: HTTP/1.1 requests at a fixed rate (open loop), for `make bench`.
 *
 * What k6's constant-arrival-rate executor does, at a fraction of its CPU. Request i is
 * due at start + i / rate whether or not earlier ones have been answered. It goes out on
 * an idle keep-alive connection; when none is idle a new connection is opened (up to
 * MAX_CONNS) and the request goes out as soon as it is connected (none is opened ahead:
 * gunicorn's gthread worker gives a new connection a thread until its first request
 * arrives, so idle new connections would hold its threads); past that bound it is
 * not sent and is counted as `dropped` (k6's dropped_iterations). So a slow server shows
 * as queueing in the latencies, not as a lower rate. A latency runs from the request's
 * first byte sent to the response's last byte received (k6's http_req_duration); how late
 * each request went out against its schedule is reported apart (`send_delay_*`), so a
 * generator that falls behind shows.
 *
 * Why not k6: it takes about 180 µs of CPU a request (this about 10), on the same two
 * cores as the service it measures, so at half the hit's maximum rate k6 alone kept a
 * fifth of the machine busy (docs/benchmarks.md).
 *
 * Usage: openloop HOST PORT RATE SECONDS TARGET [SITE VISITORS PATHS IP_PREFIX]
 *   TARGET "hit": POST /api/v1/hit as bench/hit.lua builds them (rotating visitors, paths
 *   and referrers; text/plain JSON, as navigator.sendBeacon sends it); else a GET path.
 * Prints one JSON object on stdout; exits 2 on a usage or socket error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 1000     /* k6's maxVUs as bench/fixed_rate.py ran it */
#define BUF 8192           /* a response's bytes; ours are a few hundred */
#define DRAIN_SECONDS 10.0 /* how long answers are awaited after the last request is due */

enum state { FREE, CONNECTING, IDLE, BUSY };

struct conn {
    int fd;
    enum state state;
    int pending;       /* a request waits for the connection to be made */
    double intended;   /* when that request was due */
    char req[1024];
    size_t req_len, sent;
    double t_send;     /* its first byte written */
    char buf[BUF];
    size_t have;
};

static const char *AGENTS[] = {
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
    "like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-A546E) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.6778.81 Mobile Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.7; rv:133.0) Gecko/20100101 Firefox/133.0",
};
static const char *REFERRERS[] = {"", "", "", "https://www.google.com/",
                                  "https://www.facebook.com/"};

static const char *host, *target, *site = "bench";
static int port, visitors = 10000, paths = 500, prefix = 198;
static double rate, seconds;

static struct conn conns[MAX_CONNS];
static int idle[MAX_CONNS], nidle, open_count, opened_ever, busy_count, epfd;
static struct sockaddr_in addr;
static double *latency, *send_delay;
static long answered, errors, dropped, sent_count;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void build_request(struct conn *c, long n) {
    int len;
    if (strcmp(target, "hit") != 0) {
        len = snprintf(c->req, sizeof c->req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n",
                       target, host, port);
    } else {
        long v = n % visitors;
        const char *ref = REFERRERS[n % 5];
        char body[256];
        int blen = snprintf(body, sizeof body,
                            "{\"site\":\"%s\",\"url\":\"https://bench.example/p/%ld\"%s%s%s}",
                            site, (n * 7919) % paths, *ref ? ",\"referrer\":\"" : "", ref,
                            *ref ? "\"" : "");
        len = snprintf(c->req, sizeof c->req,
                       "POST /api/v1/hit HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: %s\r\n"
                       "X-Forwarded-For: %d.%ld.%ld.%ld\r\nContent-Type: text/plain\r\n"
                       "Content-Length: %d\r\n\r\n%s",
                       host, port, AGENTS[v % 4], prefix, (v >> 16) & 255, (v >> 8) & 255,
                       v & 255, blen, body);
    }
    if (len < 0 || (size_t)len >= sizeof c->req) {
        fprintf(stderr, "openloop: request longer than %zu bytes\n", sizeof c->req);
        exit(2);
    }
    c->req_len = (size_t)len;
}

static void close_conn(struct conn *c) {
    if (c->state == BUSY) busy_count--;
    if (c->state == IDLE) {
        for (int i = 0; i < nidle; i++)
            if (&conns[idle[i]] == c) idle[i] = idle[--nidle];
    }
    close(c->fd);
    c->state = FREE;
    open_count--;
}

/* A request that got no answer: the connection is dropped with it. */
static void fail(struct conn *c) {
    if (c->state == BUSY || c->pending) errors++;
    c->pending = 0;
    close_conn(c);
}

/* Edge-triggered, so a connection's events cost no epoll_ctl a request; EPOLLOUT only
 * while it connects or a request did not fit the socket's buffer. */
static void watch(struct conn *c, int op, unsigned events) {
    struct epoll_event ev = {.events = events | EPOLLET, .data.ptr = c};
    if (epoll_ctl(epfd, op, c->fd, &ev) != 0) die("epoll_ctl");
}

static struct conn *open_conn(void) {
    struct conn *c = NULL;
    for (int i = 0; i < MAX_CONNS && !c; i++)
        if (conns[i].state == FREE) c = &conns[i];
    if (!c) return NULL;
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) != 0 && errno != EINPROGRESS)
        die("connect");
    c->state = CONNECTING;
    open_count++, opened_ever++;
    watch(c, EPOLL_CTL_ADD, EPOLLOUT); /* writable: connected */
    return c;
}

static void write_out(struct conn *c) {
    while (c->sent < c->req_len) {
        ssize_t w = write(c->fd, c->req + c->sent, c->req_len - c->sent);
        if (w < 0) {
            if (errno != EAGAIN) fail(c);
            else watch(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT); /* resumed when writable */
            return;
        }
        c->sent += (size_t)w;
    }
}

static void send_request(struct conn *c, double intended) {
    c->t_send = now();
    send_delay[sent_count++] = c->t_send - intended;
    c->sent = c->have = 0;
    c->state = BUSY;
    busy_count++;
    write_out(c);
}

static void make_idle(struct conn *c) {
    c->state = IDLE;
    idle[nidle++] = (int)(c - conns);
}

/* Bytes of the whole response once it has all arrived, else 0; -1 if it is not one we
 * can read (every answer of the service carries a Content-Length). */
static long response_length(struct conn *c, int *status, int *closes) {
    char *end = memmem(c->buf, c->have, "\r\n\r\n", 4);
    if (!end) return c->have == BUF ? -1 : 0;
    if (c->have < 12 || strncmp(c->buf, "HTTP/1.", 7) != 0) return -1;
    *status = atoi(c->buf + 9);
    long body = -1;
    *closes = 0;
    for (char *line = memchr(c->buf, '\n', (size_t)(end - c->buf)); line && line < end;
         line = memchr(line + 1, '\n', (size_t)(end - line))) {
        if (strncasecmp(line + 1, "content-length:", 15) == 0) body = atol(line + 16);
        if (strncasecmp(line + 1, "connection: close", 17) == 0) *closes = 1;
    }
    if (body < 0) return -1;
    long total = (long)(end + 4 - c->buf) + body;
    return (long)c->have >= total ? total : 0;
}

static void read_in(struct conn *c) {
    for (;;) {
        ssize_t r = read(c->fd, c->buf + c->have, BUF - c->have);
        if (r == 0 || (r < 0 && errno != EAGAIN)) {
            fail(c); /* an idle connection the server closed is no error */
            return;
        }
        if (r < 0) return;
        if (c->state != BUSY) continue; /* nothing is owed: ignore */
        c->have += (size_t)r;
        int status = 0, closes = 0;
        long total = response_length(c, &status, &closes);
        if (total < 0) {
            fail(c);
            return;
        }
        if (total == 0) continue;
        latency[answered++] = now() - c->t_send;
        if (status >= 400) errors++; /* as k6's http_req_failed */
        busy_count--;
        if (closes) {
            c->state = IDLE;
            close_conn(c);
        } else {
            /* The whole answer is read, and HTTP/1.1 sends nothing unasked: whatever comes
             * next (the server closing) is a new edge, so no read to EAGAIN here. */
            make_idle(c);
        }
        return;
    }
}

static void on_event(struct conn *c, unsigned events) {
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) {
            fail(c);
            return;
        }
        if (!(events & EPOLLOUT)) return;
        watch(c, EPOLL_CTL_MOD, EPOLLIN);
        if (c->pending) {
            c->pending = 0;
            send_request(c, c->intended);
        } else {
            make_idle(c);
        }
        return;
    }
    if (c->state == BUSY && (events & EPOLLOUT)) write_out(c);
    if (c->state != FREE && (events & (EPOLLIN | EPOLLHUP | EPOLLERR))) read_in(c);
}

/* Waits for events until `deadline` (monotonic seconds) at the latest. */
static void poll_until(double deadline) {
    struct epoll_event events[256];
    double wait = deadline - now();
    if (wait < 0) wait = 0;
    struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
    int n = epoll_pwait2(epfd, events, 256, &ts, NULL);
    if (n < 0 && errno != EINTR) die("epoll_pwait2");
    for (int i = 0; i < n; i++) on_event(events[i].data.ptr, events[i].events);
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* k6's percentiles: linear between the two closest ranks. In milliseconds. */
static double percentile(double *sorted, long n, double p) {
    if (n == 0) return 0;
    double pos = p / 100 * (double)(n - 1);
    long lo = (long)pos;
    double frac = pos - (double)lo;
    double hi = lo + 1 < n ? sorted[lo + 1] : sorted[lo];
    return (sorted[lo] + (hi - sorted[lo]) * frac) * 1000;
}

int main(int argc, char **argv) {
    if (argc != 6 && argc != 10) {
        fprintf(stderr, "usage: %s HOST PORT RATE SECONDS TARGET [SITE VISITORS PATHS IP_PREFIX]\n",
                argv[0]);
        return 2;
    }
    host = argv[1], port = atoi(argv[2]), rate = atof(argv[3]), seconds = atof(argv[4]);
    target = argv[5];
    if (argc == 10)
        site = argv[6], visitors = atoi(argv[7]), paths = atoi(argv[8]), prefix = atoi(argv[9]);
    long total = (long)(rate * seconds + 0.5);
    if (rate <= 0 || total <= 0 || visitors <= 0 || paths <= 0 ||
        inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "openloop: bad arguments (HOST must be an IPv4 address)\n");
        return 2;
    }
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    latency = malloc(sizeof(double) * (size_t)total);
    send_delay = malloc(sizeof(double) * (size_t)total);
    epfd = epoll_create1(0);
    if (!latency || !send_delay || epfd < 0) die("setup");

    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    double start = now();
    long next = 0;
    while (next < total || busy_count > 0) {
        double t = now();
        if (next == total && t > start + seconds + DRAIN_SECONDS) break;
        for (; next < total && start + (double)next / rate <= t; next++) {
            double intended = start + (double)next / rate;
            struct conn *c = nidle > 0 ? &conns[idle[--nidle]] : open_conn();
            if (!c) {
                dropped++;
                continue;
            }
            build_request(c, next);
            if (c->state == IDLE) {
                send_request(c, intended);
            } else {
                c->pending = 1, c->intended = intended;
            }
        }
        poll_until(next < total ? start + (double)next / rate : t + 0.1);
    }
    double elapsed = now() - start;
    getrusage(RUSAGE_SELF, &after);
    long unanswered = busy_count;
    for (int i = 0; i < MAX_CONNS; i++)
        if (conns[i].pending) unanswered++;
    errors += unanswered;

    qsort(latency, (size_t)answered, sizeof(double), by_value);
    qsort(send_delay, (size_t)sent_count, sizeof(double), by_value);
    double sum = 0;
    for (long i = 0; i < answered; i++) sum += latency[i];
    double cpu = (double)(after.ru_utime.tv_sec - before.ru_utime.tv_sec) +
                 (double)(after.ru_stime.tv_sec - before.ru_stime.tv_sec) +
                 (after.ru_utime.tv_usec - before.ru_utime.tv_usec) / 1e6 +
                 (after.ru_stime.tv_usec - before.ru_stime.tv_usec) / 1e6;
    printf("{\"target_rps\": %.3f, \"achieved_rps\": %.3f, \"requests\": %ld, \"errors\": %ld, "
           "\"dropped\": %ld, \"unanswered\": %ld, \"connections\": %d, "
           "\"p50_ms\": %.4f, \"p90_ms\": %.4f, \"p99_ms\": %.4f, \"max_ms\": %.4f, "
           "\"mean_ms\": %.4f, \"send_delay_p99_ms\": %.4f, \"send_delay_max_ms\": %.4f, "
           "\"generator_cpu_us_per_request\": %.2f}\n",
           rate, (double)answered / (elapsed < seconds ? seconds : elapsed), answered, errors,
           dropped, unanswered, opened_ever, percentile(latency, answered, 50),
           percentile(latency, answered, 90), percentile(latency, answered, 99),
           percentile(latency, answered, 100), answered ? sum / (double)answered * 1000 : 0,
           percentile(send_delay, sent_count, 99), percentile(send_delay, sent_count, 100),
           answered ? cpu * 1e6 / (double)answered : 0);
    return 0;
}
