#include "npy.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define RESAVE "; re-save it with numpy.save"
#define MAX_HEADER (1u << 20) /* numpy writes < 64 KiB; anything near this is not an array header */

/* A one-line, printable reason: it may quote bytes of a damaged header. */
static int reason(char *why, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, size, fmt, ap);
    va_end(ap);
    for (char *p = why; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f) *p = '?';
    return -1;
}

typedef struct {
    const char *p;
} lexer;

static void skip_space(lexer *x) {
    while (*x->p == ' ' || *x->p == '\t' || *x->p == '\n') x->p++;
}

/* A quoted Python string literal without escapes, copied into out[0..size). */
static int lex_string(lexer *x, char *out, size_t size) {
    skip_space(x);
    char quote = *x->p;
    if (quote != '\'' && quote != '"') return -1;
    const char *end = strchr(x->p + 1, quote);
    if (!end || (size_t)(end - x->p - 1) >= size) return -1;
    memcpy(out, x->p + 1, (size_t)(end - x->p - 1));
    out[end - x->p - 1] = '\0';
    x->p = end + 1;
    return 0;
}

static int lex_char(lexer *x, char c) {
    skip_space(x);
    if (*x->p != c) return -1;
    x->p++;
    return 0;
}

static int parse_shape(lexer *x, npy_header *h) {
    if (lex_char(x, '(')) return -1;
    h->rank = 0;
    for (;;) {
        skip_space(x);
        if (*x->p == ')') break;
        if (!isdigit((unsigned char)*x->p) || h->rank == NPY_MAX_RANK) return -1;
        char *end;
        unsigned long long v = strtoull(x->p, &end, 10);
        if (end - x->p > 19) return -1; /* more digits than any uint64 */
        h->shape[h->rank++] = v;
        x->p = end;
        skip_space(x);
        if (*x->p == ',') x->p++;
        else if (*x->p != ')') return -1;
    }
    x->p++;
    return 0;
}

static int parse_descr(const char *descr, npy_header *h, char *why, size_t size) {
    static const struct {
        const char *code;
        npy_dtype dtype;
        size_t itemsize;
    } known[] = {{"f4", NPY_F4, 4}, {"f8", NPY_F8, 8}, {"i2", NPY_I2, 2}, {"u1", NPY_U1, 1}, {"u2", NPY_U2, 2}};
    char order = descr[0];
    const char *code = order == '<' || order == '|' || order == '=' || order == '>' ? descr + 1 : descr;
    for (size_t i = 0; i < sizeof known / sizeof *known; i++) {
        if (strcmp(code, known[i].code) != 0) continue;
        if (order == '>' && known[i].itemsize > 1)
            return reason(why, size, "big-endian dtype '%s'; save it little-endian (arr.astype('<%s'))", descr,
                          code);
        h->dtype = known[i].dtype;
        h->itemsize = known[i].itemsize;
        return 0;
    }
    return reason(why, size,
                  "dtype '%s' is not supported; save float32 (or float64, int16, uint8, uint16) raw"
                  " intensities", descr);
}

/* The header dict: {'descr': '<f4', 'fortran_order': False, 'shape': (3, 394, 394), } */
static int parse_dict(const char *text, npy_header *h, char *why, size_t size) {
    lexer x = {text};
    char key[32], descr[32] = "";
    int seen = 0, fortran = -1;
    if (lex_char(&x, '{')) return reason(why, size, "malformed NPY header (no dict)" RESAVE);
    for (;;) {
        skip_space(&x);
        if (*x.p == '}') break;
        if (lex_string(&x, key, sizeof key) || lex_char(&x, ':'))
            return reason(why, size, "malformed NPY header near '%.20s'" RESAVE, x.p);
        skip_space(&x);
        if (strcmp(key, "descr") == 0 && !lex_string(&x, descr, sizeof descr)) seen |= 1;
        else if (strcmp(key, "fortran_order") == 0 && (!strncmp(x.p, "False", 5) || !strncmp(x.p, "True", 4))) {
            fortran = *x.p == 'T';
            x.p += fortran ? 4 : 5;
            seen |= 2;
        } else if (strcmp(key, "shape") == 0 && !parse_shape(&x, h)) seen |= 4;
        else return reason(why, size, "malformed NPY header: unexpected entry '%s'" RESAVE, key);
        skip_space(&x);
        if (*x.p == ',') x.p++;
        else if (*x.p != '}') return reason(why, size, "malformed NPY header near '%.20s'" RESAVE, x.p);
    }
    if (seen != 7) return reason(why, size, "NPY header lacks descr, fortran_order or shape" RESAVE);
    if (fortran) return reason(why, size, "Fortran-order array; save it C-ordered (numpy.ascontiguousarray)");
    return parse_descr(descr, h, why, size);
}

int npy_read_header(FILE *f, uint64_t file_size, npy_header *h, char *why, size_t size) {
    unsigned char pre[12];
    if (fread(pre, 1, 8, f) != 8 || memcmp(pre, "\x93NUMPY", 6) != 0)
        return reason(why, size, "not an NPY file (no \\x93NUMPY magic); save it with numpy.save");
    unsigned major = pre[6];
    if (major < 1 || major > 3)
        return reason(why, size, "NPY format version %u.%u is not supported (1-3 are)" RESAVE, major, pre[7]);
    uint64_t header_len, prefix = major == 1 ? 10 : 12;
    if (fread(pre + 8, 1, (size_t)prefix - 8, f) != prefix - 8)
        return reason(why, size, "truncated NPY header; copy the file again");
    header_len = (uint64_t)pre[8] | (uint64_t)pre[9] << 8;
    if (major > 1) header_len |= (uint64_t)pre[10] << 16 | (uint64_t)pre[11] << 24;
    if (header_len > MAX_HEADER || prefix + header_len > file_size)
        return reason(why, size,
                      "truncated or corrupt NPY header (it claims %llu bytes, the file has %llu); copy the file again",
                      (unsigned long long)header_len, (unsigned long long)file_size);
    char *text = malloc((size_t)header_len + 1);
    if (!text) return reason(why, size, "out of memory reading the NPY header");
    int rc = fread(text, 1, (size_t)header_len, f) == header_len
                 ? 0
                 : reason(why, size, "truncated NPY header; copy the file again");
    text[header_len] = '\0';
    if (!rc && strlen(text) != header_len) rc = reason(why, size, "NPY header contains a NUL byte" RESAVE);
    if (!rc) rc = parse_dict(text, h, why, size);
    free(text);
    if (rc) return rc;
    h->data_offset = prefix + header_len;
    uint64_t items = 1;
    for (int i = 0; i < h->rank; i++) {
        if (h->shape[i] && items > UINT64_MAX / h->shape[i])
            return reason(why, size, "the header's shape overflows (a lying header); re-save the array");
        items *= h->shape[i];
    }
    if (items > UINT64_MAX / h->itemsize)
        return reason(why, size, "the header's shape overflows (a lying header); re-save the array");
    h->data_bytes = items * h->itemsize;
    uint64_t have = file_size - h->data_offset;
    if (have < h->data_bytes)
        return reason(why, size,
                      "truncated: the header promises %llu bytes of data, the file holds %llu; copy it again",
                      (unsigned long long)h->data_bytes, (unsigned long long)have);
    if (have > h->data_bytes)
        return reason(why, size, "%llu bytes beyond the data the header describes (a lying header); re-save the array",
                      (unsigned long long)(have - h->data_bytes));
    return 0;
}

void npy_shape_text(const npy_header *h, char *out, size_t size) {
    size_t n = (size_t)snprintf(out, size, "(");
    for (int i = 0; i < h->rank && n < size; i++)
        n += (size_t)snprintf(out + n, size - n, "%s%llu", i ? ", " : "", (unsigned long long)h->shape[i]);
    if (n < size) snprintf(out + n, size - n, h->rank == 1 ? ",)" : ")");
}

int npy_write_u8_header(FILE *f, const uint64_t *shape, int rank) {
    char dict[256];
    int n = snprintf(dict, sizeof dict, "{'descr': '|u1', 'fortran_order': False, 'shape': (");
    for (int i = 0; i < rank; i++)
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%llu%s", (unsigned long long)shape[i],
                      rank == 1 || i + 1 < rank ? ", " : "");
    n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    size_t total = 10 + (size_t)n + 1, pad = (64 - total % 64) % 64; /* data aligned to 64 bytes */
    size_t header_len = (size_t)n + pad + 1;
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(header_len & 0xff),
                             (unsigned char)(header_len >> 8)};
    if (fwrite(pre, 1, 10, f) != 10 || fwrite(dict, 1, (size_t)n, f) != (size_t)n) return -1;
    for (size_t i = 0; i < pad; i++)
        if (fputc(' ', f) == EOF) return -1;
    return fputc('\n', f) == EOF ? -1 : 0;
}

void npy_to_float(npy_dtype dtype, const void *raw, float *out, size_t count) {
    /* memcpy per item: the raw buffer need not be aligned for the source type */
    const unsigned char *p = raw;
    for (size_t i = 0; i < count; i++) {
        switch (dtype) {
        case NPY_F4: memcpy(&out[i], p + 4 * i, 4); break;
        case NPY_F8: { double v; memcpy(&v, p + 8 * i, 8); out[i] = (float)v; break; }
        case NPY_I2: { int16_t v; memcpy(&v, p + 2 * i, 2); out[i] = (float)v; break; }
        case NPY_U1: out[i] = (float)p[i]; break;
        case NPY_U2: { uint16_t v; memcpy(&v, p + 2 * i, 2); out[i] = (float)v; break; }
        }
    }
}
