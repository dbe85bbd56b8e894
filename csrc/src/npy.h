/* NPY files (numpy.save): the header of versions 1-3, read and written without numpy.
 * Format: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html */
#ifndef EDGESEG_NPY_H
#define EDGESEG_NPY_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define NPY_MAX_RANK 8

typedef enum { NPY_F4, NPY_F8, NPY_I2, NPY_U1, NPY_U2 } npy_dtype;

typedef struct {
    npy_dtype dtype;
    size_t itemsize;
    int rank;
    uint64_t shape[NPY_MAX_RANK];
    uint64_t data_offset; /* bytes before the array data */
    uint64_t data_bytes;  /* product of shape times itemsize */
} npy_header;

/* Read and check the header of `f` (positioned at its start; `file_size` bytes long). Checks the
 * data size the header claims against the file size before anything is allocated for the data.
 * 0 on success; otherwise -1 and a one-line reason in why[0..why_size). */
int npy_read_header(FILE *f, uint64_t file_size, npy_header *out, char *why, size_t why_size);

/* The header's shape as Python writes a tuple: "()", "(64,)", "(3, 394, 394)". */
void npy_shape_text(const npy_header *h, char *out, size_t size);

/* Write a version 1.0 header for a C-order uint8 array of `shape`. 0 on success. */
int npy_write_u8_header(FILE *f, const uint64_t *shape, int rank);

/* Convert `count` little-endian items of `dtype` in `raw` to float32, as numpy's astype would. */
void npy_to_float(npy_dtype dtype, const void *raw, float *out, size_t count);

#endif
