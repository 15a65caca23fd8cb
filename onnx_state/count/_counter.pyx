# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Hot loops of the state counter: threshold, pack and hash-count, without the GIL.

A state is stored as ``nwords`` little-endian uint64 words, neuron c at bit c % 64 of word
c // 64. On a little-endian machine the bytes of those words are exactly
``np.packbits(bits, bitorder='little')`` padded to a multiple of 8 bytes.
The public, validating wrapper is ``onnx_state.count.counter.StateCounter``.
"""

import numpy as np

cimport cython
cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset

cnp.import_array()

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define _prefetch(p) __builtin_prefetch(p)
    #else
    #define _prefetch(p) ((void)0)
    #endif
    """
    void _prefetch(const void* p) noexcept nogil


cdef extern from "_mem.h" nogil:
    void* os_zalloc(size_t nbytes)
    void os_zfree(void* p, size_t nbytes)


cdef extern from "_pack.h" nogil:
    enum:
        OS_F32, OS_F64, OS_F16, OS_I8, OS_U8, OS_I16, OS_U16, OS_I32, OS_U32, OS_I64
    ctypedef void (*os_lanes_fn)(const char* base, Py_ssize_t stride, int n, Py_ssize_t pn,
                                 const void* zp, uint32_t* lanes, uint32_t* nans) noexcept nogil
    ctypedef void (*os_rows_fn)(const char* base, Py_ssize_t sp, Py_ssize_t pn,
                                Py_ssize_t neurons, const void* zp, uint64_t* out,
                                Py_ssize_t nwords, int64_t* nans) noexcept nogil
    ctypedef void (*os_strided_fn)(const char* base, Py_ssize_t sc, Py_ssize_t sp,
                                   Py_ssize_t pn, Py_ssize_t neurons, const void* zp,
                                   uint64_t* out, Py_ssize_t nwords, int64_t* nans) noexcept nogil
    ctypedef struct os_kernels:
        os_lanes_fn lanes
        os_rows_fn rows
        os_strided_fn strided
    void os_init()
    os_kernels os_kernel(int kind)
    int os_use_simd(int on)
    int os_avx2
    void os_packed_rows(const char* base, Py_ssize_t sp, Py_ssize_t pn, Py_ssize_t nbytes,
                        uint8_t last, uint64_t* out, Py_ssize_t nwords)
    void os_packed_strided(const char* base, Py_ssize_t sc, Py_ssize_t sp, Py_ssize_t pn,
                           Py_ssize_t nbytes, uint8_t last, uint64_t* out, Py_ssize_t nwords)

os_init()

# numpy dtype -> the kernel's value kind. bool is read as uint8 bytes with zero points 0.
_KINDS = {
    np.dtype(np.float32): OS_F32,
    np.dtype(np.float64): OS_F64,
    np.dtype(np.float16): OS_F16,
    np.dtype(np.bool_): OS_U8,
    np.dtype(np.int8): OS_I8,
    np.dtype(np.uint8): OS_U8,
    np.dtype(np.int16): OS_I16,
    np.dtype(np.uint16): OS_U16,
    np.dtype(np.int32): OS_I32,
    np.dtype(np.uint32): OS_U32,
    np.dtype(np.int64): OS_I64,
}
KERNEL_DTYPES = tuple(_KINDS)  # for Python: the dtypes StateTable.add reads
SIMD = bool(os_avx2)  # for Python: whether the rows kernels use AVX2 on this CPU


def use_simd(bint on):
    """Use the CPU's vector rows kernels (True, the default) or the portable ones (False);
    returns the previous setting. For tests, which compare the two."""
    return bool(os_use_simd(on))


# Positions packed per block: big enough to amortise loop overhead, small enough for L1.
cdef enum:
    BLOCK = 1024
    PREFETCH = 24  # lookups in flight ahead of the one being made


cdef inline uint64_t _hash(const uint64_t* key, Py_ssize_t nwords) noexcept nogil:
    cdef uint64_t h = 0x9E3779B97F4A7C15ULL ^ <uint64_t>nwords
    cdef Py_ssize_t i
    for i in range(nwords):
        h = (h ^ key[i]) * 0xBF58476D1CE4E5B9ULL
        h ^= h >> 31
    h *= 0x94D049BB133111EBULL
    return h ^ (h >> 29)


cdef inline bint _same(const uint64_t* a, const uint64_t* b, Py_ssize_t nwords) noexcept nogil:
    # Only the wide table compares keys this way, and its keys have nwords >= 2.
    return memcmp(a, b, nwords * sizeof(uint64_t)) == 0


cdef struct Entry:
    uint64_t key
    int64_t count           # 0 marks an empty entry: stored states have count >= 1


# States of at most 64 neurons: keys live in the open-addressing entries themselves, so a
# lookup touches one cache line (the wide table needs three).
cdef struct Narrow:
    Entry* entries          # [mask + 1]
    Py_ssize_t n
    Py_ssize_t mask
    int shift               # 64 - log2(mask + 1), for Fibonacci hashing
    uint64_t last_key       # previous state and its entry: runs skip the probe
    Py_ssize_t last


cdef inline Py_ssize_t _narrow_slot(uint64_t key, int shift) noexcept nogil:
    # Fibonacci hashing: the top bits of key * 2**64 / golden ratio. Lookups, growth and the
    # prefetches in _narrow_add_block must all agree on it.
    return <Py_ssize_t>((key * 0x9E3779B97F4A7C15ULL) >> shift)


cdef int _narrow_init(Narrow* t) noexcept nogil:
    t.n = 0
    t.mask = 127
    t.shift = 64 - 7
    t.last = -1
    t.entries = <Entry*>os_zalloc((t.mask + 1) * sizeof(Entry))
    return 0 if t.entries != NULL else -1


cdef int _narrow_grow(Narrow* t) noexcept nogil:
    cdef Py_ssize_t size = (t.mask + 1) * 2, i, k
    cdef int shift = t.shift - 1
    cdef Entry* entries = <Entry*>os_zalloc(size * sizeof(Entry))
    if entries == NULL:
        return -1
    for k in range(t.mask + 1):
        if t.entries[k].count:
            i = _narrow_slot(t.entries[k].key, shift)
            while entries[i].count:
                i = (i + 1) & (size - 1)
            entries[i] = t.entries[k]
    os_zfree(t.entries, (t.mask + 1) * sizeof(Entry))
    t.entries = entries
    t.mask = size - 1
    t.shift = shift
    t.last = -1
    return 0


cdef inline int _narrow_add(Narrow* t, uint64_t key, int64_t count) noexcept nogil:
    cdef Py_ssize_t i
    if t.last >= 0 and t.last_key == key:
        t.entries[t.last].count += count
        return 0
    if t.n >= t.mask:  # growth failed earlier: a full table would probe forever
        return -1
    i = _narrow_slot(key, t.shift)
    while t.entries[i].count:
        if t.entries[i].key == key:
            t.entries[i].count += count
            t.last, t.last_key = i, key
            return 0
        i = (i + 1) & t.mask
    t.entries[i].key = key
    t.entries[i].count = count
    t.n += 1
    t.last, t.last_key = i, key
    if 2 * t.n > t.mask + 1:  # keep the load factor at most one half
        return _narrow_grow(t)
    return 0


cdef inline int _narrow_add_block(Narrow* t, const uint64_t* block, Py_ssize_t nb) noexcept nogil:
    cdef Py_ssize_t j
    # Large tables miss the cache: ask for every entry of the block first, so the lookups
    # below overlap their memory latency.
    for j in range(min(nb, <Py_ssize_t>PREFETCH)):
        _prefetch(&t.entries[_narrow_slot(block[j], t.shift)])
    for j in range(nb):
        if j + PREFETCH < nb:
            _prefetch(&t.entries[_narrow_slot(block[j + PREFETCH], t.shift)])
        if _narrow_add(t, block[j], 1) != 0:
            return -1
    return 0


# Layers of at most DENSE_BITS neurons count every possible state in a plain array
# (8 MiB at 20 neurons, zero pages until touched): a lookup is one increment, no probing.
cdef enum:
    DENSE_BITS = 20

DENSE_NEURONS = DENSE_BITS  # for Python: layers this narrow use the dense table


cdef struct Dense:
    int64_t* counts         # [1 << neurons], indexed by the state itself
    Py_ssize_t size
    Py_ssize_t n            # nonzero entries


cdef int _dense_init(Dense* d, Py_ssize_t neurons) noexcept nogil:
    d.size = <Py_ssize_t>1 << neurons
    d.n = 0
    d.counts = <int64_t*>os_zalloc(d.size * sizeof(int64_t))
    return 0 if d.counts != NULL else -1


cdef inline void _dense_add(Dense* d, uint64_t key, int64_t count) noexcept nogil:
    # Callers guarantee key < size (packed states have no bits above the last neuron).
    d.n += d.counts[key] == 0
    d.counts[key] += count


cdef inline void _dense_add_block(Dense* d, const uint64_t* block, Py_ssize_t pn) noexcept nogil:
    # Neighbouring positions often share a state: add runs at once, so repeated increments
    # of one counter do not wait on each other.
    cdef uint64_t key = block[0]
    cdef int64_t run = 1
    cdef Py_ssize_t j
    for j in range(1, pn):
        if block[j] == key:
            run += 1
        else:
            _dense_add(d, key, run)
            key = block[j]
            run = 1
    _dense_add(d, key, run)


# Which of the three tables a Table is; fixed by the neuron count in _table_init.
cdef enum Kind:
    KIND_DENSE              # <= DENSE_BITS neurons: Table.dense
    KIND_NARROW             # <= 64 neurons: Table.narrow
    KIND_WIDE               # more: the rows and slots of Table itself


cdef struct Table:
    Kind kind
    Dense dense             # KIND_DENSE
    Narrow narrow           # KIND_NARROW
    Py_ssize_t nwords       # uint64 words per state, for every kind
    # KIND_WIDE:
    Py_ssize_t n            # unique states stored
    Py_ssize_t capacity     # rows allocated
    Py_ssize_t mask         # slot count - 1 (a power of two)
    uint64_t* rows          # [capacity * (nwords + 1)]: count, then the key, per row
    uint64_t* hashes        # [capacity], so growing never rehashes keys
    uint64_t* slots         # [mask + 1]: row + 1 in the low 32 bits (0 = empty), hash tag high
    Py_ssize_t last         # row of the previous state: runs of one state skip the probe


cdef inline uint64_t* _row(Table* t, Py_ssize_t row) noexcept nogil:
    # The count sits next to its key, so a hit touches one cache line for both.
    return t.rows + row * (t.nwords + 1)


cdef int _table_init(Table* t, Py_ssize_t neurons) noexcept nogil:
    cdef Py_ssize_t nwords = (neurons + 63) // 64
    t.nwords = nwords
    t.n = 0
    t.rows = NULL
    t.hashes = NULL
    t.slots = NULL
    t.narrow.entries = NULL
    t.dense.counts = NULL
    if neurons <= DENSE_BITS:
        t.kind = KIND_DENSE
        return _dense_init(&t.dense, neurons)
    if nwords == 1:
        t.kind = KIND_NARROW
        return _narrow_init(&t.narrow)
    t.kind = KIND_WIDE
    t.capacity = 64
    t.mask = 127
    t.last = -1
    t.rows = <uint64_t*>malloc(t.capacity * (nwords + 1) * sizeof(uint64_t))
    t.hashes = <uint64_t*>malloc(t.capacity * sizeof(uint64_t))
    t.slots = <uint64_t*>calloc(t.mask + 1, sizeof(uint64_t))
    if t.rows == NULL or t.hashes == NULL or t.slots == NULL:
        return -1
    return 0


cdef void _table_free(Table* t) noexcept nogil:
    # Safe to call twice, after a failed _table_init, and on a never-initialised (zeroed)
    # Table: every pointer is NULL or owned, and is NULL afterwards.
    if t.kind == KIND_DENSE:
        os_zfree(t.dense.counts, t.dense.size * sizeof(int64_t))
        t.dense.counts = NULL
    elif t.kind == KIND_NARROW:
        os_zfree(t.narrow.entries, (t.narrow.mask + 1) * sizeof(Entry))
        t.narrow.entries = NULL
    else:
        free(t.rows)
        free(t.hashes)
        free(t.slots)
        t.rows = NULL
        t.hashes = NULL
        t.slots = NULL


cdef inline Py_ssize_t _wide_slot(uint64_t h, Py_ssize_t mask) noexcept nogil:
    # Home slot of hash h among mask + 1 slots. Lookups, growth and the prefetches in
    # _wide_add_block must all agree on it.
    return <Py_ssize_t>(h & <uint64_t>mask)


cdef inline uint64_t _tag(uint64_t h) noexcept nogil:
    # The high half of the hash, kept in the slot so most mismatches skip reading the row.
    return h & 0xFFFFFFFF00000000ULL


cdef inline uint64_t _slot_value(Py_ssize_t row, uint64_t h) noexcept nogil:
    return <uint64_t>(row + 1) | _tag(h)


cdef int _table_grow_slots(Table* t) noexcept nogil:
    cdef Py_ssize_t size = (t.mask + 1) * 2
    cdef uint64_t* slots = <uint64_t*>calloc(size, sizeof(uint64_t))
    cdef Py_ssize_t row, i
    if slots == NULL:
        return -1
    for row in range(t.n):
        i = _wide_slot(t.hashes[row], size - 1)
        while slots[i] != 0:
            i = (i + 1) & (size - 1)
        slots[i] = _slot_value(row, t.hashes[row])
    free(t.slots)
    t.slots = slots
    t.mask = size - 1
    return 0


cdef int _table_grow_rows(Table* t) noexcept nogil:
    cdef Py_ssize_t cap = t.capacity * 2
    cdef void* p
    p = realloc(t.rows, cap * (t.nwords + 1) * sizeof(uint64_t))
    if p == NULL:
        return -1
    t.rows = <uint64_t*>p
    p = realloc(t.hashes, cap * sizeof(uint64_t))
    if p == NULL:
        return -1
    t.hashes = <uint64_t*>p
    t.capacity = cap
    return 0


cdef inline int _table_add_hashed(Table* t, const uint64_t* key, int64_t count,
                                  uint64_t h) noexcept nogil:
    """Add *count* observations of a multi-word *key* whose hash is *h*; -1 if out of memory."""
    cdef Py_ssize_t i, row
    cdef uint64_t s, tag = _tag(h)
    cdef uint64_t* r
    if t.n >= t.mask:  # growth failed earlier: a full table would probe forever
        return -1
    i = _wide_slot(h, t.mask)
    while True:
        s = t.slots[i]
        if s == 0:
            break
        if _tag(s) == tag:
            row = <Py_ssize_t>(s & 0xFFFFFFFFULL) - 1
            r = _row(t, row)
            if _same(r + 1, key, t.nwords):
                r[0] += <uint64_t>count
                t.last = row
                return 0
        i = (i + 1) & t.mask
    if t.n >= <Py_ssize_t>0xFFFFFFFE:  # rows must fit the 32-bit half of a slot
        return -1
    if t.n == t.capacity and _table_grow_rows(t) != 0:
        return -1
    row = t.n
    r = _row(t, row)
    r[0] = <uint64_t>count
    memcpy(r + 1, key, t.nwords * sizeof(uint64_t))
    t.hashes[row] = h
    t.slots[i] = _slot_value(row, h)
    t.n += 1
    t.last = row
    if 2 * t.n > t.mask + 1:  # keep the load factor at most one half
        return _table_grow_slots(t)
    return 0


cdef inline int _wide_add(Table* t, const uint64_t* key, int64_t count) noexcept nogil:
    if t.last >= 0 and _same(_row(t, t.last) + 1, key, t.nwords):
        _row(t, t.last)[0] += <uint64_t>count
        return 0
    return _table_add_hashed(t, key, count, _hash(key, t.nwords))


cdef inline int _wide_add_block(Table* t, const uint64_t* block, Py_ssize_t nb) noexcept nogil:
    cdef uint64_t hashes[BLOCK]
    cdef Py_ssize_t nwords = t.nwords, j
    # Hash the whole block first, prefetching each home slot, so the probes below overlap
    # their memory latency.
    for j in range(nb):
        hashes[j] = _hash(block + j * nwords, nwords)
        _prefetch(&t.slots[_wide_slot(hashes[j], t.mask)])
    for j in range(nb):
        if t.last >= 0 and _same(_row(t, t.last) + 1, block + j * nwords, nwords):
            _row(t, t.last)[0] += 1
        elif _table_add_hashed(t, block + j * nwords, 1, hashes[j]) != 0:
            return -1
    return 0


cdef inline int _table_add(Table* t, const uint64_t* key, int64_t count) noexcept nogil:
    """Add *count* observations of *key*; -1 when out of memory."""
    if t.kind == KIND_DENSE:
        _dense_add(&t.dense, key[0], count)
        return 0
    if t.kind == KIND_NARROW:
        return _narrow_add(&t.narrow, key[0], count)
    return _wide_add(t, key, count)


cdef inline int _table_add_block(Table* t, const uint64_t* block, Py_ssize_t nb) noexcept nogil:
    """Add one observation of each of the *nb* packed states in *block*; -1 when out of memory."""
    if t.kind == KIND_DENSE:
        _dense_add_block(&t.dense, block, nb)
        return 0
    if t.kind == KIND_NARROW:
        return _narrow_add_block(&t.narrow, block, nb)
    return _wide_add_block(t, block, nb)


# How a block's values are read (see _pack.h).
cdef enum Mode:
    MODE_LANES              # each neuron's positions contiguous (NCHW conv maps)
    MODE_ROWS               # each position's neurons contiguous (neurons last)
    MODE_STRIDED            # anything else


cdef struct Source:
    const char* base        # element [0, 0, 0]
    Py_ssize_t n_outer, width, n_inner   # width: neurons, or bytes when packed
    Py_ssize_t so, sc, sp   # byte strides of the three axes
    Py_ssize_t itemsize
    int kind                # an OS_* value kind; ignored when packed
    const char* zp          # a zero point per neuron in the value's type (integers), or NULL
    bint packed             # uint8 bytes of packed bits, `last` masking the final byte
    uint8_t last


cdef Mode _mode(const Source* s) noexcept nogil:
    cdef Py_ssize_t one = s.itemsize
    if s.sc == one and (s.sp != one or s.n_inner == 1):
        return MODE_ROWS
    if s.sp == one:
        return MODE_LANES
    return MODE_STRIDED


cdef void _pack_rows(const Source* s, os_kernels k, Mode mode, Py_ssize_t o, Py_ssize_t p0,
                     Py_ssize_t pn, uint64_t* out, Py_ssize_t nwords,
                     int64_t* nans) noexcept nogil:
    """Pack positions p0 .. p0 + pn of outer row o into out (zeroed), by rows or strides."""
    cdef const char* base = s.base + o * s.so + p0 * s.sp
    if s.packed:
        if mode == MODE_ROWS:
            os_packed_rows(base, s.sp, pn, s.width, s.last, out, nwords)
        else:
            os_packed_strided(base, s.sc, s.sp, pn, s.width, s.last, out, nwords)
    elif mode == MODE_ROWS:
        k.rows(base, s.sp, pn, s.width, s.zp, out, nwords, nans)
    else:
        k.strided(base, s.sc, s.sp, pn, s.width, s.zp, out, nwords, nans)


cdef int _pack_count(const Source* s, Table* t, uint64_t* block, uint64_t* record,
                     int64_t* nan_count) noexcept nogil:
    """Pack and count every state of the (outer, width, inner) source.

    States run over (outer, inner) in C order. When *record* is not NULL, every packed
    state is also written there in order.
    """
    cdef Py_ssize_t n_outer = s.n_outer, n_neurons = s.width, n_inner = s.n_inner
    cdef Py_ssize_t nwords = t.nwords
    cdef Mode mode = _mode(s)
    cdef os_kernels k = os_kernel(s.kind)
    cdef uint32_t lanes[BLOCK]
    cdef uint32_t nan_lanes[BLOCK]  # 32-bit like lanes, so both vectorise together
    cdef uint32_t* half
    cdef Py_ssize_t o, rows, p0, pn, nb, r, j, w, g, gn
    cdef int64_t nans = 0
    if s.packed and mode == MODE_LANES:
        mode = MODE_STRIDED  # byte j of every position is a contiguous row: a plain copy
    o = 0
    while o < n_outer:
        # Short rows (small feature maps): one block spans several outer rows, so that the
        # per-block work and the prefetch distance do not shrink with the map.
        rows = min(max(<Py_ssize_t>BLOCK // n_inner, 1), n_outer - o)
        p0 = 0
        while p0 < n_inner:
            pn = min(<Py_ssize_t>BLOCK, n_inner - p0)
            nb = rows * pn  # states in this block: rows > 1 only when pn == n_inner
            memset(block, 0, nb * nwords * sizeof(uint64_t))
            if mode == MODE_LANES:
                # The common conv case, a contiguous row per neuron: pack 32 neurons at a
                # time into uint32 lanes (4 per SSE2 register), then place them in the words.
                for g in range(0, n_neurons, 32):
                    gn = min(<Py_ssize_t>32, n_neurons - g)
                    memset(lanes, 0, nb * sizeof(uint32_t))
                    memset(nan_lanes, 0, nb * sizeof(uint32_t))
                    for r in range(rows):
                        k.lanes(s.base + (o + r) * s.so + g * s.sc + p0 * s.sp, s.sc, <int>gn,
                                pn, s.zp + g * s.itemsize if s.zp != NULL else NULL,
                                lanes + r * pn, nan_lanes + r * pn)
                    for j in range(nb):
                        nans += nan_lanes[j]
                    half = <uint32_t*>block
                    w = g >> 5  # 32-bit half-word index; little-endian halves of the uint64s
                    for j in range(nb):
                        half[j * 2 * nwords + w] = lanes[j]
            else:
                for r in range(rows):
                    _pack_rows(s, k, mode, o + r, p0, pn, block + r * pn * nwords, nwords,
                               &nans)
            if _table_add_block(t, block, nb) != 0:
                return -1
            if record != NULL:
                memcpy(record, block, nb * nwords * sizeof(uint64_t))
                record += nb * nwords
            p0 += pn
        o += rows
    nan_count[0] += nans
    return 0


cdef class StateTable:
    """Hash table of packed states and their counts (memory grows with unique states only)."""

    cdef Table t
    cdef uint64_t* block
    cdef readonly Py_ssize_t neurons
    cdef readonly int64_t state_count
    cdef readonly int64_t nan_count
    # Set when an insert ran out of memory part-way: some of that batch or merge is in the
    # table and some is not, so the table refuses to be used again rather than miscount.
    cdef readonly bint broken

    def __cinit__(self, Py_ssize_t neurons):
        if neurons < 1:
            raise ValueError(f"a layer needs at least one neuron, got {neurons}")
        self.neurons = neurons
        self.block = NULL
        if _table_init(&self.t, neurons) != 0:
            _table_free(&self.t)
            raise MemoryError("cannot allocate the state table")
        self.block = <uint64_t*>malloc(BLOCK * self.t.nwords * sizeof(uint64_t))
        if self.block == NULL:
            raise MemoryError("cannot allocate the packing buffer")

    def __dealloc__(self):
        _table_free(&self.t)
        free(self.block)

    @property
    def nwords(self) -> int:
        return self.t.nwords

    @property
    def nbytes(self) -> int:
        """Bytes the table holds now (its entries, rows and slots)."""
        if self.t.kind == KIND_DENSE:
            return self.t.dense.size * sizeof(int64_t)
        if self.t.kind == KIND_NARROW:
            return (self.t.narrow.mask + 1) * sizeof(Entry)
        return (self.t.capacity * (self.t.nwords + 2) + self.t.mask + 1) * sizeof(uint64_t)

    cdef _check(self):
        if self.broken:
            raise MemoryError(
                "this state table ran out of memory part-way through an update; its counts "
                "are incomplete (count again with more memory)"
            )

    @property
    def n_unique(self) -> int:
        self._check()
        if self.t.kind == KIND_DENSE:
            return self.t.dense.n
        if self.t.kind == KIND_NARROW:
            return self.t.narrow.n
        return self.t.n

    def add(self, x, record=None, zero_point=None):
        """Count every state of x, an (outer, neurons, inner) array of a KERNEL_DTYPES dtype.

        *record*, when given, is a C-contiguous uint64 array of shape
        (outer * inner, nwords) that receives the packed states in order. *zero_point*,
        for integer (and bool) arrays only, is a contiguous array of one threshold per
        neuron in x's dtype (uint8 for bool); None means 0. A neuron fires iff its value
        is greater.
        """
        cdef Source s
        self._check()
        if x.shape[1] != self.neurons:
            raise ValueError(f"expected {self.neurons} neurons, got {x.shape[1]}")
        kind = _KINDS.get(x.dtype)
        if kind is None:
            raise TypeError(f"unsupported kernel dtype {x.dtype}")
        s.kind = kind
        s.packed = False
        s.last = 0
        zp = None
        if x.dtype.kind in "iub":
            zdt = np.dtype(np.uint8) if x.dtype.kind == "b" else x.dtype
            if zero_point is None:
                zp = np.zeros(self.neurons, zdt)
            else:
                zp = zero_point
                if zp.dtype != zdt or zp.shape != (self.neurons,) or not zp.flags.c_contiguous:
                    raise ValueError(f"zero points must be a contiguous {zdt} array of {self.neurons}")
        elif zero_point is not None:
            raise TypeError(f"a zero point applies to integer arrays, not {x.dtype}")
        s.zp = NULL if zp is None else <char*>cnp.PyArray_DATA(zp)
        self._add(x, &s, record)

    def add_packed(self, x, record=None, int64_t nan_count=0):
        """Count the states of x, (outer, ceil(neurons / 8), inner) uint8 bytes of bits packed
        as np.packbits(bitorder='little') along axis 1; pad bits above the last neuron are
        ignored. Same keys as add() of the unpacked bits. The bytes show no NaN: *nan_count*
        (counted by whoever packed them) is added to the table's."""
        cdef Source s
        cdef Py_ssize_t nbytes = (self.neurons + 7) // 8
        self._check()
        if nan_count < 0:
            raise ValueError("nan_count must be non-negative")
        if x.dtype != np.uint8:
            raise TypeError(f"packed states are uint8 bytes, not {x.dtype}")
        if x.shape[1] != nbytes:
            raise ValueError(f"expected {nbytes} bytes per state, got {x.shape[1]}")
        s.kind = OS_U8
        s.packed = True
        s.zp = NULL
        s.last = <uint8_t>((1 << (self.neurons % 8)) - 1) if self.neurons % 8 else 0xFF
        self._add(x, &s, record)
        self.nan_count += nan_count

    cdef _add(self, cnp.ndarray x, Source* s, record):
        cdef uint64_t* rec = NULL
        cdef uint64_t[:, ::1] rec_view
        cdef int rc = 0
        cdef int64_t nans = 0
        if x.ndim != 3:
            raise ValueError(f"expected an (outer, neurons, inner) array, got {x.ndim} dimensions")
        if record is not None:
            rec_view = record
            if rec_view.shape[0] != x.shape[0] * x.shape[2] or rec_view.shape[1] != self.t.nwords:
                raise ValueError("record buffer has the wrong shape")
            if rec_view.shape[0] > 0:
                rec = &rec_view[0, 0]
        if x.shape[0] == 0 or x.shape[2] == 0:
            return
        s.base = <const char*>cnp.PyArray_DATA(x)
        s.n_outer, s.width, s.n_inner = x.shape[0], x.shape[1], x.shape[2]
        s.so, s.sc, s.sp = x.strides[0], x.strides[1], x.strides[2]
        s.itemsize = x.itemsize
        with nogil:  # x (and the zero points) stay referenced by the caller meanwhile
            rc = _pack_count(s, &self.t, self.block, rec, &nans)
        if rc != 0:
            self.broken = True
            raise MemoryError("out of memory (or over 4 billion distinct states) in the state table")
        self.state_count += x.shape[0] * x.shape[2]
        self.nan_count += nans

    def add_counts(self, const uint64_t[:, ::1] keys, const int64_t[::1] counts,
                   int64_t nan_count=0):
        """Add (state, count) rows, e.g. another table's contents: the exact merge."""
        cdef Py_ssize_t i, n = keys.shape[0]
        cdef int rc = 0
        cdef int64_t total = 0
        self._check()
        if keys.shape[1] != self.t.nwords or counts.shape[0] != n:
            raise ValueError("keys and counts do not fit this table")
        for i in range(n):
            if counts[i] < 0:
                raise ValueError("counts must be non-negative")
            total += counts[i]
        cdef Py_ssize_t top = self.neurons - 64 * (self.t.nwords - 1)  # bits in the last word
        if top < 64:  # stray bits would index past a dense table, or split one state in two
            for i in range(n):
                if keys[i, self.t.nwords - 1] >> top:
                    raise ValueError(f"state {i} has bits above neuron {self.neurons - 1}")
        with nogil:
            for i in range(n):
                if counts[i] > 0:
                    rc = _table_add(&self.t, &keys[i, 0], counts[i])
                    if rc != 0:
                        break
        if rc != 0:
            self.broken = True
            raise MemoryError("out of memory (or over 4 billion distinct states) in the state table")
        self.state_count += total
        self.nan_count += nan_count

    def export(self):
        """Return (keys uint64 [n, nwords], counts int64 [n]) as copies, in no promised
        order (dense tables give ascending keys)."""
        cdef Py_ssize_t n = self.n_unique, nw = self.t.nwords, i, row = 0
        keys = np.empty((n, nw), dtype=np.uint64)
        counts = np.empty(n, dtype=np.int64)
        cdef uint64_t[:, ::1] kv = keys
        cdef int64_t[::1] cv = counts
        cdef Entry* entries = self.t.narrow.entries
        cdef int64_t* dense = self.t.dense.counts
        if self.t.kind == KIND_DENSE:  # ascending state order for free
            for i in range(self.t.dense.size):
                if dense[i]:
                    kv[row, 0] = <uint64_t>i
                    cv[row] = dense[i]
                    row += 1
        elif self.t.kind == KIND_NARROW:
            for i in range(self.t.narrow.mask + 1):
                if entries[i].count:
                    kv[row, 0] = entries[i].key
                    cv[row] = entries[i].count
                    row += 1
        else:
            for i in range(n):
                cv[i] = <int64_t>_row(&self.t, i)[0]
                memcpy(&kv[i, 0], _row(&self.t, i) + 1, nw * sizeof(uint64_t))
        return keys, counts


cdef inline int _cmp_ids(const uint8_t* a, const uint8_t* b, Py_ssize_t width) noexcept nogil:
    """Order of two state ids as little-endian integers (the last byte most significant):
    the order of StateCounter.state_table for every width."""
    cdef Py_ssize_t i = width - 1
    while i >= 0:
        if a[i] != b[i]:
            return -1 if a[i] < b[i] else 1
        i -= 1
    return 0


def merge_sorted_ids(const uint8_t[:, ::1] a, const int64_t[::1] ca,
                     const uint8_t[:, ::1] b, const int64_t[::1] cb):
    """One table of two tables of distinct state ids (rows of bytes), each sorted in
    state_table order, with their counts: one linear pass; equal ids add their counts.

    Returns (ids, counts), sorted the same way.
    """
    cdef Py_ssize_t na = a.shape[0], nb = b.shape[0]
    cdef Py_ssize_t width = a.shape[1] if na else b.shape[1]
    if na and nb and a.shape[1] != b.shape[1]:
        raise ValueError(f"state ids of {a.shape[1]} and {b.shape[1]} bytes cannot merge")
    if ca.shape[0] != na or cb.shape[0] != nb:
        raise ValueError("one count per state id is needed")
    if width == 0:
        raise ValueError("state ids of 0 bytes (a table of no neurons) cannot merge")
    ids = np.empty((na + nb, width), np.uint8)
    counts = np.empty(na + nb, np.int64)
    if na + nb == 0:
        return ids, counts
    cdef uint8_t[:, ::1] out = ids
    cdef int64_t[::1] oc = counts
    cdef Py_ssize_t i = 0, j = 0, k = 0
    cdef int c
    with nogil:
        while i < na and j < nb:
            c = _cmp_ids(&a[i, 0], &b[j, 0], width)
            if c <= 0:
                memcpy(&out[k, 0], &a[i, 0], width)
                oc[k] = ca[i] + (cb[j] if c == 0 else 0)
                j += c == 0
                i += 1
            else:
                memcpy(&out[k, 0], &b[j, 0], width)
                oc[k] = cb[j]
                j += 1
            k += 1
        if i < na:
            memcpy(&out[k, 0], &a[i, 0], (na - i) * width)
            memcpy(&oc[k], &ca[i], (na - i) * sizeof(int64_t))
            k += na - i
        if j < nb:
            memcpy(&out[k, 0], &b[j, 0], (nb - j) * width)
            memcpy(&oc[k], &cb[j], (nb - j) * sizeof(int64_t))
            k += nb - j
    if k < na + nb:  # equal ids met: a view would keep the rest of the buffer alive
        return ids[:k].copy(), counts[:k].copy()
    return ids, counts
