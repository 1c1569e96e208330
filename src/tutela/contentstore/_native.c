/* The content store's small-file loop in C, without the interpreter lock.
 *
 * A first protect of many small files spent most of its time in the Python part of each
 * file (open, read, fstat, close, hash, compress, encrypt: each a call that takes the
 * interpreter lock back), so the two store workers mostly waited for each other.  These two
 * functions do a whole batch per call and release the lock for all of it:
 *
 *   read_small(paths, sizes, limit, id_key) -> [(status, data, chunk_id, mode, size, mtime_ns)]
 *   chunk_ids(datas, id_key) -> [chunk_id]
 *   encode(chunk_ids, datas, compress, level, wide_log, narrow, aead, key, nonce_start)
 *       -> [blob]
 *
 * The last two serve the chunks of large files too, which arrive as views of the chunker's
 * buffer: in Python, each chunk's blob cost three fresh buffers of its size (the compressed
 * copy, the flag joined to it, the ciphertext) and the allocator handed most of them back to
 * the kernel at once, so every one was paid for again in page faults: 2.3 ms per MiB of
 * random data against 0.45 ms here, with one buffer per blob.
 *
 * They produce exactly what the Python path does (pack.py `Codec.encode`, crypto.py
 * `Keys.chunk_id`): BLAKE3 (keyed when the store encrypts) of the bytes as chunk id; a blob is
 * flag + payload (zstd, or raw when compression saves under 1/64), sealed with AES-256-GCM or
 * ChaCha20-Poly1305 under the nonce that leads it and the associated data "C" + chunk id.
 * Nonces count up from `nonce_start`, 96-bit little-endian, one per blob.  Data longer than
 * `narrow` bytes is compressed with a window of 2**wide_log (0: never), as `Codec` does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <zstd.h>

#include "_blake3/blake3.h"

#define NONCE 12
#define TAG 16
#define ID 32

/* read_small statuses besides 0 (read) and a positive errno */
#define TOO_BIG -1     /* more than `limit` bytes: the caller chunks it */
#define NOT_REGULAR -2 /* no longer a regular file */
#define GREW -3        /* grew past the size the walk saw: the caller reads it itself */

typedef struct {
    const char *path;
    char *buf;      /* the bytes object's buffer, size + 1 bytes */
    Py_ssize_t cap; /* size + 1 */
    Py_ssize_t len;
    int status;
    struct stat st;
    uint8_t id[ID];
} small_file;

static void hash_id(const void *key, const void *data, size_t len, uint8_t out[ID]) {
    blake3_hasher hasher;
    if (key != NULL)
        blake3_hasher_init_keyed(&hasher, (const uint8_t *)key);
    else
        blake3_hasher_init(&hasher);
    blake3_hasher_update(&hasher, data, len);
    blake3_hasher_finalize(&hasher, out, ID);
}

static int read_one(small_file *f, Py_ssize_t limit) {
    /* O_NONBLOCK: a FIFO put in a file's place fails instead of hanging. */
    int fd = open(f->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return errno;
    Py_ssize_t got = 0;
    while (got < f->cap) {
        ssize_t n = read(fd, f->buf + got, (size_t)(f->cap - got));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            close(fd);
            return e;
        }
        if (n == 0)
            break;
        got += n;
    }
    if (fstat(fd, &f->st) != 0) {
        int e = errno;
        close(fd);
        return e;
    }
    close(fd);
    f->len = got;
    if (!S_ISREG(f->st.st_mode))
        return NOT_REGULAR;
    if (got > limit)
        return TOO_BIG;
    if (got == f->cap || got != f->st.st_size)
        return GREW; /* changed since the walk: read again, to its end, by the caller */
    return 0;
}

static PyObject *read_small(PyObject *self, PyObject *args) {
    PyObject *paths, *sizes;
    Py_ssize_t limit;
    Py_buffer key = {0};
    if (!PyArg_ParseTuple(args, "O!O!nz*", &PyList_Type, &paths, &PyList_Type, &sizes, &limit,
                          &key))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(paths);
    PyObject *result = NULL, *encoded = NULL, *datas = NULL;
    small_file *files = NULL;
    if (PyList_GET_SIZE(sizes) != count || (key.buf != NULL && key.len != ID)) {
        PyErr_SetString(PyExc_ValueError, "paths and sizes differ in length, or a bad key");
        goto done;
    }
    files = PyMem_Calloc((size_t)count ? (size_t)count : 1, sizeof(small_file));
    encoded = PyList_New(count);
    datas = PyList_New(count);
    if (files == NULL || encoded == NULL || datas == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *path = NULL;
        if (!PyUnicode_FSConverter(PyList_GET_ITEM(paths, i), &path))
            goto done;
        PyList_SET_ITEM(encoded, i, path);
        Py_ssize_t size = PyLong_AsSsize_t(PyList_GET_ITEM(sizes, i));
        if (size < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "negative size");
            goto done;
        }
        if (size > limit)
            size = limit; /* read one byte past the limit at most: enough to tell */
        PyObject *data = PyBytes_FromStringAndSize(NULL, size + 1);
        if (data == NULL)
            goto done;
        PyList_SET_ITEM(datas, i, data);
        files[i].path = PyBytes_AS_STRING(path);
        files[i].buf = PyBytes_AS_STRING(data);
        files[i].cap = size + 1;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        small_file *f = &files[i];
        f->status = read_one(f, limit);
        if (f->status == 0)
            hash_id(key.buf, f->buf, (size_t)f->len, f->id);
    }
    Py_END_ALLOW_THREADS
    result = PyList_New(count);
    if (result == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        small_file *f = &files[i];
        PyObject *item;
        if (f->status == 0) {
            PyObject *data = PyList_GET_ITEM(datas, i); /* taken from the list: resizable */
            PyList_SET_ITEM(datas, i, NULL);
            if (_PyBytes_Resize(&data, f->len) != 0)
                goto done;
            long long mtime_ns = (long long)f->st.st_mtim.tv_sec * 1000000000LL +
                                 f->st.st_mtim.tv_nsec;
            item = Py_BuildValue("(iNy#IlL)", 0, data, (const char *)f->id, (Py_ssize_t)ID,
                                 (unsigned int)f->st.st_mode, (long)f->st.st_size, mtime_ns);
        } else {
            item = Py_BuildValue("(iOOIlL)", f->status, Py_None, Py_None, 0u, 0L, 0LL);
        }
        if (item == NULL)
            goto done;
        PyList_SET_ITEM(result, i, item);
    }
done:
    if (PyErr_Occurred())
        Py_CLEAR(result);
    Py_XDECREF(encoded);
    Py_XDECREF(datas);
    PyMem_Free(files);
    PyBuffer_Release(&key);
    return result;
}

/* One zstd context per thread, kept for the thread's life: a context's first use allocates
 * and clears its tables, which once per batch cost as much as compressing a small file. */
static pthread_key_t cctx_key;

static void free_cctx(void *cctx) { ZSTD_freeCCtx((ZSTD_CCtx *)cctx); }

static ZSTD_CCtx *thread_cctx(void) {
    ZSTD_CCtx *cctx = pthread_getspecific(cctx_key);
    if (cctx == NULL) {
        cctx = ZSTD_createCCtx();
        if (cctx != NULL && pthread_setspecific(cctx_key, cctx) != 0) {
            ZSTD_freeCCtx(cctx);
            cctx = NULL;
        }
    }
    return cctx;
}

/* The buffers of a list's items (bytes, memoryviews...), got and released together. */
static Py_buffer *get_buffers(PyObject *list) {
    Py_ssize_t count = PyList_GET_SIZE(list);
    Py_buffer *views = PyMem_Calloc((size_t)count ? (size_t)count : 1, sizeof(Py_buffer));
    if (views == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(list, i), &views[i], PyBUF_SIMPLE) != 0) {
            for (Py_ssize_t k = 0; k < i; k++)
                PyBuffer_Release(&views[k]);
            PyMem_Free(views);
            return NULL;
        }
    }
    return views;
}

static void release_buffers(Py_buffer *views, Py_ssize_t count) {
    if (views == NULL)
        return;
    for (Py_ssize_t i = 0; i < count; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
}

static PyObject *chunk_ids(PyObject *self, PyObject *args) {
    PyObject *datas;
    Py_buffer key = {0};
    if (!PyArg_ParseTuple(args, "O!z*", &PyList_Type, &datas, &key))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(datas);
    PyObject *result = NULL;
    uint8_t *ids = NULL;
    Py_buffer *views = NULL;
    if (key.buf != NULL && key.len != ID) {
        PyErr_SetString(PyExc_ValueError, "bad key");
        goto done;
    }
    views = get_buffers(datas);
    ids = PyMem_Malloc((size_t)(count ? count : 1) * ID);
    if (views == NULL || ids == NULL) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++)
        hash_id(key.buf, views[i].buf, (size_t)views[i].len, ids + i * ID);
    Py_END_ALLOW_THREADS
    result = PyList_New(count);
    if (result == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *id = PyBytes_FromStringAndSize((const char *)ids + i * ID, ID);
        if (id == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, id);
    }
done:
    release_buffers(views, views ? count : 0);
    PyMem_Free(ids);
    PyBuffer_Release(&key);
    return result;
}

typedef struct {
    const uint8_t *id;
    const char *data;
    Py_ssize_t len;
    char *out;
    Py_ssize_t out_len;
    int failed;
} blob_job;

static void add_to_nonce(uint8_t nonce[NONCE], const uint8_t start[NONCE], uint64_t i) {
    unsigned carry = 0;
    for (int b = 0; b < NONCE; b++) {
        unsigned sum = start[b] + (unsigned)((b < 8 ? (i >> (8 * b)) : 0) & 0xff) + carry;
        nonce[b] = (uint8_t)sum;
        carry = sum >> 8;
    }
}

/* Seal out[NONCE : NONCE + plain_len] in place; the tag goes right after it. */
static int seal(EVP_CIPHER_CTX *ctx, const uint8_t *key, const uint8_t nonce[NONCE],
                const uint8_t *id, char *out, Py_ssize_t plain_len) {
    uint8_t aad[1 + ID];
    int n = 0;
    aad[0] = 'C';
    memcpy(aad + 1, id, ID);
    memcpy(out, nonce, NONCE);
    unsigned char *plain = (unsigned char *)out + NONCE;
    if (EVP_EncryptInit_ex(ctx, NULL, NULL, key, nonce) != 1) /* the cipher: set once */
        return -1;
    if (EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)sizeof(aad)) != 1)
        return -1;
    if (EVP_EncryptUpdate(ctx, plain, &n, plain, (int)plain_len) != 1)
        return -1;
    if (EVP_EncryptFinal_ex(ctx, plain + n, &n) != 1)
        return -1;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG, plain + plain_len) != 1)
        return -1;
    return 0;
}

static PyObject *encode(PyObject *self, PyObject *args) {
    PyObject *ids, *datas;
    int level, compress, aead, wide_log;
    Py_ssize_t narrow;
    Py_buffer key = {0}, start = {0};
    if (!PyArg_ParseTuple(args, "O!O!piiniz*y*", &PyList_Type, &ids, &PyList_Type, &datas,
                          &compress, &level, &wide_log, &narrow, &aead, &key, &start))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(ids);
    PyObject *result = NULL;
    blob_job *jobs = NULL;
    Py_buffer *views = NULL;
    const EVP_CIPHER *cipher = NULL;
    if (aead == 1)
        cipher = EVP_aes_256_gcm();
    else if (aead == 2)
        cipher = EVP_chacha20_poly1305();
    if (PyList_GET_SIZE(datas) != count || start.len != NONCE || (aead && key.len != 32) ||
        (aead != 0 && cipher == NULL) || aead < 0 || aead > 2) {
        PyErr_SetString(PyExc_ValueError, "bad arguments to encode");
        goto done;
    }
    Py_ssize_t overhead = aead ? NONCE + TAG : 0;
    views = get_buffers(datas);
    if (views == NULL)
        goto done;
    jobs = PyMem_Calloc((size_t)count ? (size_t)count : 1, sizeof(blob_job));
    result = PyList_New(count);
    if (jobs == NULL || result == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *id = PyList_GET_ITEM(ids, i);
        if (!PyBytes_Check(id) || PyBytes_GET_SIZE(id) != ID) {
            PyErr_SetString(PyExc_TypeError, "chunk ids must be bytes of 32");
            goto done;
        }
        Py_ssize_t len = views[i].len;
        Py_ssize_t payload = compress ? (Py_ssize_t)ZSTD_compressBound((size_t)len) : len;
        if (payload < len)
            payload = len;
        PyObject *out = PyBytes_FromStringAndSize(NULL, overhead + 1 + payload);
        if (out == NULL)
            goto done;
        PyList_SET_ITEM(result, i, out);
        jobs[i].id = (const uint8_t *)PyBytes_AS_STRING(id);
        jobs[i].data = (const char *)views[i].buf;
        jobs[i].len = len;
        jobs[i].out = PyBytes_AS_STRING(out);
    }
    int failure = 0; /* 1: zstd, 2: the cipher, 3: memory */
    Py_BEGIN_ALLOW_THREADS
    ZSTD_CCtx *cctx = compress ? thread_cctx() : NULL;
    EVP_CIPHER_CTX *ctx = aead ? EVP_CIPHER_CTX_new() : NULL;
    if ((compress && cctx == NULL) || (aead && ctx == NULL))
        failure = 3;
    if (ctx != NULL && EVP_EncryptInit_ex(ctx, cipher, NULL, NULL, NULL) != 1)
        failure = 2;
    for (Py_ssize_t i = 0; i < count && !failure; i++) {
        blob_job *j = &jobs[i];
        char *body = j->out + (aead ? NONCE : 0); /* flag + payload */
        Py_ssize_t payload = j->len;
        body[0] = 0; /* raw */
        if (compress && j->len) {
            size_t cap = ZSTD_compressBound((size_t)j->len);
            size_t packed;
            if (wide_log && j->len > narrow) { /* the level, with a window for all of it */
                ZSTD_CCtx_reset(cctx, ZSTD_reset_parameters);
                ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level);
                ZSTD_CCtx_setParameter(cctx, ZSTD_c_windowLog, wide_log);
                packed = ZSTD_compress2(cctx, body + 1, cap, j->data, (size_t)j->len);
            } else { /* the level alone (its parameters tuned to the size) */
                packed = ZSTD_compressCCtx(cctx, body + 1, cap, j->data, (size_t)j->len, level);
            }
            if (ZSTD_isError(packed)) {
                failure = 1;
                break;
            }
            if ((Py_ssize_t)packed < j->len - (j->len >> 6)) {
                body[0] = 1; /* zstd */
                payload = (Py_ssize_t)packed;
            }
        }
        if (body[0] == 0)
            memcpy(body + 1, j->data, (size_t)j->len);
        if (aead) {
            uint8_t nonce[NONCE];
            add_to_nonce(nonce, (const uint8_t *)start.buf, (uint64_t)i);
            if (seal(ctx, (const uint8_t *)key.buf, nonce, j->id, j->out, 1 + payload)) {
                failure = 2;
                break;
            }
        }
        j->out_len = overhead + 1 + payload;
    }
    EVP_CIPHER_CTX_free(ctx);
    Py_END_ALLOW_THREADS
    if (failure) {
        PyErr_SetString(PyExc_RuntimeError, failure == 1   ? "zstd compression failed"
                                            : failure == 2 ? "encryption failed"
                                                           : "out of memory");
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *out = PyList_GET_ITEM(result, i);
        if (_PyBytes_Resize(&out, jobs[i].out_len) != 0) {
            PyList_SET_ITEM(result, i, NULL);
            goto done;
        }
        PyList_SET_ITEM(result, i, out);
    }
done:
    if (PyErr_Occurred())
        Py_CLEAR(result);
    release_buffers(views, views ? count : 0);
    PyMem_Free(jobs);
    PyBuffer_Release(&key);
    PyBuffer_Release(&start);
    return result;
}

static PyMethodDef methods[] = {
    {"read_small", read_small, METH_VARARGS,
     "read_small(paths, sizes, limit, id_key) -> [(status, data, chunk_id, mode, size, "
     "mtime_ns)]: read, fstat and hash each file, without the interpreter lock.  status 0: "
     "read; > 0: an errno; -1: more than limit bytes; -2: not a regular file; -3: changed size "
     "since the walk."},
    {"chunk_ids", chunk_ids, METH_VARARGS,
     "chunk_ids(datas, id_key) -> [chunk_id]: BLAKE3 of each buffer (keyed with id_key, 32 "
     "bytes, or None), without the interpreter lock."},
    {"encode", encode, METH_VARARGS,
     "encode(chunk_ids, datas, compress, level, wide_log, narrow, aead, key, nonce_start) -> "
     "[blob]: compress "
     "and seal each chunk as pack.Codec.encode does (aead 0: none, 1: AES-256-GCM, 2: "
     "ChaCha20-Poly1305; nonces count up from nonce_start), without the interpreter lock."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native", "The content store's small-file loop in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (pthread_key_create(&cctx_key, free_cctx) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_key_create failed");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;

    if (PyModule_AddIntConstant(m, "TOO_BIG", TOO_BIG) || PyModule_AddIntConstant(m, "NOT_REGULAR", NOT_REGULAR) ||
        PyModule_AddIntConstant(m, "GREW", GREW)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
