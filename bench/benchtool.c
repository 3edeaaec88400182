// Small load tools for bench/run.ts, compiled by it with the system cc. Loopback only.
//
//   benchtool echo PORT                       echo server, one thread, an epoll loop
//   benchtool pingpong PORT COUNT SIZE        one connection, COUNT round trips of SIZE bytes;
//                                             prints p50 p99 p999 in microseconds
//   benchtool floor CPU_A CPU_B COUNT SIZE    the same ping-pong between two processes of its
//                                             own over a loopback TCP pair, no server, the
//                                             client on CPU_A and the echo on CPU_B (-1: where
//                                             the scheduler puts it): the machine's floor, which
//                                             `pingpong` against `echo` should match
//   benchtool churn PORT THREADS SECONDS SIZE each thread: connect, send SIZE, read SIZE back,
//                                             close; prints connections per second and failures
//   benchtool churnn PORT THREADS COUNT SIZE  the same for COUNT connections in all (each thread
//                                             its share), however long they take; prints
//                                             connections per second and failures
//   ... SIZE PREFIX [echoed]                  either churn, each connection's first write
//                                             carrying the bytes of file PREFIX before its SIZE
//                                             (a PROXY header, a TLS ClientHello), in the same
//                                             segment; `echoed`: the prefix comes back too (the
//                                             proxy relays it to the echo server)
//   benchtool spliceproxy PORT BACKEND        reference floor: a C proxy, two threads per
//                                             connection, each a blocking splice loop through a
//                                             1 MiB pipe (Go's io.Copy splices the same way, but
//                                             through the kernel's default 64 KiB pipe), no
//                                             event loop
//   benchtool idle PORT COUNT [noecho]        opens COUNT connections (each proved by a 1-byte
//                                             echo unless noecho), prints "ready", holds them
//                                             until stdin closes; each "c" on stdin re-proves
//                                             every tenth and prints "checked SAMPLED ANSWERED"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <sys/epoll.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int dial(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static int read_full(int fd, char *buf, size_t len) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = read(fd, buf + got, len - got);
    if (n <= 0) return -1;
    got += n;
  }
  return 0;
}

static int write_full(int fd, const char *buf, size_t len) {
  size_t put = 0;
  while (put < len) {
    ssize_t n = write(fd, buf + put, len - put);
    if (n <= 0) return -1;
    put += n;
  }
  return 0;
}

static void *echo_conn(void *arg) {
  int fd = (int)(long)arg;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) break;
    if (write_full(fd, buf, n) != 0) break;
  }
  close(fd);
  return NULL;
}

/** Listens on 127.0.0.1:port and says "ready" on stdout; -1 on failure. */
static int listen_ready(int port) {
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(ls, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(ls, 4096) != 0) {
    perror("bind/listen");
    return -1;
  }
  printf("ready\n");
  fflush(stdout);
  return ls;
}

// One thread and an epoll loop: a thread per connection (the first version) spent more on
// thread creation than the proxies under test spend per connection, and capped direct churn
// at about 14k connections/s. Connections stay blocking: they are read only when epoll says
// readable, and the 1 KiB or 64-byte messages of the rows that use this server fit the send
// buffer, so the echo's write does not wait.
static int echo_server(int port) {
  int ls = listen_ready(port);
  if (ls < 0) return 1;
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
  epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  struct epoll_event events[256];
  char buf[65536];
  int one = 1;
  for (;;) {
    int count = epoll_wait(ep, events, 256, -1);
    for (int i = 0; i < count; i++) {
      int fd = events[i].data.fd;
      if (fd == ls) {
        int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) continue;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct epoll_event add = {.events = EPOLLIN, .data.fd = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c, &add);
        continue;
      }
      ssize_t n = read(fd, buf, sizeof buf);
      if (n > 0 && write_full(fd, buf, n) == 0) continue;
      close(fd); // end of input, or a failure: closing also takes it out of epoll
    }
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/**
 * One write and one read per round trip, two clock reads around them, nothing else in the loop:
 * the client must cost less than what it measures. Prints p50 p99 p999 in microseconds.
 */
static int pingpong_on(int fd, int count, int size) {
  char *buf = calloc(1, size);
  double *lat = calloc(count, sizeof(double));
  for (int i = 0; i < count + 100; i++) {
    double t0 = now_s();
    if (write_full(fd, buf, size) != 0 || read_full(fd, buf, size) != 0) {
      fprintf(stderr, "pingpong: connection lost at %d\n", i);
      return 1;
    }
    if (i >= 100) lat[i - 100] = (now_s() - t0) * 1e6;  // first 100 warm up
  }
  qsort(lat, count, sizeof(double), cmp_double);
  printf("%.2f %.2f %.2f\n", lat[count / 2], lat[(int)(count * 0.99)], lat[(int)(count * 0.999)]);
  free(lat);
  free(buf);
  return 0;
}

static int pingpong(int port, int count, int size) {
  int fd = dial(port);
  if (fd < 0) {
    perror("pingpong: connect");
    return 1;
  }
  int status = pingpong_on(fd, count, size);
  close(fd);
  return status;
}

static void pin_to(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) perror("floor: sched_setaffinity");
}

static int floor_pingpong(int cpu_a, int cpu_b, int count, int size) {
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in addr = {.sin_family = AF_INET};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (bind(ls, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(ls, 1) != 0 ||
      getsockname(ls, (struct sockaddr *)&addr, &len) != 0) {
    perror("floor: listen");
    return 1;
  }
  int fd = dial(ntohs(addr.sin_port));
  int peer = accept(ls, NULL, NULL);
  if (fd < 0 || peer < 0) {
    perror("floor: connect");
    return 1;
  }
  close(ls);
  pid_t child = fork();
  if (child == 0) {
    close(fd);
    pin_to(cpu_b);
    echo_conn((void *)(long)peer);
    _exit(0);
  }
  close(peer);
  pin_to(cpu_a);
  int status = pingpong_on(fd, count, size);
  close(fd);
  waitpid(child, NULL, 0);
  return status;
}

/** The first bytes of each churn connection, and whether they come back (see the usage). */
static char *prefix;
static size_t prefix_len;
static int prefix_echoed;

struct churn_arg {
  int port, size;
  double until;  // churn: stop at this time
  long count;    // churnn: stop after this many attempts (0: use `until`)
  long done, failed;
};

static void *churn_thread(void *p) {
  struct churn_arg *a = p;
  size_t out = prefix_len + a->size;
  size_t back = (prefix_echoed ? prefix_len : 0) + a->size;
  char *buf = calloc(1, out > back ? out : back);
  char *request = calloc(1, out);
  if (prefix_len > 0) memcpy(request, prefix, prefix_len);
  while (a->count ? a->done + a->failed < a->count : now_s() < a->until) {
    int fd = dial(a->port);
    if (fd < 0) {
      a->failed++;
      continue;
    }
    if (write_full(fd, request, out) == 0 && read_full(fd, buf, back) == 0) a->done++;
    else a->failed++;
    close(fd);
  }
  free(buf);
  free(request);
  return NULL;
}

/** Reads file `path` as the churn prefix; `echoed`: it comes back with the echo. */
static int load_prefix(const char *path, int echoed) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    perror("churn: PREFIX");
    return -1;
  }
  prefix = malloc(65536);
  prefix_len = fread(prefix, 1, 65536, f);
  fclose(f);
  prefix_echoed = echoed;
  return 0;
}

/** Runs for `seconds`, or for `count` connections in all when count > 0. */
static int churn(int port, int threads, double seconds, long count, int size) {
  pthread_t t[256];
  struct churn_arg args[256];
  if (threads > 256) threads = 256;
  if (threads < 1) threads = 1;
  if (count > 0 && threads > count) threads = (int)count;
  double start = now_s();
  for (int i = 0; i < threads; i++) {
    args[i] = (struct churn_arg){.port = port, .size = size, .until = start + seconds};
    if (count > 0) args[i].count = count / threads + (i < count % threads);
    pthread_create(&t[i], NULL, churn_thread, &args[i]);
  }
  long done = 0, failed = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(t[i], NULL);
    done += args[i].done;
    failed += args[i].failed;
  }
  printf("%.1f %ld\n", done / (now_s() - start), failed);
  return 0;
}

static int idle(int port, int count, int echo) {
  int *fds = calloc(count, sizeof(int));
  char byte = 'x';
  for (int i = 0; i < count; i++) {
    fds[i] = dial(port);
    if (fds[i] < 0) {
      perror("idle: connect");
      return 1;
    }
    // One round trip proves the connection is relayed end to end.
    if (echo && (write_full(fds[i], &byte, 1) != 0 || read_full(fds[i], &byte, 1) != 0)) {
      fprintf(stderr, "idle: no echo on connection %d\n", i);
      return 1;
    }
  }
  printf("ready\n");
  fflush(stdout);
  // Each "c" on stdin re-proves every tenth connection with another 1-byte echo (all of them
  // stay open meanwhile) and prints how many of those answered.
  char c;
  while (read(0, &c, 1) > 0) {
    if (c != 'c' || !echo) continue;
    int sampled = 0, answered = 0;
    for (int i = 0; i < count; i += 10) {
      sampled++;
      if (write_full(fds[i], &byte, 1) == 0 && read_full(fds[i], &byte, 1) == 0) answered++;
    }
    printf("checked %d %d\n", sampled, answered);
    fflush(stdout);
  }
  for (int i = 0; i < count; i++) close(fds[i]);
  return 0;
}

struct splice_arg {
  int from, to;
};

static void *splice_half(void *p) {
  struct splice_arg *a = p;
  int pipefd[2];
  if (pipe(pipefd) != 0) return NULL;
  fcntl(pipefd[0], F_SETPIPE_SZ, 1 << 20);
  for (;;) {
    ssize_t n = splice(a->from, NULL, pipefd[1], NULL, 1 << 20, SPLICE_F_MOVE);
    if (n <= 0) break;
    while (n > 0) {
      ssize_t m = splice(pipefd[0], NULL, a->to, NULL, n, SPLICE_F_MOVE);
      if (m <= 0) goto out;
      n -= m;
    }
  }
out:
  shutdown(a->to, SHUT_WR);
  close(pipefd[0]);
  close(pipefd[1]);
  return NULL;
}

static void *splice_conn(void *p) {
  int *fds = p;
  struct splice_arg up = {fds[0], fds[1]}, down = {fds[1], fds[0]};
  pthread_t t;
  pthread_create(&t, NULL, splice_half, &up);
  splice_half(&down);
  pthread_join(t, NULL);
  close(fds[0]);
  close(fds[1]);
  free(fds);
  return NULL;
}

static int splice_proxy(int port, int backend) {
  int ls = listen_ready(port);
  if (ls < 0) return 1;
  for (;;) {
    int fd = accept(ls, NULL, NULL);
    if (fd < 0) continue;
    int up = dial(backend);
    if (up < 0) {
      close(fd);
      continue;
    }
    int *fds = malloc(2 * sizeof(int));
    fds[0] = fd;
    fds[1] = up;
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &attr, splice_conn, fds) != 0) {
      close(fd);
      close(up);
      free(fds);
    }
    pthread_attr_destroy(&attr);
  }
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);  // a peer gone mid-write is an error return, not the end of us
  if (argc >= 4 && strcmp(argv[1], "spliceproxy") == 0)
    return splice_proxy(atoi(argv[2]), atoi(argv[3]));
  if (argc >= 3 && strcmp(argv[1], "echo") == 0) return echo_server(atoi(argv[2]));
  if (argc >= 5 && strcmp(argv[1], "pingpong") == 0)
    return pingpong(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
  if (argc >= 6 && strcmp(argv[1], "floor") == 0)
    return floor_pingpong(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
  if (argc >= 7 && strncmp(argv[1], "churn", 5) == 0 &&
      load_prefix(argv[6], argc >= 8 && strcmp(argv[7], "echoed") == 0) != 0)
    return 2;
  if (argc >= 6 && strcmp(argv[1], "churn") == 0)
    return churn(atoi(argv[2]), atoi(argv[3]), atof(argv[4]), 0, atoi(argv[5]));
  if (argc >= 6 && strcmp(argv[1], "churnn") == 0) {
    long count = atol(argv[4]);
    if (count < 1) {
      fprintf(stderr, "churnn: COUNT must be at least 1\n");
      return 2;
    }
    return churn(atoi(argv[2]), atoi(argv[3]), 0, count, atoi(argv[5]));
  }
  if (argc >= 4 && strcmp(argv[1], "idle") == 0)
    return idle(atoi(argv[2]), atoi(argv[3]), !(argc >= 5 && strcmp(argv[4], "noecho") == 0));
  fprintf(stderr, "usage: see the comment at the top of benchtool.c\n");
  return 2;
}
