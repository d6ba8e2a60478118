/* Checkpoints in the format of runtime/checkpoint.py, so that files move freely between the C
   library and Python's train.save()/train.load(): an .npz (zip of .npy files) holding
   param/<name>, state/<key>, meta/step (int64), meta/format ("drug-checkpoint-1") and
   meta/sha256, the SHA-256 over every other array as
   "<key>|<dtype.str>|<shape tuple repr>|" + the array's bytes, in sorted key order.
   Writes are atomic (temporary file, fsync, rename; through a symbolic link, beside the file it
   points to; the replaced file's mode is kept); a load checks everything first and changes
   nothing unless the whole file is intact and fits the model: every member name, no member twice,
   meta/step a non-negative int64 scalar, meta/format and meta/sha256 strings, every array's dtype
   and shape (the rules of runtime/checkpoint.py). */
#define _XOPEN_SOURCE 700 /* POSIX.1-2008 with its XSI part: realpath */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "drug_rt.h"

#define FORMAT "drug-checkpoint-1"
#define MAX_DIMS 64

typedef struct {
    char *key; /* e.g. "param/w1" (the .npz member without ".npy") */
    char descr[24];
    int32_t ndim;
    int64_t shape[MAX_DIMS];
    const void *data;
    uint64_t nbytes;
} array;

/* ---- .npy headers ---- */

static void shape_repr(char *out, size_t len, int32_t ndim, const int64_t *shape) {
    size_t n = (size_t)snprintf(out, len, "(");
    for (int32_t i = 0; i < ndim && n < len; i++)
        n += (size_t)snprintf(out + n, len - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < len) snprintf(out + n, len - n, ndim == 1 ? ",)" : ")");
}

/* A version 1.0 header as numpy writes it: magic, length, dict, spaces, newline; 64-byte aligned. */
static size_t npy_header(char *out, size_t len, const array *a) {
    char shape[MAX_DIMS * 24 + 8], dict[MAX_DIMS * 24 + 96];
    shape_repr(shape, sizeof shape, a->ndim, a->shape);
    int dict_len = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }", a->descr, shape);
    size_t padding = 64 - (10 + (size_t)dict_len + 1) % 64, header_len = (size_t)dict_len + padding + 1;
    if (10 + header_len > len) return 0;
    memcpy(out, "\x93NUMPY\x01\x00", 8);
    out[8] = (char)(header_len & 0xff);
    out[9] = (char)(header_len >> 8);
    memcpy(out + 10, dict, (size_t)dict_len);
    memset(out + 10 + dict_len, ' ', padding);
    out[10 + header_len - 1] = '\n';
    return 10 + header_len;
}

static int64_t itemsize_of(const char *descr) {
    if ((descr[0] != '<' && descr[0] != '|') || !strchr("fiubU", descr[1])) return -1;
    char *end;
    long n = strtol(descr + 2, &end, 10);
    if (*end || n <= 0 || n > (1L << 20)) return -1;
    return descr[1] == 'U' ? 4 * n : n;
}

static const char *value_after(const char *header, const char *key) {
    const char *p = strstr(header, key);
    if (!p) return NULL;
    p += strlen(key);
    while (*p == ' ') p++;
    return p;
}

/* Fill a's dtype and shape from the dict of an .npy header, e.g.
   {'descr': '<f4', 'fortran_order': False, 'shape': (784, 512), }; its element count, or -1. */
static int64_t parse_dict(const char *header, array *a, char *why, size_t why_len) {
    const char *descr = value_after(header, "'descr':"), *order = value_after(header, "'fortran_order':");
    const char *shape = value_after(header, "'shape':");
    if (!descr || (*descr != '\'' && *descr != '"') || !order || !shape || *shape != '(')
        return snprintf(why, why_len, "damaged .npy header"), -1;
    size_t descr_len = strcspn(descr + 1, "'\"");
    if (descr_len >= sizeof a->descr) return snprintf(why, why_len, "unsupported dtype"), -1;
    memcpy(a->descr, descr + 1, descr_len);
    a->descr[descr_len] = '\0';
    if (itemsize_of(a->descr) < 0)
        return snprintf(why, why_len, "dtype '%s' is not a little-endian number or string", a->descr), -1;
    if (strncmp(order, "False", 5) != 0) return snprintf(why, why_len, "Fortran-ordered arrays are not supported"), -1;
    int64_t count = 1;
    a->ndim = 0;
    for (const char *p = shape + 1; *p != ')';) {
        char *end;
        long long dim = strtoll(p, &end, 10);
        if (end == p || dim < 0 || a->ndim == MAX_DIMS || (dim && count > INT64_MAX / dim))
            return snprintf(why, why_len, "damaged .npy shape"), -1;
        a->shape[a->ndim++] = dim;
        count *= dim;
        for (p = end; *p == ' ' || *p == ','; p++) continue;
        if (!*p) return snprintf(why, why_len, "damaged .npy shape"), -1;
    }
    return count;
}

/* Parse one .npy member; on failure write why into `why`. */
static int npy_parse(const unsigned char *data, uint64_t size, array *a, char *why, size_t why_len) {
    if (size < 12 || memcmp(data, "\x93NUMPY", 6) != 0 || data[6] < 1 || data[6] > 3)
        return snprintf(why, why_len, "not an .npy array"), -1;
    int major = data[6]; /* 1: 16-bit header length; 2, 3: 32-bit */
    uint64_t len = data[8] | (uint64_t)data[9] << 8, start = 10;
    if (major > 1) {
        len |= (uint64_t)data[10] << 16 | (uint64_t)data[11] << 24;
        start = 12;
    }
    char *header = len <= 65536 && start + len <= size ? malloc(len + 1) : NULL;
    if (!header) return snprintf(why, why_len, "damaged .npy header"), -1;
    memcpy(header, data + start, len);
    header[len] = '\0';
    int64_t count = parse_dict(header, a, why, why_len);
    free(header);
    if (count < 0) return -1;
    int64_t itemsize = itemsize_of(a->descr);
    a->data = data + start + len;
    a->nbytes = size - start - len;
    if (count > INT64_MAX / itemsize || (uint64_t)(count * itemsize) != a->nbytes)
        return snprintf(why, why_len, "holds %llu bytes of data for %lld elements of %s", (unsigned long long)a->nbytes,
                        (long long)count, a->descr),
               -1;
    return 0;
}

/* ---- the digest ---- */

static int by_key(const void *a, const void *b) { return strcmp(((const array *)a)->key, ((const array *)b)->key); }

/* The SHA-256 of runtime/checkpoint.py _digest over arrays[0, n) (sorted here, in place). */
static void digest(array *arrays, size_t n, char hex[65]) {
    drugrt_sha256 s;
    char shape[MAX_DIMS * 24 + 8];
    qsort(arrays, n, sizeof *arrays, by_key);
    drugrt_sha256_init(&s);
    for (size_t i = 0; i < n; i++) {
        /* checkpoint.py hashes np.ascontiguousarray(value), which is at least 1-d: a scalar is "(1,)" */
        int64_t one = 1;
        if (arrays[i].ndim == 0) shape_repr(shape, sizeof shape, 1, &one);
        else shape_repr(shape, sizeof shape, arrays[i].ndim, arrays[i].shape);
        drugrt_sha256_update(&s, arrays[i].key, strlen(arrays[i].key));
        drugrt_sha256_update(&s, "|", 1);
        drugrt_sha256_update(&s, arrays[i].descr, strlen(arrays[i].descr));
        drugrt_sha256_update(&s, "|", 1);
        drugrt_sha256_update(&s, shape, strlen(shape));
        drugrt_sha256_update(&s, "|", 1);
        drugrt_sha256_update(&s, arrays[i].data, (size_t)arrays[i].nbytes);
    }
    drugrt_sha256_hex(&s, hex);
}

/* NumPy's '<U<n>' scalars hold UTF-32LE code points; ours are ASCII. */
static void to_utf32(uint32_t *out, const char *text) {
    for (size_t i = 0; text[i]; i++) {
        unsigned char c = (unsigned char)text[i];
        unsigned char *b = (unsigned char *)&out[i];
        b[0] = c;
        b[1] = b[2] = b[3] = 0;
    }
}

static int utf32_equals(const array *a, const char *text) {
    size_t n = strlen(text);
    if (a->descr[1] != 'U' || a->ndim != 0 || a->nbytes < 4 * n) return 0;
    const unsigned char *p = a->data;
    for (size_t i = 0; i < a->nbytes / 4; i++) {
        uint32_t c = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
                     (uint32_t)p[4 * i + 3] << 24;
        if (c != (i < n ? (unsigned char)text[i] : 0u)) return 0;
    }
    return 1;
}

/* ---- save ---- */

static void tensor_array(array *a, char *key, const drugrt_tensor *t, const void *data) {
    a->key = key;
    snprintf(a->descr, sizeof a->descr, "%s", t->info.dtype);
    a->ndim = t->info.ndim;
    for (int32_t d = 0; d < t->info.ndim; d++) a->shape[d] = t->info.shape[d];
    a->data = data;
    a->nbytes = (uint64_t)(t->info.size * t->itemsize);
}

static char *joined(const char *prefix, const char *name) {
    char *key = malloc(strlen(prefix) + strlen(name) + 1);
    if (key) strcat(strcpy(key, prefix), name);
    return key;
}

static int write_zip(int fd, array *arrays, size_t n) {
    drugrt_zip_writer *w = drugrt_zip_open(fd);
    if (!w) {
        close(fd);
        return -1;
    }
    int failed = 0;
    for (size_t i = 0; i < n && !failed; i++) {
        char head[MAX_DIMS * 24 + 256], *name = joined(arrays[i].key, ".npy");
        size_t head_len = npy_header(head, sizeof head, &arrays[i]);
        failed = !name || !head_len || drugrt_zip_add(w, name, head, head_len, arrays[i].data, (size_t)arrays[i].nbytes);
        free(name);
    }
    return drugrt_zip_close(w) || failed ? -1 : 0;
}

/* Open a new file named `tmp` (its last six characters, XXXXXX, replaced until the name is free)
   with the mode of the file `dest` it will replace, or 0666 less the umask for a new one. */
static int create_temporary(char *tmp, const char *dest) {
    static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    struct stat st;
    int keep = stat(dest, &st) == 0;
    char *x = tmp + strlen(tmp) - 6;
    unsigned long long seed = (unsigned long long)time(NULL) ^ ((unsigned long long)getpid() << 20) ^
                              (unsigned long long)(uintptr_t)tmp;
    for (int attempt = 0; attempt < 100; attempt++) {
        unsigned long long v = seed + (unsigned long long)attempt * 0x9e3779b97f4a7c15ull;
        for (int i = 0; i < 6; i++, v /= 36) x[i] = digits[v % 36];
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, keep ? 0600 : 0666);
        if (fd >= 0) {
            if (keep && fchmod(fd, st.st_mode & 07777) != 0) {
                int saved = errno;
                close(fd);
                unlink(tmp);
                errno = saved;
                return -1;
            }
            return fd;
        }
        if (errno != EEXIST) return -1;
    }
    return -1;
}

int drugrt_save(drugrt_handle *h, const char *where, const char *path) {
    const drugrt_model *m = h->model;
    h->error[0] = '\0';
    if (!path) return drugrt_fail(h, DRUG_ERR_NULL, "%s: path is NULL", where);
    int has_state = m->programs[0] != NULL;
    size_t n = (size_t)m->saved_params + (has_state ? (size_t)m->nstates : 0) + 3, k = 0;
    array *arrays = calloc(n, sizeof *arrays);
    char *target = realpath(path, NULL); /* through a symbolic link: replace the file it points to */
    const char *dest = target ? target : path;
    char *tmp = joined(dest, ".tmp-XXXXXX");
    uint32_t format[sizeof FORMAT - 1], hash[64];
    char hex[65];
    int status = DRUG_ERR_MEMORY, fd;
    if (!arrays || !tmp) goto done;
    for (int32_t i = 0; i < m->saved_params; i++, k++) {
        if (!(arrays[k].key = joined("param/", m->params[i].info.name))) goto done;
        tensor_array(&arrays[k], arrays[k].key, &m->params[i], h->params[i]);
    }
    for (int32_t i = 0; has_state && i < m->nstates; i++, k++) {
        if (!(arrays[k].key = joined("state/", m->states[i].info.name))) goto done;
        tensor_array(&arrays[k], arrays[k].key, &m->states[i], h->states[i]);
    }
    to_utf32(format, FORMAT);
    arrays[k++] = (array){.key = joined("meta/", "step"), .descr = "<i8", .data = &h->step, .nbytes = 8};
    arrays[k] = (array){.key = joined("meta/", "format"), .data = format, .nbytes = sizeof format};
    snprintf(arrays[k++].descr, sizeof arrays->descr, "<U%zu", sizeof FORMAT - 1);
    if (!arrays[k - 1].key || !arrays[k - 2].key) goto done;
    digest(arrays, k, hex);
    to_utf32(hash, hex);
    arrays[k++] = (array){.key = joined("meta/", "sha256"), .descr = "<U64", .data = hash, .nbytes = sizeof hash};
    if (!arrays[k - 1].key) goto done;
    status = DRUG_ERR_IO;
    if ((fd = create_temporary(tmp, dest)) < 0) {
        drugrt_fail(h, status, "%s: cannot create a temporary file beside '%s': %s", where, path, strerror(errno));
        goto done;
    }
    errno = 0;
    if (write_zip(fd, arrays, k) != 0 || rename(tmp, dest) != 0) {
        drugrt_fail(h, status, "%s: cannot write checkpoint '%s': %s", where, path,
                     errno ? strerror(errno) : "write error");
        unlink(tmp);
        goto done;
    }
    status = DRUG_OK;
done:
    if (status == DRUG_ERR_MEMORY) drugrt_fail(h, status, "%s: out of memory writing '%s'", where, path);
    for (size_t i = 0; arrays && i < n; i++) free(arrays[i].key);
    free(arrays);
    free(tmp);
    free(target);
    return status;
}

/* ---- load ---- */

static unsigned char *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    struct stat st;
    unsigned char *data = NULL;
    if (f && fstat(fileno(f), &st) == 0 && (data = malloc((size_t)st.st_size + 1)))
        *size = fread(data, 1, (size_t)st.st_size, f);
    int saved = errno;
    if (f) fclose(f);
    errno = saved;
    return data;
}

static const array *find(const array *arrays, size_t n, const char *prefix, const char *name) {
    size_t len = strlen(prefix);
    for (size_t i = 0; i < n; i++)
        if (strncmp(arrays[i].key, prefix, len) == 0 && strcmp(arrays[i].key + len, name) == 0) return &arrays[i];
    return NULL;
}

static void append(char *out, size_t len, const char *format, ...) __attribute__((format(printf, 3, 4)));
static void append(char *out, size_t len, const char *format, ...) {
    size_t used = strlen(out);
    va_list args;
    va_start(args, format);
    if (used < len) vsnprintf(out + used, len - used, format, args);
    va_end(args);
}

/* Append to `out` why the file's arrays under `prefix` ("param/", "state/") do not fit `tensors`:
   tensors[0, required) must be there, and with `strict` nothing else may be. */
static void check_fit(char *out, size_t len, const array *arrays, size_t n, const char *prefix, const char *kind,
                      const drugrt_tensor *tensors, int32_t count, int32_t required, int strict) {
    char file_shape[MAX_DIMS * 24 + 8], our_shape[MAX_DIMS * 24 + 8];
    for (int32_t i = 0; i < count; i++) {
        const drug_tensor_info *t = &tensors[i].info;
        const array *a = find(arrays, n, prefix, t->name);
        if (!a) {
            if (i < required) append(out, len, "; missing %s '%s'", kind, t->name);
            continue;
        }
        int same = a->ndim == t->ndim && strcmp(a->descr, t->dtype) == 0;
        for (int32_t d = 0; same && d < a->ndim; d++) same = a->shape[d] == t->shape[d];
        if (same) continue;
        shape_repr(file_shape, sizeof file_shape, a->ndim, a->shape);
        shape_repr(our_shape, sizeof our_shape, t->ndim, t->shape);
        append(out, len, "; %s '%s' is %s %s in the file, %s %s here", kind, t->name, file_shape, a->descr, our_shape,
               t->dtype);
    }
    size_t plen = strlen(prefix);
    for (size_t j = 0; strict && j < n; j++) {
        if (strncmp(arrays[j].key, prefix, plen) != 0) continue;
        int known = 0;
        for (int32_t i = 0; i < count && !known; i++) known = !strcmp(arrays[j].key + plen, tensors[i].info.name);
        if (!known) append(out, len, "; unexpected %s '%s'", kind, arrays[j].key + plen);
    }
}

/* Append to `out` every member that has no place in a checkpoint, appears twice, or is missing
   (meta/step): the names runtime/checkpoint.py accepts. Libraries have no state buffers, so with
   `strict` (a train step) a buffer/ member is unexpected; a predictor ignores it. */
static void check_names(char *out, size_t len, const array *arrays, size_t n, int strict) {
    int has_step = 0;
    for (size_t i = 0; i < n; i++) {
        const char *key = arrays[i].key;
        int buffer = !strncmp(key, "buffer/", 7) && key[7];
        int known = !strcmp(key, "meta/step") || !strcmp(key, "meta/format") || !strcmp(key, "meta/sha256") ||
                    (!strncmp(key, "param/", 6) && key[6]) || (!strncmp(key, "state/", 6) && key[6]) || buffer;
        if (!known) append(out, len, "; unexpected member '%s'", key);
        if (buffer && strict) append(out, len, "; unexpected state buffer '%s'", key + 7);
        has_step |= !strcmp(key, "meta/step");
        for (size_t j = 0; j < i; j++)
            if (!strcmp(arrays[j].key, key)) append(out, len, "; member '%s' appears twice", key);
    }
    if (!has_step) append(out, len, "; meta/step is missing");
}

/* The hex digest a meta/sha256 array holds ('<U64'), or "" if it holds something else. */
static void stored_hex(const array *a, char hex[65]) {
    hex[0] = '\0';
    if (a->descr[1] != 'U' || a->ndim != 0 || a->nbytes != 256) return;
    const unsigned char *p = a->data;
    for (int i = 0; i < 64; i++) hex[i] = (char)(p[4 * i] < 128 && !p[4 * i + 1] && !p[4 * i + 2] && !p[4 * i + 3] ? p[4 * i] : '?');
    hex[64] = '\0';
}

int drugrt_load(drugrt_handle *h, const char *where, const char *path) {
    const drugrt_model *m = h->model;
    h->error[0] = '\0';
    if (!path) return drugrt_fail(h, DRUG_ERR_NULL, "%s: path is NULL", where);
    size_t size = 0, count = 0;
    unsigned char *file = read_file(path, &size);
    if (!file) return drugrt_fail(h, DRUG_ERR_IO, "%s: cannot read checkpoint '%s': %s", where, path, strerror(errno));
    drugrt_zip_entry *entries = NULL;
    array *arrays = NULL;
    char why[512] = "", problems[DRUGRT_ERROR_LEN] = "";
    int status = DRUG_ERR_CHECKPOINT;
    if (drugrt_zip_parse(file, size, &entries, &count, why, sizeof why) != 0) {
        drugrt_fail(h, status, "%s: checkpoint '%s' is unreadable or truncated: %s", where, path, why);
        goto done;
    }
    if (!(arrays = calloc(count + 1, sizeof *arrays))) {
        status = drugrt_fail(h, DRUG_ERR_MEMORY, "%s: out of memory reading '%s'", where, path);
        goto done;
    }
    for (size_t i = 0; i < count; i++) {
        size_t len = strlen(entries[i].name);
        arrays[i].key = entries[i].name;
        if (len < 4 || strcmp(entries[i].name + len - 4, ".npy") != 0 ||
            npy_parse(entries[i].data, entries[i].size, &arrays[i], why, sizeof why) != 0) {
            if (!why[0]) snprintf(why, sizeof why, "not an .npy member");
            drugrt_fail(h, status, "%s: checkpoint '%s' member '%s': %s", where, path, entries[i].name, why);
            goto done;
        }
        entries[i].name[len - 4] = '\0'; /* the key, as np.load names it */
    }
    const array *format = find(arrays, count, "meta/", "format"), *step = find(arrays, count, "meta/", "step");
    array *stored = (array *)find(arrays, count, "meta/", "sha256");
    if (!stored || !format || !utf32_equals(format, FORMAT)) {
        drugrt_fail(h, status, "%s: '%s' is not a drug checkpoint", where, path);
        goto done;
    }
    int strict = m->programs[0] != NULL; /* a train step needs its exact parameters and state */
    if (check_names(problems, sizeof problems, arrays, count, strict), problems[0]) {
        drugrt_fail(h, status, "%s: checkpoint '%s' does not fit this model; nothing was loaded: %s", where, path,
                     problems + 2);
        goto done;
    }
    char expected[65], hex[65];
    int64_t step_value = -1;
    stored_hex(stored, hex);
    if (step && !strcmp(step->descr, "<i8") && step->ndim == 0) memcpy(&step_value, step->data, sizeof step_value);
    array swap = *stored; /* digest every array but the hash itself: move it last */
    *stored = arrays[count - 1];
    arrays[count - 1] = swap;
    digest(arrays, count - 1, expected); /* sorts arrays[0, count - 1): earlier pointers into it are stale */
    if (strcmp(hex, expected) != 0) {
        drugrt_fail(h, status, "%s: checkpoint '%s' is corrupted: checksum mismatch", where, path);
        goto done;
    }
    if (step_value < 0) {
        drugrt_fail(h, status, "%s: checkpoint '%s': meta/step must be a non-negative int64 scalar", where, path);
        goto done;
    }
    check_fit(problems, sizeof problems, arrays, count, "param/", "parameter", m->params, m->nparams, m->saved_params,
              strict);
    if (strict)
        check_fit(problems, sizeof problems, arrays, count, "state/", "optimizer state", m->states, m->nstates,
                  m->nstates, 1);
    if (problems[0]) {
        drugrt_fail(h, status, "%s: checkpoint '%s' does not fit this model; nothing was loaded: %s", where, path,
                     problems + 2);
        goto done;
    }
    for (int32_t i = 0; i < m->nparams; i++) {
        const array *a = find(arrays, count, "param/", m->params[i].info.name);
        if (a) memcpy(h->params[i], a->data, (size_t)a->nbytes);
    }
    for (int32_t i = 0; strict && i < m->nstates; i++)
        memcpy(h->states[i], find(arrays, count, "state/", m->states[i].info.name)->data,
               (size_t)(m->states[i].info.size * m->states[i].itemsize));
    if (strict) h->step = step_value;
    status = DRUG_OK;
done:
    drugrt_zip_free(entries, count);
    free(arrays);
    free(file);
    return status;
}
