/* edgeseg-run: segment .npy slices (H, W) or stacks (N, H, W) with libedgeseg, write uint8 labels.
 *
 *     edgeseg-run [--threads N] [--precision f32|bf16|int8] [--batch N] [--shapes static|dynamic]
 *                 MODEL INPUT.npy OUTPUT.npy
 *     edgeseg-run --info MODEL
 *
 * The input is streamed a batch at a time, so memory stays at one batch whatever the stack's
 * length. The output is written to a temporary name and renamed, so a failed run never leaves a
 * partial OUTPUT.npy; on SIGINT or SIGTERM the temporary file is removed before the signal ends
 * the program as usual (exit 130/143 from a shell). Input that `edgeseg infer` refuses (NaN or Inf,
 * 0-d or wrong-rank, empty arrays) is refused here in the same words, and OUTPUT is checked and
 * created before the model is opened. Exit status: 0 done, 1 bad input or model (one
 * line on stderr), 2 usage.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "edgeseg.h"
#include "npy.h"

#define PROG "edgeseg-run"
#define USAGE                                                                                              \
    "usage: " PROG " [--threads N] [--precision f32|bf16|int8] [--batch N] [--shapes static|dynamic]\n"  \
    "       " PROG "     MODEL INPUT.npy OUTPUT.npy\n"                                                    \
    "       " PROG " --info MODEL"

typedef struct {
    int threads, batch, info;
    edgeseg_precision precision;
    edgeseg_shapes shapes;
    const char *model, *input, *output;
} options;

static int usage(const char *what) {
    fprintf(stderr, PROG ": %s; see '" PROG " --help'\n", what);
    return 2;
}

static int parse_count(const char *s, int lo, int *out) {
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : -1;
    if (!s || end == s || *end || errno || v < lo || v > 1 << 20) return -1;
    *out = (int)v;
    return 0;
}

/* 0 ok, 2 usage error (printed), 3 help printed. */
static int parse_args(int argc, char **argv, options *o) {
    const char *positional[3] = {NULL, NULL, NULL};
    int npos = 0;
    *o = (options){.threads = 0, .batch = 1, .precision = EDGESEG_F32, .shapes = EDGESEG_STATIC_SHAPES};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            puts(USAGE "\n\nSegment raw float32 intensities (float64, int16, uint8, uint16 converted) with an\n"
                       "edgeseg ONNX model on OpenVINO; write uint8 labels of the same (N,) H, W.\n"
                       "  --threads N     inference threads (default 0: one per physical core)\n"
                       "  --precision P   f32 (default), bf16 where the CPU has it, int8 for X_int8.onnx\n"
                       "  --batch N       slices per inference (default 1)\n"
                       "  --shapes S      static (default): compile once per input shape, faster;\n"
                       "                  dynamic: one compile for every shape\n"
                       "  --info          print the model's metadata and what runs it");
            return 3;
        } else if (!strcmp(a, "--info")) {
            o->info = 1;
        } else if (!strcmp(a, "--threads") || !strcmp(a, "--batch")) {
            if (parse_count(v, !strcmp(a, "--batch"), !strcmp(a, "--batch") ? &o->batch : &o->threads))
                return usage(!strcmp(a, "--batch") ? "--batch needs a whole number >= 1"
                                                   : "--threads needs a whole number >= 0");
            i++;
        } else if (!strcmp(a, "--precision")) {
            if (v && !strcmp(v, "f32")) o->precision = EDGESEG_F32;
            else if (v && !strcmp(v, "bf16")) o->precision = EDGESEG_BF16;
            else if (v && !strcmp(v, "int8")) o->precision = EDGESEG_INT8;
            else return usage("--precision needs f32, bf16 or int8");
            i++;
        } else if (!strcmp(a, "--shapes")) {
            if (v && !strcmp(v, "static")) o->shapes = EDGESEG_STATIC_SHAPES;
            else if (v && !strcmp(v, "dynamic")) o->shapes = EDGESEG_DYNAMIC_SHAPES;
            else return usage("--shapes needs static or dynamic");
            i++;
        } else if (a[0] == '-' && a[1]) {
            char what[128];
            snprintf(what, sizeof what, "unknown option '%.64s'", a);
            return usage(what);
        } else if (npos < 3) {
            positional[npos++] = a;
        } else {
            return usage("too many arguments");
        }
    }
    if (npos != (o->info ? 1 : 3)) return usage(o->info ? "--info takes one MODEL" : "give MODEL INPUT.npy OUTPUT.npy");
    o->model = positional[0];
    o->input = o->info ? NULL : positional[1];
    o->output = o->info ? NULL : positional[2];
    return 0;
}

static int print_info(const options *o) {
    char err[EDGESEG_ERROR_SIZE];
    edgeseg_model *m = NULL;
    if (edgeseg_open_shapes(o->model, o->threads, o->precision, o->shapes, &m, err, sizeof err) != EDGESEG_OK) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    static const char *keys[] = {"edgeseg.format", "edgeseg.precision", "edgeseg.class_names", "edgeseg.min_size",
                                 "edgeseg.pixel_spacing_mm", "edgeseg.normalization", "edgeseg.version"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        const char *value = edgeseg_metadata(m, keys[i]);
        printf("%s: %s\n", keys[i], value ? value : "(absent)");
    }
    printf("backend: %s\n", edgeseg_backend(m));
    edgeseg_close(m);
    return 0;
}

typedef struct {
    FILE *in, *out;
    char *tmp_path;
    void *raw;
    float *images;
    uint8_t *labels;
    edgeseg_model *model;
} run_state;

/* The temporary output while it exists, for the signal handler: Ctrl-C leaves no OUTPUT.npy.tmp-PID. */
static char *volatile pending_tmp = NULL;

/* unlink and raise are async-signal-safe; the default action then ends the program as the signal would. */
static void remove_tmp_and_die(int sig) {
    char *tmp = pending_tmp;
    if (tmp) unlink(tmp);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void remove_tmp_on_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = remove_tmp_and_die;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static void release(run_state *s) {
    if (s->in) fclose(s->in);
    if (s->out) fclose(s->out);
    pending_tmp = NULL;
    if (s->tmp_path) remove(s->tmp_path);
    free(s->tmp_path);
    free(s->raw);
    free(s->images);
    free(s->labels);
    edgeseg_close(s->model);
}

static int fail(run_state *s, const char *path, const char *what) {
    fprintf(stderr, PROG ": %s: %s\n", path, what);
    release(s);
    return 1;
}

/* A failed open, read or write of `path`, with the system's reason and what to check. */
static int fail_io(run_state *s, const char *path, const char *action, const char *fix) {
    char what[256];
    snprintf(what, sizeof what, "cannot %s (%s); %s", action, strerror(errno), fix);
    return fail(s, path, what);
}

/* Slices, rows, columns of an (H, W) or (N, H, W) header, or why not: `edgeseg infer`'s words
 * (edgeseg/io/scans.py), so every runtime refuses the same files the same way. */
static const char *stack_shape(const npy_header *h, size_t dims[3], char *why, size_t why_size) {
    char shape[256];
    npy_shape_text(h, shape, sizeof shape);
    if (h->rank != 2 && h->rank != 3) {
        snprintf(why, why_size, "array of shape %s; expected (H, W) or (D, H, W)", shape);
        return why;
    }
    dims[0] = h->rank == 3 ? (size_t)h->shape[0] : 1;
    dims[1] = (size_t)h->shape[h->rank - 2];
    dims[2] = (size_t)h->shape[h->rank - 1];
    if (dims[0] && dims[1] && dims[2]) return NULL;
    snprintf(why, why_size, "empty scan (shape %s); nothing to segment", shape);
    return why;
}

/* Create the temporary output and write its header, before the model is even opened: a bad
 * OUTPUT fails at once, not after the whole input has been segmented. */
static int open_output(run_state *s, const options *o, const npy_header *h, const size_t dims[3]) {
    struct stat st = {0};
    if (stat(o->output, &st) == 0 && S_ISDIR(st.st_mode))
        return fail(s, o->output, "is a directory; pass a file name for the labels, e.g. DIR/labels.npy");
    size_t tmp_size = strlen(o->output) + 32;
    s->tmp_path = malloc(tmp_size);
    if (!s->tmp_path) return fail(s, o->output, "out of memory");
    snprintf(s->tmp_path, tmp_size, "%s.tmp-%ld", o->output, (long)getpid());
    pending_tmp = s->tmp_path; /* before fopen creates it: a signal from here on removes it */
    remove_tmp_on_signals();
    s->out = fopen(s->tmp_path, "wb");
    uint64_t out_shape[3] = {dims[0], dims[1], dims[2]};
    if (!s->out || npy_write_u8_header(s->out, h->rank == 3 ? out_shape : out_shape + 1, h->rank))
        return fail_io(s, o->output, "write it", "check that its folder exists and is writable");
    return 0;
}

/* Segment one batch of n slices that starts at slice `first`; a slice with NaN or Inf is named by
 * its index in the file, as infer names it. */
static int segment_batch(run_state *s, const options *o, size_t first, size_t n, const size_t dims[3]) {
    edgeseg_status rc = edgeseg_segment(s->model, s->images, n, dims[1], dims[2], s->labels);
    if (rc == EDGESEG_E_NONFINITE) {
        char why[128];
        snprintf(why, sizeof why, "slice %zu holds NaN or Inf; fix or mask the scan",
                 first + edgeseg_find_nonfinite(s->images, n, dims[1], dims[2]));
        return fail(s, o->input, why);
    }
    return rc == EDGESEG_OK ? 0 : fail(s, o->input, edgeseg_last_error(s->model));
}

static int segment_file(const options *o) {
    run_state s = {0};
    char why[EDGESEG_ERROR_SIZE] = "";
    struct stat st = {0};
    npy_header h = {0};
    size_t dims[3] = {0, 0, 0};
    s.in = fopen(o->input, "rb");
    if (!s.in || fstat(fileno(s.in), &st) != 0 || !S_ISREG(st.st_mode))
        return s.in ? fail(&s, o->input, "not a regular file; pass an .npy file")
                    : fail_io(&s, o->input, "open it", "pass an existing, readable .npy file");
    if (npy_read_header(s.in, (uint64_t)st.st_size, &h, why, sizeof why)) return fail(&s, o->input, why);
    if (stack_shape(&h, dims, why, sizeof why)) return fail(&s, o->input, why);
    if (open_output(&s, o, &h, dims)) return 1;
    if (edgeseg_open_shapes(o->model, o->threads, o->precision, o->shapes, &s.model, why, sizeof why) != EDGESEG_OK) {
        fprintf(stderr, PROG ": %s\n", why);
        release(&s);
        return 1;
    }
    size_t min = (size_t)edgeseg_min_size(s.model), hw = dims[1] * dims[2];
    if (dims[1] < min || dims[2] < min) {
        snprintf(why, sizeof why, "slices of %zux%zu are too small for this model (H and W must be >= %zu); pad or"
                 " resample the scan", dims[1], dims[2], min);
        return fail(&s, o->input, why);
    }
    size_t batch = (size_t)o->batch < dims[0] ? (size_t)o->batch : dims[0];
    s.images = malloc(batch * hw * sizeof(float));
    s.labels = malloc(batch * hw);
    s.raw = h.dtype == NPY_F4 ? NULL : malloc(batch * hw * h.itemsize);
    if (!s.images || !s.labels || (h.dtype != NPY_F4 && !s.raw))
        return fail(&s, o->input, "out of memory for one batch; use a smaller --batch");
    for (size_t done = 0; done < dims[0]; done += batch) {
        size_t n = dims[0] - done < batch ? dims[0] - done : batch;
        void *dest = s.raw ? s.raw : (void *)s.images;
        if (fread(dest, h.itemsize, n * hw, s.in) != n * hw)
            return fail(&s, o->input, "read failed (the file shrank while being read?); rerun on a stable copy");
        if (s.raw) npy_to_float(h.dtype, s.raw, s.images, n * hw);
        if (segment_batch(&s, o, done, n, dims)) return 1;
        if (fwrite(s.labels, 1, n * hw, s.out) != n * hw)
            return fail_io(&s, o->output, "write it", "check the free space");
    }
    int closed = fclose(s.out);
    s.out = NULL;
    if (closed != 0 || rename(s.tmp_path, o->output) != 0)
        return fail_io(&s, o->output, "write it", "check the free space and that the folder is writable");
    pending_tmp = NULL;  /* renamed: a late signal must not remove a name that may be reused */
    free(s.tmp_path);
    s.tmp_path = NULL;
    release(&s);
    return 0;
}

int main(int argc, char **argv) {
    const uint16_t probe = 1;
    if (*(const unsigned char *)&probe != 1) {
        fprintf(stderr, PROG ": this build reads little-endian NPY data on a big-endian CPU; unsupported\n");
        return 1;
    }
    options o = {0};
    int rc = parse_args(argc, argv, &o);
    if (rc) return rc == 3 ? 0 : rc;
    return o.info ? print_info(&o) : segment_file(&o);
}
