/* Zeroed allocations for the state tables.
 *
 * Tables of a few MB and more are looked up at random, so with 4 KiB pages nearly every
 * lookup also misses the TLB. On Linux they are mapped anonymously (zero pages on demand)
 * and offered to transparent huge pages, which most distributions enable "on madvise".
 * Elsewhere, or for small tables, this is calloc.
 */
#ifndef ONNX_STATE_MEM_H
#define ONNX_STATE_MEM_H

#include <stddef.h>
#include <stdlib.h>

#define OS_HUGE ((size_t)2 << 20)

#if defined(__linux__)
#include <sys/mman.h>

static void *os_zalloc(size_t bytes) {
    if (bytes < OS_HUGE)
        return calloc(1, bytes);
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE); /* advice only: failure leaves normal pages */
#endif
    return p;
}

static void os_zfree(void *p, size_t bytes) {
    if (p == NULL)
        return;
    if (bytes < OS_HUGE)
        free(p);
    else
        munmap(p, bytes);
}
#else
static void *os_zalloc(size_t bytes) { return calloc(1, bytes); }
static void os_zfree(void *p, size_t bytes) { (void)bytes; free(p); }
#endif

#endif
