/* The metadata_props of an ONNX file, read straight from its protobuf encoding.
 *
 * OpenVINO's ONNX frontend keeps metadata_props in the model's rt_info ("framework" map),
 * but OpenVINO's C API has no rt_info accessor, so the library reads them itself: a
 * ModelProto is a protobuf message, and metadata_props is its field 14, a repeated
 * StringStringEntryProto {key = 1, value = 2}. Every other field is skipped by its wire type.
 */
#ifndef EDGESEG_ONNX_META_H
#define EDGESEG_ONNX_META_H

#include <stddef.h>

typedef struct {
    char *key;
    char *value;
} onnx_meta_entry;

typedef struct {
    onnx_meta_entry *entries;
    size_t count;
} onnx_meta;

/* Parse the serialised ModelProto in buf[0..size). 0 on success; otherwise -1 and a reason in
 * why[0..why_size). On success free with onnx_meta_free. */
int onnx_meta_parse(const unsigned char *buf, size_t size, onnx_meta *out, char *why, size_t why_size);

/* The value of `key`, or NULL when absent. */
const char *onnx_meta_get(const onnx_meta *meta, const char *key);

void onnx_meta_free(onnx_meta *meta);

#endif
