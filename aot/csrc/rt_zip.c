/* The part of the zip format that .npz checkpoints use: np.savez writes stored (uncompressed)
   entries with zip64 local headers; we read those (sizes from the central directory, zip64
   extras understood) and write plain stored entries, which np.load reads. CRC-32s are checked. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "drug_rt.h"

#define LOCAL_SIG 0x04034b50u
#define CENTRAL_SIG 0x02014b50u
#define END_SIG 0x06054b50u
#define END64_SIG 0x06064b50u
#define LOCATOR64_SIG 0x07064b50u
#define DOS_DATE_1980_01_01 0x21

static uint32_t crc32(const unsigned char *p, size_t n, uint32_t crc) {
    static const uint32_t nibble[16] = {0x00000000, 0x1db71064, 0x3b6e20c8, 0x26d930ac, 0x76dc4190, 0x6b6b51f4,
                                        0x4db26158, 0x5005713c, 0xedb88320, 0xf00f9344, 0xd6d6a3e8, 0xcb61b38c,
                                        0x9b64c2b0, 0x86d3d2d4, 0xa00ae278, 0xbdbdf21c};
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        crc = (crc >> 4) ^ nibble[crc & 15];
        crc = (crc >> 4) ^ nibble[crc & 15];
    }
    return ~crc;
}

static uint64_t le(const unsigned char *p, int bytes) {
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

#define FAIL(...)                                    \
    do {                                             \
        snprintf(error, error_len, __VA_ARGS__);     \
        drugrt_zip_free(list, found);                  \
        return -1;                                   \
    } while (0)

/* Sizes and offset of a central directory entry, with its zip64 extra field applied. */
static int zip64_fields(const unsigned char *extra, size_t len, uint64_t *size, uint64_t *csize, uint64_t *offset) {
    for (size_t at = 0; at + 4 <= len;) {
        size_t id = (size_t)le(extra + at, 2), n = (size_t)le(extra + at + 2, 2);
        if (at + 4 + n > len) return -1;
        if (id == 1) {
            const unsigned char *p = extra + at + 4, *end = p + n;
            uint64_t *fields[3] = {size, csize, offset};
            for (int i = 0; i < 3; i++) {
                if (*fields[i] != 0xffffffffu) continue;
                if (p + 8 > end) return -1;
                *fields[i] = le(p, 8);
                p += 8;
            }
        }
        at += 4 + n;
    }
    return 0;
}

int drugrt_zip_parse(const unsigned char *file, size_t n, drugrt_zip_entry **entries, size_t *count, char *error,
                   size_t error_len) {
    drugrt_zip_entry *list = NULL;
    size_t found = 0;
    *entries = NULL;
    *count = 0;
    if (n < 22) FAIL("not a zip file (%zu bytes): truncated or not an .npz", n);
    size_t end = n - 22, lowest = end > 65535 ? end - 65535 : 0; /* the end record may carry a comment */
    while (le(file + end, 4) != END_SIG) {
        if (end == lowest) FAIL("not a zip file (no end of central directory): truncated or not an .npz");
        end--;
    }
    uint64_t entries_total = le(file + end + 10, 2), cd_size = le(file + end + 12, 4), cd_offset = le(file + end + 16, 4);
    if (entries_total == 0xffff || cd_size == 0xffffffffu || cd_offset == 0xffffffffu) {
        if (end < 20 || le(file + end - 20, 4) != LOCATOR64_SIG) FAIL("zip64 end record locator missing");
        uint64_t at = le(file + end - 12, 8);
        if (at > n || n - at < 56 || le(file + at, 4) != END64_SIG) FAIL("zip64 end record missing or out of range");
        entries_total = le(file + at + 32, 8);
        cd_size = le(file + at + 40, 8);
        cd_offset = le(file + at + 48, 8);
    }
    if (cd_offset > n || cd_size > n - cd_offset || entries_total > cd_size / 46)
        FAIL("zip central directory out of range: the file is truncated or damaged");
    list = calloc((size_t)entries_total + 1, sizeof *list); /* + 1: see drugrt_zip_free */
    if (!list) FAIL("out of memory");
    const unsigned char *p = file + cd_offset, *cd_end = p + cd_size;
    for (; found < entries_total; found++) {
        if (p + 46 > cd_end || le(p, 4) != CENTRAL_SIG) FAIL("zip central directory entry %zu is damaged", found);
        uint64_t flags = le(p + 8, 2), method = le(p + 10, 2), crc = le(p + 16, 4);
        uint64_t csize = le(p + 20, 4), size = le(p + 24, 4), offset = le(p + 42, 4);
        size_t name_len = (size_t)le(p + 28, 2), extra_len = (size_t)le(p + 30, 2), comment_len = (size_t)le(p + 32, 2);
        if (p + 46 + name_len + extra_len + comment_len > cd_end) FAIL("zip central directory entry %zu is damaged", found);
        if (!(list[found].name = malloc(name_len + 1))) FAIL("out of memory");
        memcpy(list[found].name, p + 46, name_len);
        list[found].name[name_len] = '\0';
        if (zip64_fields(p + 46 + name_len, extra_len, &size, &csize, &offset))
            FAIL("zip entry '%s' has a damaged zip64 field", list[found].name);
        if (flags & 1) FAIL("zip entry '%s' is encrypted", list[found].name);
        if (method != 0 || csize != size)
            FAIL("zip entry '%s' is compressed (method %llu); checkpoints are stored uncompressed, as np.savez writes "
                 "them", list[found].name, (unsigned long long)method);
        if (offset > n || n - offset < 30 || le(file + offset, 4) != LOCAL_SIG)
            FAIL("zip entry '%s': local header missing or out of range", list[found].name);
        uint64_t data = offset + 30 + le(file + offset + 26, 2) + le(file + offset + 28, 2);
        if (data > n || size > n - data) FAIL("zip entry '%s' is truncated", list[found].name);
        if (crc32(file + data, (size_t)size, 0) != crc) FAIL("zip entry '%s' fails its CRC-32 check", list[found].name);
        list[found].data = file + data;
        list[found].size = size;
        p += 46 + name_len + extra_len + comment_len;
    }
    *entries = list;
    *count = found;
    return 0;
}

/* `entries` has count + 1 elements: the one after the last parsed may hold a name when parsing failed. */
void drugrt_zip_free(drugrt_zip_entry *entries, size_t count) {
    for (size_t i = 0; entries && i < count + 1; i++) free(entries[i].name);
    free(entries);
}

/* ---- writer ---- */

typedef struct {
    char *name;
    uint32_t crc, size, offset;
} record;

struct drugrt_zip_writer {
    FILE *f;
    uint64_t offset;
    record *records;
    size_t count, capacity;
    int failed;
};

static void put(drugrt_zip_writer *w, uint64_t value, int bytes) {
    unsigned char b[8];
    for (int i = 0; i < bytes; i++) b[i] = (unsigned char)(value >> (8 * i));
    if (fwrite(b, 1, (size_t)bytes, w->f) != (size_t)bytes) w->failed = 1;
    w->offset += (uint64_t)bytes;
}

static void put_bytes(drugrt_zip_writer *w, const void *data, size_t n) {
    if (n && fwrite(data, 1, n, w->f) != n) w->failed = 1;
    w->offset += n;
}

/* The fields a local header and its central directory entry share: flags, method (stored), time,
   date, CRC, both sizes, name length. */
static void put_entry_fields(drugrt_zip_writer *w, const record *r, size_t name_len) {
    put(w, 0, 2);
    put(w, 0, 2);
    put(w, 0, 2);
    put(w, DOS_DATE_1980_01_01, 2);
    put(w, r->crc, 4);
    put(w, r->size, 4);
    put(w, r->size, 4);
    put(w, name_len, 2);
}

drugrt_zip_writer *drugrt_zip_open(int fd) {
    drugrt_zip_writer *w = calloc(1, sizeof *w);
    if (w && !(w->f = fdopen(fd, "wb"))) {
        free(w);
        return NULL;
    }
    return w;
}

int drugrt_zip_add(drugrt_zip_writer *w, const char *name, const void *head, size_t head_len, const void *body,
                 size_t body_len) {
    uint64_t size = (uint64_t)head_len + body_len;
    size_t name_len = strlen(name);
    if (size >= 0xffffffffu || w->offset >= 0xffffffffu || name_len > 0xffff) return -1; /* no zip64 writer */
    if (w->count == w->capacity) {
        size_t capacity = w->capacity ? 2 * w->capacity : 16;
        record *grown = realloc(w->records, capacity * sizeof *grown);
        if (!grown) return -1;
        w->records = grown;
        w->capacity = capacity;
    }
    record *r = &w->records[w->count];
    if (!(r->name = malloc(name_len + 1))) return -1;
    memcpy(r->name, name, name_len + 1);
    r->crc = crc32(body, body_len, crc32(head, head_len, 0));
    r->size = (uint32_t)size;
    r->offset = (uint32_t)w->offset;
    w->count++;
    put(w, LOCAL_SIG, 4);
    put(w, 20, 2); /* version needed: 2.0 */
    put_entry_fields(w, r, name_len);
    put(w, 0, 2); /* extra */
    put_bytes(w, name, name_len);
    put_bytes(w, head, head_len);
    put_bytes(w, body, body_len);
    return w->failed ? -1 : 0;
}

int drugrt_zip_close(drugrt_zip_writer *w) {
    uint64_t cd_offset = w->offset;
    for (size_t i = 0; i < w->count; i++) {
        const record *r = &w->records[i];
        size_t name_len = strlen(r->name);
        put(w, CENTRAL_SIG, 4);
        put(w, 20, 2); /* made by: 2.0 */
        put(w, 20, 2); /* needed: 2.0 */
        put_entry_fields(w, r, name_len);
        put(w, 0, 2);  /* extra */
        put(w, 0, 2);  /* comment */
        put(w, 0, 2);  /* disk */
        put(w, 0, 2);  /* internal attributes */
        put(w, 0, 4);  /* external attributes */
        put(w, r->offset, 4);
        put_bytes(w, r->name, name_len);
    }
    uint64_t cd_size = w->offset - cd_offset;
    int too_big = w->count >= 0xffff || w->offset >= 0xffffffffu;
    put(w, END_SIG, 4);
    put(w, 0, 2);
    put(w, 0, 2);
    put(w, w->count, 2);
    put(w, w->count, 2);
    put(w, cd_size, 4);
    put(w, cd_offset, 4);
    put(w, 0, 2);
    int failed = w->failed || too_big || fflush(w->f) != 0 || fsync(fileno(w->f)) != 0;
    failed |= fclose(w->f) != 0;
    for (size_t i = 0; i < w->count; i++) free(w->records[i].name);
    free(w->records);
    free(w);
    return failed ? -1 : 0;
}
