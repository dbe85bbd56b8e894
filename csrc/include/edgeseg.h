/*
 * libedgeseg: segment MRI slices with an edgeseg ONNX model through OpenVINO's C API.
 *
 * Raw float32 intensities in (the model normalises them itself), uint8 class labels out,
 * any H x W >= the model's minimum size, buffers owned by the caller. By default a handle
 * compiles the model for each input shape (n, h, w) it meets, at that shape's first
 * edgeseg_segment (~0.3 s), and keeps the last two: OpenVINO runs a static graph much faster
 * (see EDGESEG_STATIC_SHAPES). edgeseg_open_shapes picks the file's dynamic shapes instead. The library keeps no
 * global state: every handle owns its OpenVINO core, compiled model and infer request, so
 * several threads may each use their own handle at the same time. A handle must not be
 * used by two threads at once. segment calls allocate nothing themselves (OpenVINO may).
 *
 *     char err[EDGESEG_ERROR_SIZE];
 *     edgeseg_model *m = NULL;
 *     if (edgeseg_open("model.onnx", 2, EDGESEG_F32, &m, err, sizeof err) != EDGESEG_OK)
 *         return fprintf(stderr, "%s\n", err), 1;
 *     if (edgeseg_segment(m, image, 1, 394, 394, labels) != EDGESEG_OK)
 *         fprintf(stderr, "%s\n", edgeseg_last_error(m));
 *     edgeseg_close(m);
 */
#ifndef EDGESEG_H
#define EDGESEG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define EDGESEG_API __declspec(dllexport)
#else
#define EDGESEG_API __attribute__((visibility("default")))
#endif

/** Room for any message this library writes, terminator included. */
#define EDGESEG_ERROR_SIZE 512

/** An open model. Opaque; create with edgeseg_open, free with edgeseg_close. */
typedef struct edgeseg_model edgeseg_model;

/** How the network computes. */
typedef enum {
    EDGESEG_F32 = 0,  /**< float32 everywhere: equal to ONNX Runtime within 1e-4 in the logits. */
    EDGESEG_BF16 = 1, /**< bfloat16 where the CPU has it (AVX512-BF16/AMX); refused elsewhere. */
    EDGESEG_INT8 = 2  /**< the int8 QDQ file (X_int8.onnx); its float layers run in float32. */
} edgeseg_precision;

/** How a handle compiles the model's input shape. */
typedef enum {
    /** One compile per input shape (n, h, w), at its first edgeseg_segment; the last two are kept.
     *  On a 2-core Intel Xeon (AVX-512, VNNI), 1x394x394, 2 threads: f32 54 ms and int8 25 ms a
     *  call, against 72 and 39 ms dynamic. Best when shapes repeat, as the slices of a volume do. */
    EDGESEG_STATIC_SHAPES = 0,
    /** One compile at open, with the file's dynamic N, H, W: no compile when shapes keep changing. */
    EDGESEG_DYNAMIC_SHAPES = 1
} edgeseg_shapes;

/** Result of every call that can fail. */
typedef enum {
    EDGESEG_OK = 0,
    EDGESEG_E_ARGUMENT = 1,    /**< a NULL pointer, a size below the minimum, an overflow */
    EDGESEG_E_FILE = 2,        /**< the model file is missing or unreadable */
    EDGESEG_E_MODEL = 3,       /**< not an edgeseg-onnx-v1 model, or the wrong precision's file */
    EDGESEG_E_UNSUPPORTED = 4, /**< the precision cannot run on this CPU */
    EDGESEG_E_RUNTIME = 5,     /**< OpenVINO failed; the message carries its reason */
    EDGESEG_E_MEMORY = 6,      /**< out of memory while opening */
    EDGESEG_E_NONFINITE = 7    /**< the images hold NaN or Inf; edgeseg_find_nonfinite names the slice */
} edgeseg_status;

/**
 * Open an edgeseg ONNX model on OpenVINO's CPU plugin.
 *
 * Reads the file's edgeseg.* metadata, checks it is an edgeseg-onnx-v1 model whose precision
 * matches `precision`, and compiles it with INFERENCE_PRECISION_HINT set explicitly (OpenVINO's
 * own default is bf16 on CPUs that have it), PERFORMANCE_HINT LATENCY and `threads`.
 *
 * @param path      the .onnx file (edgeseg export's X.onnx, or X_int8.onnx for EDGESEG_INT8)
 * @param threads   inference threads; 0 = OpenVINO's default (one per physical core)
 * @param precision EDGESEG_F32, EDGESEG_BF16 or EDGESEG_INT8
 * @param out       receives the handle on success, NULL on failure
 * @param err       receives a one-line reason on failure (may be NULL)
 * @param err_size  size of `err` in bytes; EDGESEG_ERROR_SIZE always suffices
 * @return EDGESEG_OK, or the kind of failure
 */
EDGESEG_API edgeseg_status edgeseg_open(const char *path, int threads, edgeseg_precision precision,
                                        edgeseg_model **out, char *err, size_t err_size);

/**
 * edgeseg_open with a choice of how input shapes are compiled (edgeseg_open uses
 * EDGESEG_STATIC_SHAPES). Same parameters and result, plus:
 *
 * @param shapes EDGESEG_STATIC_SHAPES or EDGESEG_DYNAMIC_SHAPES
 */
EDGESEG_API edgeseg_status edgeseg_open_shapes(const char *path, int threads, edgeseg_precision precision,
                                               edgeseg_shapes shapes, edgeseg_model **out, char *err,
                                               size_t err_size);

/**
 * Segment `n` slices of `h` x `w` raw intensities in one inference. With static shapes, the
 * first call at a new (n, h, w) also compiles the model for it.
 *
 * @param model  an open handle
 * @param images n*h*w float32, C order (slice, row, column); not modified
 * @param n      slices in the batch, >= 1
 * @param h      rows, >= edgeseg_min_size
 * @param w      columns, >= edgeseg_min_size
 * @param labels receives n*h*w class indices (0 .. edgeseg_num_classes-1)
 * @return EDGESEG_OK; EDGESEG_E_NONFINITE, before any inference, when a value is NaN or Inf (the
 *         network would return confident, wrong labels for them: refused as `edgeseg infer` does);
 *         on failure `labels` is unspecified and edgeseg_last_error says why
 */
EDGESEG_API edgeseg_status edgeseg_segment(edgeseg_model *model, const float *images, size_t n, size_t h,
                                           size_t w, uint8_t *labels);

/**
 * The check edgeseg_segment makes before it runs: which slice of `images` (n*h*w float32, as for
 * edgeseg_segment) holds NaN or Inf first. Needs no model, allocates nothing.
 *
 * @return the index of the first slice holding NaN or Inf; n when every value is finite; 0 when
 *         `images` is NULL and n >= 1
 */
EDGESEG_API size_t edgeseg_find_nonfinite(const float *images, size_t n, size_t h, size_t w);

/**
 * A metadata value the model file carries (its ONNX metadata_props), e.g.
 * "edgeseg.pixel_spacing_mm" or "edgeseg.normalization".
 *
 * @return the value as stored (possibly empty), valid until edgeseg_close; NULL when the file
 *         lacks the key (never invented)
 */
EDGESEG_API const char *edgeseg_metadata(const edgeseg_model *model, const char *key);

/** Number of classes, from edgeseg.num_classes; labels are 0 .. n-1. */
EDGESEG_API int edgeseg_num_classes(const edgeseg_model *model);

/** Name of class `index` from edgeseg.class_names, or NULL when out of range. */
EDGESEG_API const char *edgeseg_class_name(const edgeseg_model *model, int index);

/** Smallest H and W the network accepts, from edgeseg.min_size. */
EDGESEG_API int edgeseg_min_size(const edgeseg_model *model);

/**
 * In-plane pixel spacing the model was trained at, from edgeseg.pixel_spacing_mm.
 *
 * @return millimetres per pixel, or 0.0 when the file lacks the key or leaves it empty (unknown)
 */
EDGESEG_API double edgeseg_pixel_spacing_mm(const edgeseg_model *model);

/**
 * The contract the model follows, from edgeseg.format: "edgeseg-onnx-v1" means one float32
 * input of raw intensities, normalised inside the graph (see edgeseg.normalization).
 */
EDGESEG_API const char *edgeseg_format(const edgeseg_model *model);

/**
 * What really runs the model, e.g. "OpenVINO 2026.4.1 CPU, f32, 2 threads, static shapes": the
 * precision and thread count are read back from the compiled model, not repeated from the request.
 */
EDGESEG_API const char *edgeseg_backend(const edgeseg_model *model);

/**
 * The reason the last failed call on `model` failed ("" if none failed yet). Where OpenVINO failed,
 * its own message is appended; OpenVINO's C API keeps one such message per process, so two
 * handles failing at the same instant in two threads may see each other's OpenVINO detail.
 */
EDGESEG_API const char *edgeseg_last_error(const edgeseg_model *model);

/** Free the handle and everything OpenVINO holds for it. NULL is allowed. */
EDGESEG_API void edgeseg_close(edgeseg_model *model);

#ifdef __cplusplus
}
#endif

#endif /* EDGESEG_H */
