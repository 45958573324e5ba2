/* fs-verity Merkle-tree hashing of whole buffers, with the GIL released once per call.
 *
 * The native twin of the pure-Python code in fsverity.py (which stays the reference and
 * the fallback: native.py decides which one runs). The pure path hashes each 4096-byte
 * block through hashlib, which takes and releases the GIL for every block; here a
 * buffer of any size is hashed in one call, without the GIL, through libcrypto's EVP
 * interface (SHA-NI/AVX2 where the CPU has them), so another thread runs meanwhile.
 *
 * Functions (alg: "sha256" or "sha512"; data: any C-contiguous buffer):
 *   leaf_hashes(data, alg)              the hashes of data's 4096-byte blocks, the last
 *                                       one zero-padded, concatenated (b"" for no data)
 *   digest_from_leaves(leaves, size, alg)  the fs-verity file digest of `size` bytes of
 *                                       data whose leaf hashes are `leaves`
 *   digest(data, alg)                   the fs-verity file digest of data
 *   use_sha_ni(flag)                    sha256 through the CPU's SHA extensions or not
 *
 * The algorithm: Documentation/filesystems/fsverity.rst, "File digest computation";
 * 4096-byte tree blocks, no salt, as composefs uses it.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>

#define BLOCK_SIZE 4096
#define LOG_BLOCK_SIZE 12
#define MAX_DIGEST 64
/* struct fsverity_descriptor (<linux/fsverity.h>): version, hash_algorithm,
 * log_blocksize, salt_size, __le32 reserved, __le64 data_size, root_hash[64],
 * salt[32], reserved[144]. */
#define DESCRIPTOR_SIZE 256
#define DESC_DATA_SIZE 8
#define DESC_ROOT_HASH 16
/* Below this many bytes the hashing takes less time than handing the GIL to another
 * thread and getting it back can cost: keep it. */
#define RELEASE_MIN (16 * BLOCK_SIZE)

/* SHA-256 blocks with the x86 SHA extensions (SHA-NI), two at once: the two hashes'
 * instructions interleave, so the CPU runs one's while the other's wait on their results.
 * Measured on these machines (AMD EPYC, 64 MiB of 4096-byte blocks): 2.6-2.7 GB/s, where
 * libcrypto's EVP hashes them at 2.1 (one call per block) and the same code one block at a
 * time at 2.2. Used for sha256 where the CPU has the instructions (use_sha_ni() turns it
 * off for the tests, which compare both ways with libcrypto's).
 */
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_SHANI 1

#define SHANI_TARGET __attribute__((target("sha,sse4.1,ssse3")))

static const uint32_t SHA256_K[64] __attribute__((aligned(16))) = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};
static const uint32_t SHA256_IV[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

static int have_sha_ni(void)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSSE3) || !(c & bit_SSE4_1))
        return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    return (b & bit_SHA) != 0;
}

/* The state (a..h) as the SHA instructions keep it: ABEF and CDGH. */
SHANI_TARGET static inline void shani_load(const uint32_t s[8], __m128i *abef, __m128i *cdgh)
{
    __m128i t = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&s[0]), 0xB1);
    __m128i u = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&s[4]), 0x1B);
    *abef = _mm_alignr_epi8(t, u, 8);
    *cdgh = _mm_blend_epi16(u, t, 0xF0);
}

/* The digest, big-endian, from ABEF and CDGH. */
SHANI_TARGET static inline void shani_out(__m128i abef, __m128i cdgh, unsigned char *out)
{
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i t = _mm_shuffle_epi32(abef, 0x1B);
    __m128i u = _mm_shuffle_epi32(cdgh, 0xB1);
    _mm_storeu_si128((__m128i *)out, _mm_shuffle_epi8(_mm_blend_epi16(t, u, 0xF0), bswap));
    _mm_storeu_si128((__m128i *)(out + 16), _mm_shuffle_epi8(_mm_alignr_epi8(u, t, 8), bswap));
}

/* Message words 4t..4t+3 of the 64-byte block p, in x[t % 4] (x holds the last four). */
#define SHANI_W(x, p, t)                                                                    \
    ((t) < 4 ? (x[(t) & 3] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)((p) + 16 * (t))), bswap)) \
             : (x[(t) & 3] = _mm_sha256msg2_epu32(                                          \
                    _mm_add_epi32(_mm_sha256msg1_epu32(x[(t) & 3], x[((t) - 3) & 3]),        \
                                  _mm_alignr_epi8(x[((t) - 1) & 3], x[((t) - 2) & 3], 4)),   \
                    x[((t) - 1) & 3])))

/* Rounds 4t..4t+3. */
#define SHANI_R(abef, cdgh, x, t)                                                           \
    do {                                                                                    \
        __m128i m_ = _mm_add_epi32(x[(t) & 3], _mm_load_si128((const __m128i *)&SHA256_K[4 * (t)])); \
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, m_);                                       \
        abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(m_, 0x0E));             \
    } while (0)

/* The padding block of a 4096-byte message: 0x80, zeros, the length in bits (32768). */
static const unsigned char SHANI_PAD[64] = {
    0x80, [62] = 0x80, [63] = 0x00,
};

/* SHA-256 of two 4096-byte blocks a and b (n == 2) or of a alone (n == 1). */
SHANI_TARGET static void shani_blocks(const unsigned char *a, const unsigned char *b, int n,
                                      unsigned char *out_a, unsigned char *out_b)
{
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i a0, a1, b0, b1;
    shani_load(SHA256_IV, &a0, &a1);
    b0 = a0;
    b1 = a1;
    if (n < 2)
        b = a;
    for (int blk = 0; blk <= 64; blk++) {
        const unsigned char *pa = blk < 64 ? a + 64 * blk : SHANI_PAD;
        const unsigned char *pb = blk < 64 ? b + 64 * blk : SHANI_PAD;
        __m128i xa[4], xb[4];
        __m128i sa0 = a0, sa1 = a1, sb0 = b0, sb1 = b1;
        if (n == 2) {
#pragma GCC unroll 16
            for (int t = 0; t < 16; t++) {
                SHANI_W(xa, pa, t);
                SHANI_W(xb, pb, t);
                SHANI_R(a0, a1, xa, t);
                SHANI_R(b0, b1, xb, t);
            }
            b0 = _mm_add_epi32(b0, sb0);
            b1 = _mm_add_epi32(b1, sb1);
        } else {
#pragma GCC unroll 16
            for (int t = 0; t < 16; t++) {
                SHANI_W(xa, pa, t);
                SHANI_R(a0, a1, xa, t);
            }
        }
        a0 = _mm_add_epi32(a0, sa0);
        a1 = _mm_add_epi32(a1, sa1);
    }
    shani_out(a0, a1, out_a);
    if (n == 2)
        shani_out(b0, b1, out_b);
}
#else
#define HAVE_SHANI 0
#endif

static int use_shani; /* set when the module is imported */

struct alg {
    const char *name;    /* as HashAlg spells it */
    const char *ossl;    /* as OpenSSL fetches it */
    int kernel_id;       /* FS_VERITY_HASH_ALG_* */
    EVP_MD *md;          /* fetched once, when the module is imported */
    size_t size;
};

static struct alg ALGS[] = {
    {"sha256", "SHA256", 1, NULL, 32},
    {"sha512", "SHA512", 2, NULL, 64},
};
#define NALGS (sizeof(ALGS) / sizeof(ALGS[0]))

/* What went wrong without the GIL, raised once it is held again. */
struct failure {
    const char *what;
    unsigned long code;
};

static void fail(struct failure *f, const char *what)
{
    if (f->what == NULL) {
        f->what = what;
        f->code = ERR_get_error();
    }
    ERR_clear_error();
}

static PyObject *raise_failure(const struct failure *f)
{
    char buf[256];
    if (f->what == NULL) /* no OpenSSL failure: the error was a Python one */
        return PyErr_NoMemory();
    if (f->code != 0) {
        ERR_error_string_n(f->code, buf, sizeof(buf));
        PyErr_Format(PyExc_RuntimeError, "fs-verity hashing: %s failed: %s", f->what, buf);
    } else {
        PyErr_Format(PyExc_RuntimeError, "fs-verity hashing: %s failed", f->what);
    }
    return NULL;
}

/* Hash one `len`-byte piece (len <= BLOCK_SIZE) zero-padded to BLOCK_SIZE into `out`. */
static int hash_block(EVP_MD_CTX *ctx, const struct alg *a, const unsigned char *block,
                      size_t len, unsigned char *out, struct failure *f)
{
    static const unsigned char zeros[BLOCK_SIZE];
    if (!EVP_DigestInit_ex2(ctx, a->md, NULL)) {
        fail(f, "EVP_DigestInit_ex2");
        return -1;
    }
    if (!EVP_DigestUpdate(ctx, block, len)) {
        fail(f, "EVP_DigestUpdate");
        return -1;
    }
    if (len < BLOCK_SIZE && !EVP_DigestUpdate(ctx, zeros, BLOCK_SIZE - len)) {
        fail(f, "EVP_DigestUpdate");
        return -1;
    }
    if (!EVP_DigestFinal_ex(ctx, out, NULL)) {
        fail(f, "EVP_DigestFinal_ex");
        return -1;
    }
    return 0;
}

static size_t nblocks(size_t len)
{
    return len / BLOCK_SIZE + (len % BLOCK_SIZE != 0);
}

/* The hashes of the blocks of data[0:len] into out (nblocks(len) * a->size bytes).
 * out may be data itself: hash i is written over bytes that block i or an earlier one
 * held, after they were read. */
static int hash_blocks(EVP_MD_CTX *ctx, const struct alg *a, const unsigned char *data,
                       size_t len, unsigned char *out, struct failure *f)
{
    size_t n = nblocks(len);
    unsigned char digest[MAX_DIGEST];
#if HAVE_SHANI
    if (use_shani && a->kernel_id == 1) {
        unsigned char last[BLOCK_SIZE], pair[2 * 32];
        for (size_t i = 0; i < n; i += 2) {
            const unsigned char *blk[2];
            int k = n - i < 2 ? 1 : 2;
            for (int j = 0; j < k; j++) {
                size_t off = (i + j) * BLOCK_SIZE;
                blk[j] = data + off;
                if (len - off < BLOCK_SIZE) { /* the last one, zero-padded */
                    memcpy(last, data + off, len - off);
                    memset(last + (len - off), 0, BLOCK_SIZE - (len - off));
                    blk[j] = last;
                }
            }
            shani_blocks(blk[0], k == 2 ? blk[1] : NULL, k, pair, pair + 32);
            memcpy(out + i * 32, pair, (size_t)k * 32); /* both read before either is written */
        }
        return 0;
    }
#endif
    for (size_t i = 0; i < n; i++) {
        size_t off = i * BLOCK_SIZE;
        size_t take = len - off < BLOCK_SIZE ? len - off : BLOCK_SIZE;
        if (hash_block(ctx, a, data + off, take, digest, f) < 0)
            return -1;
        memcpy(out + i * a->size, digest, a->size);
    }
    return 0;
}

/* The file digest from the leaf hashes, in place: `leaves` (nleaves * a->size bytes) is
 * overwritten by the upper levels of the tree. */
static int tree_digest(EVP_MD_CTX *ctx, const struct alg *a, unsigned char *leaves,
                       size_t nleaves, uint64_t data_size, unsigned char *out,
                       struct failure *f)
{
    unsigned char desc[DESCRIPTOR_SIZE];
    memset(desc, 0, sizeof(desc));
    size_t level = nleaves * a->size;
    /* A level holding a single hash is the top: that hash is the root. An empty file
     * has an all-zero root (left as the memset made it). */
    while (level > a->size) {
        size_t n = nblocks(level);
        if (hash_blocks(ctx, a, leaves, level, leaves, f) < 0)
            return -1;
        level = n * a->size;
    }
    desc[0] = 1; /* version */
    desc[1] = (unsigned char)a->kernel_id;
    desc[2] = LOG_BLOCK_SIZE;
    for (int i = 0; i < 8; i++)
        desc[DESC_DATA_SIZE + i] = (unsigned char)(data_size >> (8 * i));
    if (nleaves)
        memcpy(desc + DESC_ROOT_HASH, leaves, a->size);
    if (!EVP_DigestInit_ex2(ctx, a->md, NULL)) {
        fail(f, "EVP_DigestInit_ex2");
        return -1;
    }
    if (!EVP_DigestUpdate(ctx, desc, sizeof(desc))) {
        fail(f, "EVP_DigestUpdate");
        return -1;
    }
    if (!EVP_DigestFinal_ex(ctx, out, NULL)) {
        fail(f, "EVP_DigestFinal_ex");
        return -1;
    }
    return 0;
}

static const struct alg *find_alg(PyObject *name)
{
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "hash algorithm must be a str, not %.100s",
                     Py_TYPE(name)->tp_name);
        return NULL;
    }
    for (size_t i = 0; i < NALGS; i++) {
        if (PyUnicode_CompareWithASCIIString(name, ALGS[i].name) == 0)
            return &ALGS[i];
    }
    PyErr_Format(PyExc_ValueError, "unknown hash algorithm %R (sha256 or sha512)", name);
    return NULL;
}

static int check_args(const char *name, Py_ssize_t nargs, Py_ssize_t want)
{
    if (nargs == want)
        return 0;
    PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, want, nargs);
    return -1;
}

/* Release the GIL only for buffers worth it. */
static PyThreadState *release(size_t len)
{
    return len >= RELEASE_MIN ? PyEval_SaveThread() : NULL;
}

static void retake(PyThreadState *ts)
{
    if (ts != NULL)
        PyEval_RestoreThread(ts);
}

/* The arguments every function starts with: the data (held in `view`; release it) and
 * the algorithm, the last of `want` arguments (checked before the data is taken). */
static const struct alg *data_and_alg(const char *name, PyObject *const *args, Py_ssize_t nargs,
                                      Py_ssize_t want, Py_buffer *view)
{
    if (check_args(name, nargs, want) < 0)
        return NULL;
    const struct alg *a = find_alg(args[want - 1]);
    if (a == NULL || PyObject_GetBuffer(args[0], view, PyBUF_SIMPLE) < 0)
        return NULL;
    return a;
}

static PyObject *leaf_hashes(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    const struct alg *a = data_and_alg("leaf_hashes", args, nargs, 2, &view);
    if (a == NULL)
        return NULL;
    size_t len = (size_t)view.len;
    PyObject *result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(nblocks(len) * a->size));
    EVP_MD_CTX *ctx = result != NULL ? EVP_MD_CTX_new() : NULL;
    if (ctx == NULL) {
        Py_XDECREF(result);
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    struct failure f = {NULL, 0};
    /* The bytes object is not shared yet: writing it without the GIL is safe. */
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    PyThreadState *ts = release(len);
    int rc = hash_blocks(ctx, a, view.buf, len, out, &f);
    retake(ts);
    EVP_MD_CTX_free(ctx);
    PyBuffer_Release(&view);
    if (rc < 0) {
        Py_DECREF(result);
        return raise_failure(&f);
    }
    return result;
}

/* Leaf hashes from `data` (when leaves is NULL) or `leaves`, then the file digest. */
static PyObject *file_digest(const struct alg *a, const unsigned char *data, size_t len,
                             const unsigned char *leaves, size_t nleaves, uint64_t size)
{
    unsigned char out[MAX_DIGEST];
    size_t n = leaves != NULL ? nleaves : nblocks(len);
    unsigned char *work = PyMem_RawMalloc(n ? n * a->size : 1);
    EVP_MD_CTX *ctx = work != NULL ? EVP_MD_CTX_new() : NULL;
    if (ctx == NULL) {
        PyMem_RawFree(work);
        return PyErr_NoMemory();
    }
    struct failure f = {NULL, 0};
    PyThreadState *ts = release(leaves != NULL ? n * a->size : len);
    int rc = 0;
    if (leaves != NULL)
        memcpy(work, leaves, n * a->size);
    else
        rc = hash_blocks(ctx, a, data, len, work, &f);
    if (rc == 0)
        rc = tree_digest(ctx, a, work, n, size, out, &f);
    retake(ts);
    EVP_MD_CTX_free(ctx);
    PyMem_RawFree(work);
    if (rc < 0)
        return raise_failure(&f);
    return PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)a->size);
}

static PyObject *digest(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    const struct alg *a = data_and_alg("digest", args, nargs, 2, &view);
    if (a == NULL)
        return NULL;
    PyObject *result = file_digest(a, view.buf, (size_t)view.len, NULL, 0, (uint64_t)view.len);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *digest_from_leaves(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    const struct alg *a = data_and_alg("digest_from_leaves", args, nargs, 3, &view);
    if (a == NULL)
        return NULL;
    unsigned long long size = PyLong_AsUnsignedLongLong(args[1]);
    if (size == (unsigned long long)-1 && PyErr_Occurred()) {
        PyBuffer_Release(&view);
        return NULL;
    }
    size_t len = (size_t)view.len;
    PyObject *result = NULL;
    if (len % a->size != 0) {
        PyErr_Format(PyExc_ValueError, "leaf hashes: %zu bytes is not a whole number of %s hashes",
                     len, a->name);
    } else if (len / a->size != nblocks(size)) {
        PyErr_Format(PyExc_ValueError, "leaf hashes: %zu hashes for %llu bytes of data",
                     len / a->size, size);
    } else {
        result = file_digest(a, NULL, 0, view.buf, len / a->size, size);
    }
    PyBuffer_Release(&view);
    return result;
}

static PyObject *use_sha_ni(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    if (check_args("use_sha_ni", nargs, 1) < 0)
        return NULL;
    int want = PyObject_IsTrue(args[0]);
    if (want < 0)
        return NULL;
    int was = use_shani;
#if HAVE_SHANI
    use_shani = want && have_sha_ni();
#endif
    return PyBool_FromLong(was);
}

static PyMethodDef methods[] = {
    {"use_sha_ni", (PyCFunction)(void (*)(void))use_sha_ni, METH_FASTCALL,
     "use_sha_ni(flag) -> bool: hash sha256 blocks with the CPU's SHA extensions (where it "
     "has them) or through libcrypto; what was used until now."},
    {"leaf_hashes", (PyCFunction)(void (*)(void))leaf_hashes, METH_FASTCALL,
     "leaf_hashes(data, alg) -> bytes: the hashes of data's 4096-byte blocks (the last one "
     "zero-padded), concatenated."},
    {"digest_from_leaves", (PyCFunction)(void (*)(void))digest_from_leaves, METH_FASTCALL,
     "digest_from_leaves(leaves, size, alg) -> bytes: the fs-verity file digest of size bytes "
     "whose leaf hashes are leaves."},
    {"digest", (PyCFunction)(void (*)(void))digest, METH_FASTCALL,
     "digest(data, alg) -> bytes: the fs-verity file digest of data."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "cfsboot.composefs._verity",
    "fs-verity Merkle-tree hashing of whole buffers in C (libcrypto), without the GIL.",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__verity(void)
{
    for (size_t i = 0; i < NALGS; i++) {
        if (ALGS[i].md == NULL)
            ALGS[i].md = EVP_MD_fetch(NULL, ALGS[i].ossl, NULL);
        if (ALGS[i].md == NULL) {
            char buf[256];
            ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
            ERR_clear_error();
            PyErr_Format(PyExc_ImportError, "libcrypto has no %s: %s", ALGS[i].ossl, buf);
            return NULL;
        }
        if ((size_t)EVP_MD_get_size(ALGS[i].md) != ALGS[i].size) {
            PyErr_Format(PyExc_ImportError, "libcrypto's %s has an unexpected size",
                         ALGS[i].ossl);
            return NULL;
        }
    }
#if HAVE_SHANI
    use_shani = have_sha_ni();
#endif
    return PyModule_Create(&module);
}
