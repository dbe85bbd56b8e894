#include "onnx_meta.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MODEL_METADATA_PROPS = 14, ENTRY_KEY = 1, ENTRY_VALUE = 2 };
enum { WIRE_VARINT = 0, WIRE_I64 = 1, WIRE_LEN = 2, WIRE_I32 = 5 };

typedef struct {
    const unsigned char *p, *end;
} cursor;

static int read_varint(cursor *c, uint64_t *v) {
    uint64_t out = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (c->p >= c->end) return -1;
        unsigned char b = *c->p++;
        out |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = out;
            return 0;
        }
    }
    return -1;
}

/* Read one field's tag; for WIRE_LEN also its payload as a sub-cursor, else skip the value. */
static int next_field(cursor *c, unsigned *field, unsigned *wire, cursor *payload) {
    uint64_t tag, len;
    if (read_varint(c, &tag)) return -1;
    *field = (unsigned)(tag >> 3);
    *wire = (unsigned)(tag & 7);
    switch (*wire) {
    case WIRE_VARINT:
        return read_varint(c, &len);
    case WIRE_I64:
    case WIRE_I32: {
        size_t n = *wire == WIRE_I64 ? 8 : 4;
        if ((size_t)(c->end - c->p) < n) return -1;
        c->p += n;
        return 0;
    }
    case WIRE_LEN:
        if (read_varint(c, &len) || len > (uint64_t)(c->end - c->p)) return -1;
        payload->p = c->p;
        payload->end = c->p + len;
        c->p += len;
        return 0;
    default: /* groups (3, 4) are not used by ONNX; anything else is not protobuf */
        return -1;
    }
}

static char *copy_string(cursor s) {
    size_t n = (size_t)(s.end - s.p);
    char *out = malloc(n + 1);
    if (out) {
        memcpy(out, s.p, n);
        out[n] = '\0';
    }
    return out;
}

static int parse_entry(cursor c, onnx_meta_entry *entry) {
    cursor key = {c.p, c.p}, value = {c.p, c.p}, payload;
    unsigned field, wire;
    while (c.p < c.end) {
        if (next_field(&c, &field, &wire, &payload)) return -1;
        if (wire == WIRE_LEN && field == ENTRY_KEY) key = payload;
        if (wire == WIRE_LEN && field == ENTRY_VALUE) value = payload;
    }
    entry->key = copy_string(key);
    entry->value = copy_string(value);
    return entry->key && entry->value ? 0 : -2;
}

int onnx_meta_parse(const unsigned char *buf, size_t size, onnx_meta *out, char *why, size_t why_size) {
    cursor c = {buf, buf + size}, payload;
    unsigned field, wire;
    size_t count = 0, i = 0;
    out->entries = NULL;
    out->count = 0;
    while (c.p < c.end) { /* first pass: count, and check the whole file is well formed */
        if (next_field(&c, &field, &wire, &payload)) {
            snprintf(why, why_size, "not an ONNX protobuf (bad field at byte %zu)", (size_t)(c.p - buf));
            return -1;
        }
        count += field == MODEL_METADATA_PROPS && wire == WIRE_LEN;
    }
    out->entries = count ? calloc(count, sizeof *out->entries) : NULL;
    if (count && !out->entries) {
        snprintf(why, why_size, "out of memory reading the metadata");
        return -1;
    }
    out->count = count;
    c.p = buf;
    while (c.p < c.end && i < count) {
        next_field(&c, &field, &wire, &payload); /* cannot fail: checked above */
        if (field != MODEL_METADATA_PROPS || wire != WIRE_LEN) continue;
        int rc = parse_entry(payload, &out->entries[i++]);
        if (rc) {
            onnx_meta_free(out);
            snprintf(why, why_size, rc == -2 ? "out of memory reading the metadata"
                                             : "malformed metadata_props entry");
            return -1;
        }
    }
    return 0;
}

const char *onnx_meta_get(const onnx_meta *meta, const char *key) {
    for (size_t i = meta->count; i-- > 0;) /* the last entry wins, as in a protobuf map */
        if (strcmp(meta->entries[i].key, key) == 0) return meta->entries[i].value;
    return NULL;
}

void onnx_meta_free(onnx_meta *meta) {
    for (size_t i = 0; i < meta->count; i++) {
        free(meta->entries[i].key);
        free(meta->entries[i].value);
    }
    free(meta->entries);
    meta->entries = NULL;
    meta->count = 0;
}
