# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""nogil kernel: the exact minimum Hamming distance from packed states to a reference set.

The reference rows are sorted by popcount with ``offsets[p]`` the first row of popcount p.
Since |popcount(a) - popcount(b)| <= H(a, b), a query of popcount p scans the buckets
p, p - 1, p + 1, p - 2, ... and stops once the bucket distance reaches the best distance
found; inside a row the word loop stops once the running sum reaches it. Both cuts are exact.
"""

from libc.stdint cimport int32_t, int64_t, uint64_t

cdef extern from *:
    """
    static inline int os_popcount64(unsigned long long x) { return __builtin_popcountll(x); }
    """
    int os_popcount64(unsigned long long x) noexcept nogil


cdef inline int _capped(const uint64_t* a, const uint64_t* b, Py_ssize_t w, int cap) noexcept nogil:
    """H(a, b), or any value >= cap once the running sum reaches cap."""
    cdef int d = 0
    cdef Py_ssize_t k
    for k in range(w):
        d += os_popcount64(a[k] ^ b[k])
        if d >= cap:
            return d
    return d


cdef inline int _scan(const uint64_t* q, const uint64_t[:, ::1] ref, int64_t lo, int64_t hi,
                      int64_t skip, Py_ssize_t w, int best, int floor) noexcept nogil:
    """The best distance over rows [lo, hi) but *skip*, stopping once it reaches *floor*."""
    cdef int64_t r
    cdef int d
    cdef uint64_t q0
    if w == 1:  # one word: no inner loop, a branch that is almost never taken
        q0 = q[0]
        for r in range(lo, hi):
            d = os_popcount64(q0 ^ ref[r, 0])
            if d < best and r != skip:
                best = d
                if best <= floor:
                    return best
        return best
    for r in range(lo, hi):
        if r == skip:
            continue
        d = _capped(q, &ref[r, 0], w, best)
        if d < best:
            best = d
            if best <= floor:
                return best
    return best


def min_distances(const uint64_t[:, ::1] query, const uint64_t[:, ::1] reference,
                  const int64_t[::1] offsets, int32_t[::1] out, Py_ssize_t start,
                  Py_ssize_t stop, const int64_t[::1] skip=None, int floor=0) -> None:
    """out[i] = min over reference rows r (r != skip[i]) of H(query[i], reference[r]),
    for i in [start, stop); the GIL is released. *floor* is a lower bound the caller
    knows for every query (e.g. 2 when no row lies within distance 1): the search stops
    as soon as it finds a row at that distance.

    *reference* is sorted by popcount and ``offsets`` (length max_popcount + 2) holds the
    bucket starts. A query with no reference row left gets 64 * words + 1.
    """
    cdef Py_ssize_t w = query.shape[1]
    cdef Py_ssize_t i, k
    cdef int64_t top = offsets.shape[0] - 2  # the largest popcount with a bucket
    cdef int64_t p, delta, b, s
    cdef int best
    cdef bint has_skip = skip is not None
    cdef const uint64_t* q
    if reference.shape[1] != w:
        raise ValueError("query and reference widths differ")
    if stop > query.shape[0] or out.shape[0] < stop or (has_skip and skip.shape[0] < stop):
        raise ValueError("row range outside the arrays")
    if reference.shape[0] == 0 or w == 0:
        for i in range(start, stop):
            out[i] = 64 * w + 1 if reference.shape[0] == 0 else 0
        return
    with nogil:
        for i in range(start, stop):
            q = &query[i, 0]
            p = 0
            for k in range(w):
                p += os_popcount64(q[k])
            s = skip[i] if has_skip else -1
            best = <int>(64 * w + 1)
            delta = 0
            while delta < best and best > floor:
                b = p - delta
                if 0 <= b <= top:
                    best = _scan(q, reference, offsets[b], offsets[b + 1], s, w, best, floor)
                b = p + delta
                if delta > 0 and 0 <= b <= top and best > floor:
                    best = _scan(q, reference, offsets[b], offsets[b + 1], s, w, best, floor)
                if p - delta <= 0 and p + delta >= top:
                    break
                delta += 1
            out[i] = best
