/* How four ways of writing 512 MiB and making it durable compare, in wall
 * time and machine CPU (from /proc/stat, so the kernel's writeback threads
 * count too). The registry's upload path is mode 4.
 *   0: write everything, then fsync
 *   1: fdatasync every 16 MiB on the writing thread
 *   2: sync_file_range(SYNC_FILE_RANGE_WRITE) every 16 MiB (start
 *      writeback, do not wait), fsync at the end
 *   4: fdatasync every 16 MiB on a second thread (bronze-registry's
 *      flusher, storage.rs write_batches)
 * Build and run (as root, for drop_caches):
 *   gcc -O2 -pthread xtask/scripts/writeback-modes.c -o /tmp/writeback-modes
 *   for m in 0 1 2 4; do sync; echo 3 > /proc/sys/vm/drop_caches;
 *     /tmp/writeback-modes $m /path/on/the/disk/file; done
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* Busy clock ticks of the whole machine (user, nice, system, irq, softirq). */
static long long busy(void) {
    long long u, n, s, i, w, q, sq;
    FILE *f = fopen("/proc/stat", "r");
    if (!f || fscanf(f, "cpu %lld %lld %lld %lld %lld %lld %lld", &u, &n, &s, &i, &w, &q, &sq) != 7)
        exit(1);
    fclose(f);
    return u + n + s + q + sq;
}

static int fd;
static volatile size_t written;
static volatile int done;

static void *flusher(void *arg) {
    (void)arg;
    size_t flushed = 0;
    while (!done) {
        if (written - flushed >= (16 << 20)) {
            size_t w = written;
            fdatasync(fd);
            flushed = w;
        } else {
            usleep(200);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODE FILE\n", argv[0]);
        return 2;
    }
    int mode = atoi(argv[1]);
    size_t total = 512 << 20, chunk = 256 << 10, every = 16 << 20;
    char *buf = aligned_alloc(4096, chunk);
    for (size_t i = 0; i < chunk; i++) buf[i] = rand();
    fd = open(argv[2], O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (fd < 0) return 1;
    pthread_t th;
    if (mode == 4) pthread_create(&th, NULL, flusher, NULL);
    long long c0 = busy();
    double t0 = now();
    size_t unflushed = 0, offset = 0;
    for (size_t w = 0; w < total; w += chunk) {
        buf[0] = (char)w;
        if (write(fd, buf, chunk) != (ssize_t)chunk) return 1;
        unflushed += chunk;
        written += chunk;
        if (unflushed >= every) {
            if (mode == 1) fdatasync(fd);
            if (mode == 2) sync_file_range(fd, offset, unflushed, SYNC_FILE_RANGE_WRITE);
            offset += unflushed;
            unflushed = 0;
        }
    }
    done = 1;
    if (mode == 4) pthread_join(th, NULL);
    double t1 = now();
    fsync(fd);
    double t2 = now();
    long long c1 = busy();
    printf("mode %d: writes %.3f s, final fsync %.3f s, total %.3f s, machine CPU %.2f core-s\n",
           mode, t1 - t0, t2 - t1, t2 - t0, (c1 - c0) / (double)sysconf(_SC_CLK_TCK));
    unlink(argv[2]);
    return 0;
}
