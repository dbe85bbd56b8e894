/* libedgeseg: an edgeseg ONNX model on OpenVINO's CPU plugin, through its C API (see edgeseg.h). */
#define _POSIX_C_SOURCE 200809L

#include "edgeseg.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openvino/c/openvino.h>

#include "onnx_meta.h"

#define FORMAT "edgeseg-onnx-v1"
#define MAX_CLASSES 256 /* labels are uint8 */
#define REEXPORT "re-export it with `edgeseg export`"
#define SHAPE_SLOTS 2 /* compiled input shapes kept: a volume's batch and its last, smaller one */
#define PROBE_SIDE 16 /* the shape compiled at open (or min_size, if larger): checks the file */

/* The model compiled for one static input shape. OpenVINO's CPU plugin runs a fully static graph
 * much faster than the file's dynamic one (the shipped int8 file at 394x394, 2 threads: 25.6 ms
 * against 40.8 ms in Python on the 2-core Xeon of the README), so each new (n, h, w) is compiled
 * once, at its first edgeseg_segment, and the least recently used slot gives way. */
typedef struct {
    int64_t dims[4];
    ov_compiled_model_t *compiled;
    ov_infer_request_t *request;
    unsigned long long used; /* the handle's clock at its last use; 0 = empty */
} shape_slot;

struct edgeseg_model {
    ov_core_t *core;
    ov_model_t *model; /* read once at open, reshaped for each new shape before it is compiled */
    ov_property_t props[3];
    size_t nprops;
    char nthreads[16];
    shape_slot slots[SHAPE_SLOTS];
    unsigned long long clock;
    int dynamic; /* EDGESEG_DYNAMIC_SHAPES: one slot, compiled as read, for every shape */
    onnx_meta meta;
    char *class_names[MAX_CLASSES]; /* parsed from edgeseg.class_names */
    int num_classes, min_size;
    double pixel_spacing_mm;
    char backend[128];
    char error[EDGESEG_ERROR_SIZE];
};

/* Write a one-line message into buf (newlines from OpenVINO become spaces). */
static void vformat(char *buf, size_t size, const char *fmt, va_list ap) {
    if (!buf || !size) return;
    vsnprintf(buf, size, fmt, ap);
    for (char *p = buf; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
}

static edgeseg_status fail(edgeseg_model *m, edgeseg_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vformat(m->error, sizeof m->error, fmt, ap);
    va_end(ap);
    return status;
}

/* OpenVINO's reason for the call that just failed, copied into buf. Its C API keeps one last
 * message per process (not per thread) and hands out a copy that must be freed. */
static const char *ov_reason(ov_status_e status, char *buf, size_t size) {
    const char *msg = ov_get_last_err_msg();
    snprintf(buf, size, "%s", msg && *msg ? msg : ov_get_error_info(status));
    if (msg) ov_free(msg);
    return buf;
}

static int read_file(const char *path, unsigned char **data, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    long end = -1;
    if (fseek(f, 0, SEEK_END) == 0) end = ftell(f);
    if (end < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return -1;
    }
    *size = (size_t)end;
    *data = malloc(*size ? *size : 1);
    if (!*data || fread(*data, 1, *size, f) != *size) {
        free(*data);
        *data = NULL;
        fclose(f);
        return -1;
    }
    fclose(f);
    return 0;
}

/* Parse a JSON array of strings (edgeseg.class_names) into m->class_names. */
static int parse_class_names(edgeseg_model *m, const char *json) {
    const char *p = json;
    int n = 0;
    while (*p == ' ') p++;
    if (*p++ != '[') return -1;
    for (;;) {
        while (*p == ' ') p++;
        if (*p == ']' && n == 0) return 0;
        if (*p++ != '"' || n == MAX_CLASSES) return -1;
        size_t len = 0;
        char *name = malloc(strlen(p) + 1);
        if (!name) return -1;
        m->class_names[n++] = name;
        while (*p != '"') {
            if (*p == '\0' || (unsigned char)*p < 0x20) return -1;
            if (*p == '\\') { /* names are ASCII identifiers; keep simple escapes only */
                p++;
                if (*p != '"' && *p != '\\' && *p != '/') return -1;
            }
            name[len++] = *p++;
        }
        name[len] = '\0';
        p++;
        while (*p == ' ') p++;
        if (*p == ']') break;
        if (*p++ != ',') return -1;
    }
    p++;
    while (*p == ' ') p++;
    m->num_classes = n;
    return *p == '\0' ? 0 : -1;
}

static int parse_int(const char *s, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || end == s || *end || errno || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

/* Check the edgeseg.* metadata the way edgeseg.runtime.runners.read_model_info does. */
static edgeseg_status check_metadata(edgeseg_model *m, const char *path, edgeseg_precision precision) {
    static const char *required[] = {"edgeseg.format", "edgeseg.class_names", "edgeseg.num_classes",
                                     "edgeseg.in_channels", "edgeseg.min_size"};
    for (size_t i = 0; i < sizeof required / sizeof *required; i++)
        if (!onnx_meta_get(&m->meta, required[i]))
            return fail(m, EDGESEG_E_MODEL, "%s: not an edgeseg model: metadata lacks %s; " REEXPORT, path,
                        required[i]);
    const char *format = onnx_meta_get(&m->meta, "edgeseg.format");
    if (strcmp(format, FORMAT) != 0)
        return fail(m, EDGESEG_E_MODEL, "%s: model format is '%s', libedgeseg reads '" FORMAT "'; " REEXPORT,
                    path, format);
    int declared, in_channels;
    if (parse_class_names(m, onnx_meta_get(&m->meta, "edgeseg.class_names")) ||
        parse_int(onnx_meta_get(&m->meta, "edgeseg.num_classes"), 2, MAX_CLASSES, &declared) ||
        parse_int(onnx_meta_get(&m->meta, "edgeseg.in_channels"), 1, 1, &in_channels) ||
        parse_int(onnx_meta_get(&m->meta, "edgeseg.min_size"), 1, 1 << 20, &m->min_size) ||
        declared != m->num_classes)
        return fail(m, EDGESEG_E_MODEL,
                    "%s: malformed or inconsistent edgeseg metadata (class_names, num_classes, in_channels 1,"
                    " min_size); " REEXPORT, path);
    const char *spacing = onnx_meta_get(&m->meta, "edgeseg.pixel_spacing_mm");
    if (spacing && *spacing) {
        char *end;
        m->pixel_spacing_mm = strtod(spacing, &end);
        if (end == spacing || *end || !(m->pixel_spacing_mm > 0) || m->pixel_spacing_mm > 1e6)
            return fail(m, EDGESEG_E_MODEL,
                        "%s: metadata edgeseg.pixel_spacing_mm is '%s', expected a positive number of mm; " REEXPORT,
                        path, spacing);
    }
    const char *stored = onnx_meta_get(&m->meta, "edgeseg.precision");
    int is_int8 = stored && strcmp(stored, "int8") == 0;
    if (precision == EDGESEG_INT8 && !is_int8)
        return fail(m, EDGESEG_E_MODEL,
                    "%s: precision int8 needs the int8 QDQ file (X_int8.onnx from `edgeseg export --int8`), this"
                    " one is %s", path, stored ? stored : "of unknown precision");
    if (precision != EDGESEG_INT8 && is_int8)
        return fail(m, EDGESEG_E_MODEL, "%s: this is an int8 QDQ file; open it with precision int8", path);
    return EDGESEG_OK;
}

/* Refuse bf16 with the reason where the CPU plugin does not list it. */
static edgeseg_status check_bf16(edgeseg_model *m) {
    char *caps = NULL, why[EDGESEG_ERROR_SIZE];
    ov_status_e st = ov_core_get_property(m->core, "CPU", "OPTIMIZATION_CAPABILITIES", &caps);
    if (st != OK)
        return fail(m, EDGESEG_E_RUNTIME, "OpenVINO cannot list the CPU's capabilities: %s",
                    ov_reason(st, why, sizeof why));
    int has = 0;
    for (const char *p = caps; (p = strstr(p, "BF16")) != NULL; p += 4)
        has |= (p == caps || p[-1] == ' ') && (p[4] == ' ' || p[4] == '\0');
    edgeseg_status rc = has ? EDGESEG_OK
                            : fail(m, EDGESEG_E_UNSUPPORTED,
                                   "precision bf16: this CPU has no bf16 support (OpenVINO lists: %s); use f32", caps);
    ov_free(caps);
    return rc;
}

/* The model's I/O must be the contract's: float32 `image`, uint8 `labels`. */
static edgeseg_status check_io(edgeseg_model *m, const char *path) {
    static const struct {
        const char *name;
        ov_element_type_e type;
        int input;
    } ports[] = {{"image", F32, 1}, {"labels", U8, 0}};
    for (size_t i = 0; i < 2; i++) {
        ov_output_const_port_t *port = NULL;
        ov_element_type_e type = DYNAMIC;
        ov_status_e st = ports[i].input ? ov_model_const_input_by_name(m->model, ports[i].name, &port)
                                        : ov_model_const_output_by_name(m->model, ports[i].name, &port);
        if (st == OK) st = ov_port_get_element_type(port, &type);
        ov_output_const_port_free(port);
        if (st != OK || type != ports[i].type)
            return fail(m, EDGESEG_E_MODEL, "%s: not an edgeseg model: no %s %s '%s'; " REEXPORT, path,
                        ports[i].type == F32 ? "float32" : "uint8", ports[i].input ? "input" : "output",
                        ports[i].name);
    }
    return EDGESEG_OK;
}

static void describe_backend(edgeseg_model *m, const ov_compiled_model_t *compiled) {
    char *precision = NULL, *threads = NULL;
    ov_version_t version = {0};
    ov_compiled_model_get_property(compiled, "INFERENCE_PRECISION_HINT", &precision);
    ov_compiled_model_get_property(compiled, "INFERENCE_NUM_THREADS", &threads);
    ov_get_openvino_version(&version);
    char number[32] = "?";
    if (version.buildNumber) sscanf(version.buildNumber, "%31[0-9.]", number);
    snprintf(m->backend, sizeof m->backend, "OpenVINO %s CPU, %s, %s threads, %s shapes", number,
             precision ? precision : "?", threads ? threads : "?", m->dynamic ? "dynamic" : "static");
    ov_free(precision);
    ov_free(threads);
    ov_version_free(&version);
}

static void free_slot(shape_slot *slot) {
    if (slot->request) ov_infer_request_free(slot->request);
    if (slot->compiled) ov_compiled_model_free(slot->compiled);
    memset(slot, 0, sizeof *slot);
}

/* The slot holding the model compiled for `dims`, compiling it into the least recently used
 * slot when no slot has it. NULL on failure, with m->error set and *rc the kind of failure. */
static shape_slot *compiled_for(edgeseg_model *m, const int64_t shape_dims[4], edgeseg_status *rc) {
    static const int64_t any[4] = {-1, -1, -1, -1}; /* the dynamic mode's one key */
    const int64_t *dims = m->dynamic ? any : shape_dims;
    shape_slot *slot = &m->slots[0];
    for (size_t i = 0; i < SHAPE_SLOTS; i++) {
        shape_slot *s = &m->slots[i];
        if (s->used && memcmp(s->dims, dims, sizeof s->dims) == 0) {
            s->used = ++m->clock;
            return s;
        }
        if (s->used < slot->used) slot = s; /* an empty slot (0) first, else the oldest */
    }
    free_slot(slot);
    char why[EDGESEG_ERROR_SIZE];
    ov_partial_shape_t shape = {0};
    ov_status_e st = m->dynamic ? OK : ov_partial_shape_create_static(4, dims, &shape);
    if (st == OK && !m->dynamic) {
        st = ov_model_reshape_input_by_name(m->model, "image", shape);
        ov_partial_shape_free(&shape);
    }
    if (st != OK) {
        *rc = fail(m, EDGESEG_E_RUNTIME, "OpenVINO cannot reshape the model to %lldx1x%lldx%lld: %s",
                   (long long)dims[0], (long long)dims[2], (long long)dims[3], ov_reason(st, why, sizeof why));
        return NULL;
    }
    st = ov_core_compile_model_props(m->core, m->model, "CPU", m->nprops, m->props, &slot->compiled);
    if (st != OK) {
        free_slot(slot);
        *rc = fail(m, EDGESEG_E_RUNTIME, "OpenVINO cannot compile the model for CPU at %lldx1x%lldx%lld: %s",
                   (long long)dims[0], (long long)dims[2], (long long)dims[3], ov_reason(st, why, sizeof why));
        return NULL;
    }
    st = ov_compiled_model_create_infer_request(slot->compiled, &slot->request);
    if (st != OK) {
        *rc = fail(m, EDGESEG_E_RUNTIME, "OpenVINO cannot create an infer request: %s",
                   ov_reason(st, why, sizeof why));
        free_slot(slot);
        return NULL;
    }
    memcpy(slot->dims, dims, sizeof slot->dims);
    slot->used = ++m->clock;
    return slot;
}

/* Read the model once; compile it at a small probe shape, which checks the file's I/O and reads
 * back what precision and threads really run. */
static edgeseg_status compile(edgeseg_model *m, const char *path, int threads, edgeseg_precision precision) {
    char why[EDGESEG_ERROR_SIZE];
    ov_status_e st = ov_core_read_model(m->core, path, NULL, &m->model);
    if (st != OK)
        return fail(m, EDGESEG_E_MODEL, "%s: OpenVINO cannot read this model: %s", path,
                    ov_reason(st, why, sizeof why));
    snprintf(m->nthreads, sizeof m->nthreads, "%d", threads);
    /* Explicit precision: OpenVINO's CPU default is bf16 wherever the CPU has it. The int8 file's
     * float layers (ConvTranspose, the normalisation) stay float32. */
    m->props[0] = (ov_property_t){"INFERENCE_PRECISION_HINT", precision == EDGESEG_BF16 ? "bf16" : "f32"};
    m->props[1] = (ov_property_t){"PERFORMANCE_HINT", "LATENCY"};
    m->props[2] = (ov_property_t){"INFERENCE_NUM_THREADS", m->nthreads};
    m->nprops = threads > 0 ? 3 : 2;
    edgeseg_status rc = check_io(m, path);
    if (rc != EDGESEG_OK) return rc;
    int64_t side = m->min_size > PROBE_SIDE ? m->min_size : PROBE_SIDE;
    const int64_t probe[4] = {1, 1, side, side};
    shape_slot *slot = compiled_for(m, probe, &rc);
    if (!slot) {
        char detail[EDGESEG_ERROR_SIZE];
        snprintf(detail, sizeof detail, "%s", m->error);
        return fail(m, rc, "%s: %s", path, detail);
    }
    describe_backend(m, slot->compiled);
    return EDGESEG_OK;
}

static edgeseg_status open_model(edgeseg_model *m, const char *path, int threads, edgeseg_precision precision) {
    unsigned char *bytes = NULL;
    size_t size = 0;
    if (read_file(path, &bytes, &size))
        return fail(m, EDGESEG_E_FILE, "%s: model not found or unreadable (%s); pass an .onnx from `edgeseg export`",
                    path, strerror(errno));
    char why[EDGESEG_ERROR_SIZE];
    int bad = onnx_meta_parse(bytes, size, &m->meta, why, sizeof why);
    free(bytes);
    if (bad) return fail(m, EDGESEG_E_MODEL, "%s: %s; pass an .onnx from `edgeseg export`", path, why);
    edgeseg_status rc = check_metadata(m, path, precision);
    if (rc != EDGESEG_OK) return rc;
    ov_status_e st = ov_core_create(&m->core);
    if (st != OK) return fail(m, EDGESEG_E_RUNTIME, "OpenVINO cannot start: %s", ov_reason(st, why, sizeof why));
    if (precision == EDGESEG_BF16 && (rc = check_bf16(m)) != EDGESEG_OK) return rc;
    return compile(m, path, threads, precision);
}

edgeseg_status edgeseg_open(const char *path, int threads, edgeseg_precision precision, edgeseg_model **out,
                            char *err, size_t err_size) {
    return edgeseg_open_shapes(path, threads, precision, EDGESEG_STATIC_SHAPES, out, err, err_size);
}

edgeseg_status edgeseg_open_shapes(const char *path, int threads, edgeseg_precision precision, edgeseg_shapes shapes,
                                   edgeseg_model **out, char *err, size_t err_size) {
    if (err && err_size) err[0] = '\0';
    if (!out) return EDGESEG_E_ARGUMENT;
    *out = NULL;
    edgeseg_model *m = calloc(1, sizeof *m);
    if (!m) {
        if (err) snprintf(err, err_size, "out of memory opening a model");
        return EDGESEG_E_MEMORY;
    }
    edgeseg_status rc;
    if (!path)
        rc = fail(m, EDGESEG_E_ARGUMENT, "edgeseg_open: path is NULL; pass the .onnx file");
    else if (threads < 0)
        rc = fail(m, EDGESEG_E_ARGUMENT, "%s: threads is %d; pass 0 (OpenVINO's default) or more", path, threads);
    else if (precision != EDGESEG_F32 && precision != EDGESEG_BF16 && precision != EDGESEG_INT8)
        rc = fail(m, EDGESEG_E_ARGUMENT, "%s: unknown precision %d; use EDGESEG_F32, EDGESEG_BF16 or EDGESEG_INT8",
                  path, (int)precision);
    else if (shapes != EDGESEG_STATIC_SHAPES && shapes != EDGESEG_DYNAMIC_SHAPES)
        rc = fail(m, EDGESEG_E_ARGUMENT,
                  "%s: unknown shapes mode %d; use EDGESEG_STATIC_SHAPES or EDGESEG_DYNAMIC_SHAPES", path, (int)shapes);
    else {
        m->dynamic = shapes == EDGESEG_DYNAMIC_SHAPES;
        rc = open_model(m, path, threads, precision);
    }
    if (rc != EDGESEG_OK) {
        if (err && err_size) snprintf(err, err_size, "%s", m->error);
        edgeseg_close(m);
        return rc;
    }
    *out = m;
    return EDGESEG_OK;
}

edgeseg_status edgeseg_segment(edgeseg_model *m, const float *images, size_t n, size_t h, size_t w,
                               uint8_t *labels) {
    if (!m) return EDGESEG_E_ARGUMENT;
    if (!images || !labels) return fail(m, EDGESEG_E_ARGUMENT, "edgeseg_segment: images or labels is NULL");
    if (n < 1 || h < (size_t)m->min_size || w < (size_t)m->min_size)
        return fail(m, EDGESEG_E_ARGUMENT, "edgeseg_segment: %zu slices of %zux%zu; need >= 1 slice of at least %dx%d",
                    n, h, w, m->min_size, m->min_size);
    if (h > INT64_MAX / w || n > INT64_MAX / (h * w) || n * h * w > SIZE_MAX / sizeof(float))
        return fail(m, EDGESEG_E_ARGUMENT, "edgeseg_segment: %zux%zux%zu is too large", n, h, w);
    size_t bad = edgeseg_find_nonfinite(images, n, h, w);
    if (bad < n)
        return fail(m, EDGESEG_E_NONFINITE, "edgeseg_segment: slice %zu holds NaN or Inf; fix or mask the scan", bad);
    int64_t dims[4] = {(int64_t)n, 1, (int64_t)h, (int64_t)w};
    edgeseg_status rc = EDGESEG_OK;
    shape_slot *slot = compiled_for(m, dims, &rc);
    if (!slot) return rc;
    ov_shape_t shape = {4, dims}; /* on the stack: OpenVINO copies the dims */
    ov_tensor_t *input = NULL, *output = NULL;
    char why[EDGESEG_ERROR_SIZE];
    /* OpenVINO's C API takes a non-const pointer; it only reads an input tensor. */
    void *host = (void *)(uintptr_t)images;
    ov_status_e st = ov_tensor_create_from_host_ptr(F32, shape, host, &input);
    if (st == OK) st = ov_infer_request_set_tensor(slot->request, "image", input);
    if (st == OK) st = ov_infer_request_infer(slot->request);
    ov_tensor_free(input);
    if (st != OK) return fail(m, EDGESEG_E_RUNTIME, "OpenVINO inference failed: %s", ov_reason(st, why, sizeof why));
    st = ov_infer_request_get_tensor(slot->request, "labels", &output);
    size_t count = 0;
    void *data = NULL;
    if (st == OK) st = ov_tensor_get_size(output, &count);
    if (st == OK) st = ov_tensor_data(output, &data);
    if (st == OK && count == n * h * w) memcpy(labels, data, count);
    ov_tensor_free(output);
    if (st != OK)
        return fail(m, EDGESEG_E_RUNTIME, "OpenVINO has no labels output: %s", ov_reason(st, why, sizeof why));
    if (count != n * h * w)
        return fail(m, EDGESEG_E_RUNTIME, "OpenVINO returned %zu labels for %zux%zux%zu", count, n, h, w);
    return EDGESEG_OK;
}

/* The exponent bits, not isfinite(): a build with -ffinite-math-only (CFLAGS=-Ofast) folds
 * isfinite() to 1 and would let NaN through again. */
size_t edgeseg_find_nonfinite(const float *images, size_t n, size_t h, size_t w) {
    if (!images) return 0;
    size_t hw = h * w;
    for (size_t i = 0; i < n; i++) {
        const float *slice = images + i * hw;
        int bad = 0;
        for (size_t j = 0; j < hw; j++) {
            uint32_t bits;
            memcpy(&bits, &slice[j], sizeof bits);
            bad |= (bits & 0x7f800000u) == 0x7f800000u; /* exponent all ones: Inf or NaN */
        }
        if (bad) return i;
    }
    return n;
}

const char *edgeseg_metadata(const edgeseg_model *m, const char *key) {
    return m && key ? onnx_meta_get(&m->meta, key) : NULL;
}

int edgeseg_num_classes(const edgeseg_model *m) { return m ? m->num_classes : 0; }

const char *edgeseg_class_name(const edgeseg_model *m, int index) {
    return m && index >= 0 && index < m->num_classes ? m->class_names[index] : NULL;
}

int edgeseg_min_size(const edgeseg_model *m) { return m ? m->min_size : 0; }

double edgeseg_pixel_spacing_mm(const edgeseg_model *m) { return m ? m->pixel_spacing_mm : 0.0; }

const char *edgeseg_format(const edgeseg_model *m) { return edgeseg_metadata(m, "edgeseg.format"); }

const char *edgeseg_backend(const edgeseg_model *m) { return m ? m->backend : ""; }

const char *edgeseg_last_error(const edgeseg_model *m) { return m ? m->error : "no model handle (NULL)"; }

void edgeseg_close(edgeseg_model *m) {
    if (!m) return;
    for (size_t i = 0; i < SHAPE_SLOTS; i++) free_slot(&m->slots[i]);
    if (m->model) ov_model_free(m->model);
    if (m->core) ov_core_free(m->core);
    for (int i = 0; i < MAX_CLASSES; i++) free(m->class_names[i]);
    onnx_meta_free(&m->meta);
    free(m);
}
